"""`locality swap on|off|status`: a zram swap device for paging out anonymous memory."""

from __future__ import annotations

import json
import re

import click

_UNITS = {"": 1, "K": 1 << 10, "M": 1 << 20, "G": 1 << 30, "T": 1 << 40}


def parse_size(text: str) -> int:
    """'4G', '512M', '1.5GiB', '65536' -> bytes (binary units). Raises ValueError."""
    m = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([KMGT]?)(?:i?B)?\s*", str(text), re.IGNORECASE)
    if not m:
        raise ValueError(f"{text!r} is not a size")
    value = float(m.group(1)) * _UNITS[m.group(2).upper()]
    if value < 1:
        raise ValueError(f"{text!r} is not a positive size")
    return int(value)


class SizeType(click.ParamType):
    """A click parameter for sizes such as 4G, 512M, 1.5GiB or a byte count."""

    name = "SIZE"

    def convert(self, value, param, ctx):  # noqa: ANN001
        if isinstance(value, int):
            return value
        try:
            return parse_size(value)
        except ValueError as e:
            self.fail(f"{e}; use a number with an optional unit K, M, G or T (binary), e.g. 4G", param, ctx)


SIZE = SizeType()


def human(n: int) -> str:
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if n < 1024 or unit == "TiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return str(n)


@click.group()
def swap() -> None:
    """Turn a zram swap device on or off (root).

    Without swap the kernel cannot page out anonymous memory, so pageout
    experiments and refault measurements need it. `on` records the device's
    prior state in /run/locality/zram-state.json and `off` restores it.
    """


@swap.command()
@click.option("--size", type=SIZE, default="4G", show_default=True, help="Uncompressed capacity of the swap device.")
def on(size: int) -> None:
    """Create a zram swap device of SIZE and enable it at the highest priority."""
    from locality.kernel.swap import swap_active, zram_swap_on

    zram_swap_on(size, keep=True)
    area = next(a for a in swap_active() if a["filename"].endswith("zram0"))
    click.echo(f"zram swap on: {area['filename']}, {human(area['size_bytes'])}, priority {area['priority']}")


@swap.command()
@click.option("--force", is_flag=True, help="Turn it off even while the process that turned it on is still running.")
def off(force: bool) -> None:
    """Disable the zram swap locality turned on and reset the device.

    Also removes what killed locality processes left behind (memory cgroups,
    zram state and temporary files whose owner is dead; see `locality doctor`).
    """
    from locality.experiment import leftovers
    from locality.kernel.swap import STATE_FILE, zram_swap_off

    was_on = STATE_FILE.exists()
    zram_swap_off(force=force)
    click.echo("zram swap off" if was_on else "zram swap was not on; nothing to do")
    removed, failed = leftovers.clean()
    for item in removed:
        click.echo(f"removed leftover {item.kind} {item.path} (owner PID {item.owner_pid} is dead)")
    for item, why in failed:
        click.echo(f"could not remove leftover {item.kind} {item.path}: {why}", err=True)


@swap.command()
@click.option("--json", "as_json", is_flag=True, help="Print the swap areas as JSON.")
def status(as_json: bool) -> None:
    """Show active swap areas (from /proc/swaps) and whether locality turned zram on."""
    from locality.kernel.swap import STATE_FILE, swap_active

    areas = swap_active()
    ours = json.loads(STATE_FILE.read_text()) if STATE_FILE.exists() else None
    if as_json:
        click.echo(json.dumps({"swap": areas, "locality_zram": ours}, indent=2))
        return
    if not areas:
        click.echo("no swap active")
    for a in areas:
        click.echo(
            f"{a['filename']:<20} {a['type']:<10} size {human(a['size_bytes']):>10}  "
            f"used {human(a['used_bytes']):>10}  priority {a['priority']}"
        )
    if ours:
        click.echo(f"zram0 turned on by locality at {ours.get('turned_on')}; `locality swap off` restores it")
