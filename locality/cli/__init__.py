"""The `locality` command: one click group, one module per subcommand.

Subcommands are imported lazily so `locality --help` stays fast and a
heavy import (matplotlib, dask) is paid only by the command that needs it.
This layer parses, validates and prints; the work happens in the layers below.
"""

from __future__ import annotations

import importlib
import math
import signal
import sys
import warnings

import click

from locality import __version__
from locality.errors import LocalityError, LocalityWarning
from locality.interrupts import install

# name -> (module, attribute, one-line help shown by `locality --help`)
COMMANDS: dict[str, tuple[str, str, str]] = {
    "doctor": ("locality.cli.doctor", "doctor", "Which kernel instruments work on this machine, and how to enable the rest."),
    "swap": ("locality.cli.swap", "swap", "Turn a zram swap device on or off, so anonymous memory can be paged out."),
    "probe": ("locality.cli.probe", "probe", "Sample any running process's memory per VMA (residency, PSS, referenced)."),
    "run": ("locality.cli.run", "run", "Run one experiment from a TOML config and store it under runs/."),
    "sweep": ("locality.cli.sweep", "sweep", "Run the cartesian product of parameters, resumable."),
    "compare": ("locality.cli.compare", "compare", "Run every layout on one seeded workload and write a comparison report."),
    "report": ("locality.cli.report", "report", "Write one self-contained HTML report from stored runs."),
    "figures": ("locality.cli.figures", "figures", "Regenerate the thesis figures from stored runs alone."),
    "show": ("locality.cli.show", "show", "Summarise one stored run: status, config, headline metrics, files."),
    "diff": ("locality.cli.diff", "diff", "Two stored runs' metrics side by side, with ratios and run-to-run noise."),
    "beam": ("locality.cli.beam", "beam", "Start an Erlang VM with many processes and measure it like a run."),
    "bench": ("locality.cli.bench", "bench", "Benchmarks that print measured ratios side by side."),
}


class LazyGroup(click.Group):
    def list_commands(self, ctx: click.Context) -> list[str]:
        return list(COMMANDS)

    def get_command(self, ctx: click.Context, name: str) -> click.Command | None:
        if name not in COMMANDS:
            return None
        module, attr, _ = COMMANDS[name]
        return getattr(importlib.import_module(module), attr)

    def format_commands(self, ctx: click.Context, formatter: click.HelpFormatter) -> None:
        # Help text from the table, so listing commands imports none of them.
        rows = [(name, COMMANDS[name][2]) for name in self.list_commands(ctx)]
        with formatter.section("Commands"):
            formatter.write_dl(rows)


@click.group(cls=LazyGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="locality")
def cli() -> None:
    """Measure which pages a population of sparsely activated workers really uses.

    Start with `locality doctor` to see which kernel instruments work here,
    then `locality compare` for the main experiment.
    """


def finite(ctx: click.Context, param: click.Parameter, value: float | None) -> float | None:
    """Option callback: click.FloatRange lets nan and inf through (nan compares false with any bound)."""
    if value is not None and not math.isfinite(value):
        raise click.BadParameter(f"{value!r} is not a finite number")
    return value


def fail(message: str) -> "NoReturn":  # noqa: F821
    """Print one error line and exit with status 2 (bad input, missing feature)."""
    click.echo(f"locality: error: {message}", err=True)
    sys.exit(2)


def _show_warning(message, category, filename, lineno, file=None, line=None) -> None:  # noqa: ANN001
    # LocalityWarning is for users: one line, no source location.
    if issubclass(category, LocalityWarning):
        click.echo(f"locality: warning: {message}", err=True)
    else:
        _python_show_warning(message, category, filename, lineno, file, line)


_python_show_warning = warnings.showwarning


def main(argv: list[str] | None = None) -> None:
    warnings.showwarning = _show_warning
    if argv is None and signal.getsignal(signal.SIGTERM) is signal.SIG_DFL:  # the `locality` script
        install()  # SIGTERM stops like Ctrl-C (exit 130) wherever it lands, imports included
    try:
        _main(argv)
    finally:
        if argv is None:
            # The exit status is decided; Python's finalization restores the default handlers,
            # so a signal landing now would kill a finished command and report it as killed.
            signal.setitimer(signal.ITIMER_REAL, 0)  # a signal held in an import: too late to matter
            for s in (signal.SIGINT, signal.SIGTERM):
                signal.signal(s, signal.SIG_IGN)


def _main(argv: list[str] | None) -> None:
    try:
        rv = cli.main(args=argv, prog_name="locality", standalone_mode=False)
    except click.exceptions.Abort:
        click.echo("locality: interrupted", err=True)
        sys.exit(130)
    except click.UsageError as e:
        # One line, like every other bad input: the problem, then where help is.
        command = e.ctx.command_path if e.ctx is not None else "locality"
        fail(f"{e.format_message()} (see `{command} --help`)")
    except click.ClickException as e:
        fail(e.format_message())
    except LocalityError as e:
        fail(str(e))
    except KeyboardInterrupt:
        click.echo("locality: interrupted", err=True)
        sys.exit(130)
    except BrokenPipeError:
        sys.exit(0)
    sys.exit(rv if isinstance(rv, int) else 0)
