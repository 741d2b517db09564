"""`locality doctor`: which kernel instruments work here, how to enable the rest, and what killed runs left."""

from __future__ import annotations

import json
import shutil
import textwrap

import click


@click.command()
@click.option("--json", "as_json", is_flag=True,
              help='Print {"capabilities": name -> {available, reason, hint}, "leftovers": [...]} as JSON.')
@click.option("--fix", is_flag=True,
              help="Remove the leftovers listed (only locality's own, only those whose owner process is dead).")
def doctor(as_json: bool, fix: bool) -> None:
    """Probe every kernel instrument once and report what works on this machine.

    Each instrument is exercised for real on a few scratch pages of this
    process (nothing else is touched): WORKS means it gave the exact answer,
    MISSING says why and how to enable it. Then it lists what killed
    locality processes left behind: memory cgroups (locality-*), zram swap
    and its state files in /run/locality, temporary files; each names its
    owner PID and is listed only once that process is dead. --fix removes
    them (cgroups and swap need root). This is a report: the exit status is
    0 even when features are missing, and 2 only when --fix could not
    remove something.
    """
    from locality.errors import LocalityError
    from locality.experiment import leftovers
    from locality.kernel.capabilities import capabilities

    caps = capabilities()
    found = leftovers.find()
    removed: list = []
    failed: list = []
    if fix:
        for item in found:
            try:
                leftovers.remove(item)
                removed.append(item)
            except (OSError, LocalityError) as e:
                failed.append((item, getattr(e, "strerror", None) or str(e)))
    if as_json:
        report = {"capabilities": caps, "leftovers": leftovers.as_dicts(found)}
        if fix:
            report["removed"] = leftovers.as_dicts(removed)
            report["not_removed"] = [{**leftovers.as_dicts([i])[0], "error": why} for i, why in failed]
        click.echo(json.dumps(report, indent=2, sort_keys=False))
    else:
        _print_capabilities(caps)
        _print_leftovers(found, fix, removed, failed)
    if failed:
        raise LocalityError(f"could not remove {len(failed)} leftover(s): "
                            + "; ".join(f"{i.path}: {why}" for i, why in failed), "run `locality doctor --fix` as root")


def _print_capabilities(caps: dict) -> None:
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
    missing = [n for n, c in caps.items() if not c["available"]]
    click.echo(f"\n{len(caps) - len(missing)} of {len(caps)} capabilities work"
               + (f"; missing: {', '.join(missing)}" if missing else ""))


def _print_leftovers(found: list, fix: bool, removed: list, failed: list) -> None:
    if not found:
        click.echo("\nno leftovers of killed locality processes")
        return
    click.echo(f"\n{len(found)} leftover(s) of killed locality processes:")
    done = {id(i) for i in removed}
    for item in found:
        state = " (removed)" if id(item) in done else ""
        click.echo(f"  {item.kind:<10} {item.path}  owner PID {item.owner_pid} dead; {item.detail}{state}")
    if not fix:
        click.echo("remove them with `locality doctor --fix`")
