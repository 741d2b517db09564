"""Output formats shared by the commands that print data: text (default), json, csv.

``--json`` stays as a short form of ``--format json`` on the commands that
had it, so scripts keep working.
"""

from __future__ import annotations

from typing import Any, Callable

import click

FORMATS = ("text", "json", "csv")


def format_option(f: Callable[..., Any]) -> Callable[..., Any]:
    return click.option("--format", "fmt", type=click.Choice(FORMATS), default=None,
                        help="Output format [default: text; --json is --format json].")(f)


def resolve(fmt: str | None, as_json: bool) -> str:
    """The format asked for by --format and/or --json (they must agree)."""
    if as_json and fmt not in (None, "json"):
        raise click.UsageError(f"--json and --format {fmt} disagree; give one of them")
    return "json" if as_json else (fmt or "text")


def doc_csv(doc: dict[str, Any]) -> str:
    """A benchmark's document as CSV: its ``rows`` table if it has one, else one key,value row
    per scalar (nested keys joined with dots), so every number it measured is in the file."""
    from locality.report.summary import csv_text

    rows = doc.get("rows")
    if isinstance(rows, list) and rows and all(isinstance(r, dict) for r in rows):
        return csv_text(rows)
    flat: list[dict[str, Any]] = []

    def walk(value: Any, key: str) -> None:
        if isinstance(value, dict):
            for k, v in value.items():
                walk(v, f"{key}.{k}" if key else str(k))
        elif isinstance(value, list) and any(isinstance(v, (dict, list)) for v in value):
            for i, v in enumerate(value):
                walk(v, f"{key}.{i}")
        else:
            flat.append({"key": key, "value": value})

    walk(doc, "")
    return csv_text(flat)


def emit(doc: dict[str, Any], fmt: str, text: Callable[[dict[str, Any]], None]) -> None:
    """Print a benchmark's document as JSON, CSV, or through ``text`` (its human-readable table)."""
    import json

    if fmt == "json":
        click.echo(json.dumps(doc, indent=2, default=float))
    elif fmt == "csv":
        click.echo(doc_csv(doc), nl=False)
    else:
        text(doc)
