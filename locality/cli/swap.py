"""`locality swap on|off|status`: a zram swap device for paging out anonymous memory."""

from __future__ import annotations

import json

import click

from locality.units import SIZE, format_bytes as human, parse_size  # noqa: F401 - parse_size: the CLI's size syntax


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
