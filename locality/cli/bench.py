"""`locality bench <name>`: benchmarks that print measured ratios side by side.

Each benchmark is a module ``locality/bench/<name>.py`` exposing a click
command named ``command``; it is imported only when run, so one benchmark's
heavy setup never slows down another or ``locality bench --help``.
"""

from __future__ import annotations

import importlib

import click

from locality.errors import Unsupported

# name -> one-line help shown without importing the module
BENCHMARKS: dict[str, str] = {
    "instruments": "Time each kernel instrument on one large mapping against the DESIGN targets.",
    "population": "Bytes per idle worker and activations/s of the schedulers.",
    "layouts": "Page utilization and working set of each allocation strategy.",
    "sampler": "Overhead of sampling a running population from outside.",
}


class _LazyBenchGroup(click.Group):
    def list_commands(self, ctx: click.Context) -> list[str]:
        return list(BENCHMARKS)

    def get_command(self, ctx: click.Context, name: str) -> click.Command | None:
        if name not in BENCHMARKS:
            return None
        try:
            module = importlib.import_module(f"locality.bench.{name}")
        except ModuleNotFoundError as e:
            if e.name != f"locality.bench.{name}":
                raise
            raise Unsupported(f"benchmark {name!r}", "its module locality/bench/%s.py is not installed" % name) from None
        return module.command

    def format_commands(self, ctx: click.Context, formatter: click.HelpFormatter) -> None:
        with formatter.section("Benchmarks"):
            formatter.write_dl(list(BENCHMARKS.items()))


@click.group(cls=_LazyBenchGroup)
def bench() -> None:
    """Benchmarks that print measured ratios side by side.

    Timings on a shared machine are noisy: every benchmark measures the
    things it compares in the same run and reports best-of-N and median.
    """
