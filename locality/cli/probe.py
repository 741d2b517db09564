"""`locality probe PID`: sample any running process's memory per VMA."""

from __future__ import annotations

import datetime as _dt
import json
import re
import sys
from pathlib import Path

import click

from locality import units
from locality.errors import InvalidArgument

def parse_duration(text: str, option: str) -> float:
    """'1s', '500ms', '2m', '1.5h', '30' (seconds) -> seconds; must be > 0 (``locality.units``)."""
    return units.parse_duration(text, option)


def _address(text: str, what: str, spec: str) -> int:
    negative = text.startswith("-")
    digits = text[1:] if negative else text
    digits = digits[2:] if digits.lower().startswith("0x") else digits
    if not digits or not re.fullmatch(r"[0-9a-fA-F]+", digits):
        raise InvalidArgument(f"--range {spec!r}: {what} {text!r} is not a hexadecimal address",
                              "use START-END in hex as in /proc/PID/maps, e.g. 7f0000000000-7f0000100000")
    value = int(digits, 16)
    return -value if negative else value


def parse_range(spec: str) -> tuple[int, int]:
    """'7f00..-7f01..' (hex, 0x optional, as in /proc/PID/maps) -> (start, end)."""
    m = re.fullmatch(r"\s*(-?[^-\s]+)-(-?[^-\s]+)\s*", spec)
    if not m:
        raise InvalidArgument(f"--range {spec!r} is not START-END",
                              "use START-END in hex as in /proc/PID/maps, e.g. 7f0000000000-7f0000100000")
    return _address(m.group(1), "start", spec), _address(m.group(2), "end", spec)


@click.command()
@click.argument("pid", type=int)
@click.option("--interval", default="1s", show_default=True, metavar="DURATION",
              help="Time between samples: 500ms, 1s, 2m, ...")
@click.option("--duration", default="30s", show_default=True, metavar="DURATION",
              help="How long to sample; samples are taken at 0, interval, ... up to this.")
@click.option("--track-refs", is_flag=True,
              help="Also measure referenced bytes per VMA and interval. This WRITES to the target "
                   "(/proc/PID/clear_refs resets its pages' accessed bits), so it is off by default.")
@click.option("--range", "ranges", multiple=True, metavar="START-END",
              help="Only VMAs intersecting this hex address range (as in /proc/PID/maps); repeatable.")
@click.option("--out", type=click.Path(file_okay=False, path_type=Path), default=None,
              help="Run directory to create [default: runs/probe-PID-TIME].")
@click.option("--replace", is_flag=True, help="Replace an existing run directory --out (not one still being written).")
@click.option("--json", "as_json", is_flag=True, help="No live lines; print a JSON summary at the end.")
def probe(pid: int, interval: str, duration: str, track_refs: bool, ranges: tuple[str, ...],
          out: Path | None, replace: bool, as_json: bool) -> None:
    """Sample process PID per VMA: resident and swapped pages (pagemap, page
    by page), rss/pss/swap (smaps), faults, and with --track-refs the bytes
    referenced in each interval.

    Needs read access to /proc/PID/smaps and pagemap (root, or the process
    owner with ptrace access); --track-refs also needs write access to
    /proc/PID/clear_refs. Writes manifest.json, timeline.csv (one row per
    sample and VMA) and pages.npz (resident/swapped page x time matrices).
    Ctrl-C stops, keeps every sample taken and marks the run interrupted.

    \b
    Example:
      locality probe 1234 --interval 500ms --duration 1m --track-refs
    """
    from locality.experiment.probe import probe as run_probe
    from locality.experiment.probe import sample_dict, summary_line
    from locality.experiment.store import read_manifest

    interval_s = parse_duration(interval, "--interval")
    duration_s = parse_duration(duration, "--duration")
    parsed_ranges = [parse_range(r) for r in ranges] or None
    if out is None:
        stamp = _dt.datetime.now(_dt.timezone.utc).strftime("%Y%m%dT%H%M%SZ")
        out = Path("runs") / f"probe-{pid}-{stamp}"
    samples: list[dict] = []

    def on_sample(s) -> None:  # noqa: ANN001
        samples.append(sample_dict(s))
        if not as_json:
            click.echo(summary_line(s), err=True)

    try:
        run_dir = run_probe(pid, out, interval=interval_s, duration=duration_s, track_refs=track_refs,
                            on_sample=on_sample, ranges=parsed_ranges, replace=replace)
    except KeyboardInterrupt:
        if (out / "manifest.json").exists():
            m = read_manifest(out)
            click.echo(f"locality: interrupted; kept {m.get('samples', 0)} samples in {out}", err=True)
            sys.exit(130)
        raise
    manifest = read_manifest(run_dir)
    if as_json:
        click.echo(json.dumps({
            "run_dir": str(run_dir), "status": manifest["status"], "samples": manifest.get("samples"),
            "note": manifest.get("note"), "last": samples[-1] if samples else None,
        }, indent=2))
        return
    note = f" ({manifest['note']})" if manifest.get("note") else ""
    click.echo(f"{manifest['status']}: {manifest.get('samples')} samples in {run_dir}{note}")
