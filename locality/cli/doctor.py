"""`locality doctor`: which kernel instruments work here, and how to enable the rest."""

from __future__ import annotations

import json
import shutil
import textwrap

import click


@click.command()
@click.option("--json", "as_json", is_flag=True, help="Print the capabilities as JSON (name -> available, reason, hint), plus \"system_damon\": the kdamonds that are on.")
def doctor(as_json: bool) -> None:
    """Probe every kernel instrument once and report what works on this machine.

    Each instrument is exercised for real on a few scratch pages of this
    process (nothing else is touched): WORKS means it gave the exact answer,
    MISSING says why and how to enable it. This is a report: the exit status
    is 0 even when features are missing.

    It also lists every system DAMON monitor (kdamond) that is on, with its
    operations and scheme actions, read from /sys/kernel/mm/damon/admin: a
    scheme with action pageout can page out a measured process behind
    locality's back. Read only; locality never stops a kdamond.
    """
    from locality.kernel.capabilities import capabilities

    from locality.kernel import active_kdamonds

    caps = capabilities()
    damon = active_kdamonds()
    if as_json:
        # Not a capability: what else runs on this machine that moves memory (key "system_damon").
        click.echo(json.dumps({**caps, "system_damon": {"kdamonds": damon}}, indent=2, sort_keys=False))
        return
    width = max(60, shutil.get_terminal_size((100, 24)).columns)
    name_w = max(len(n) for n in caps) + 2
    text_w = max(30, width - name_w - 10)
    indent = " " * (name_w + 9)
    click.echo(f"{'capability':<{name_w}} {'status':<8}why / how to enable")
    for name, c in caps.items():
        status = "works" if c["available"] else "MISSING"
        lines = textwrap.wrap(c["reason"], text_w) or [""]
        if not c["available"] and c["hint"]:
            lines += textwrap.wrap("fix: " + c["hint"], text_w)
        click.echo(f"{name:<{name_w}} {status:<8}{lines[0]}")
        for line in lines[1:]:
            click.echo(indent + line)
    _echo_damon(damon)
    missing = [n for n, c in caps.items() if not c["available"]]
    click.echo(f"\n{len(caps) - len(missing)} of {len(caps)} capabilities work"
               + (f"; missing: {', '.join(missing)}" if missing else ""))


def _echo_damon(kds: list) -> None:
    """System DAMON: every kdamond that is on (read only; locality never stops one)."""
    from locality.kernel.damon import describe, reclaiming

    click.echo("\nsystem DAMON (/sys/kernel/mm/damon/admin, read only):")
    if not kds:
        click.echo("  no kdamond is on")
        return
    for k in kds:
        click.echo("  " + describe(k))
    if reclaiming(kds):
        click.echo("  it may page out memory of measured processes: runs record it and reports warn "
                   "when residency includes page-outs locality did not make")
