"""Figures to bytes: inline SVG for the HTML report, files for the thesis.

Both are reproducible: no dates, SVG ids from a fixed salt, so the same
figure gives the same bytes (tests/test_regenerate.py holds it to that).
"""

from __future__ import annotations

import io
import re
from pathlib import Path

import matplotlib
from matplotlib.figure import Figure

_XML_PROLOG = re.compile(r"^.*?(?=<svg)", re.S)
_XML_COMMENT = re.compile(r"<!--.*?-->\s*", re.S)


def to_svg(fig: Figure, salt: str) -> str:
    """SVG text without prolog or comments, ids salted so several SVGs can share one page."""
    buf = io.StringIO()
    with matplotlib.rc_context({"svg.hashsalt": salt}):
        fig.savefig(buf, format="svg", metadata={"Date": None})
    return _XML_COMMENT.sub("", _XML_PROLOG.sub("", buf.getvalue(), count=1))


def save(fig: Figure, path: Path, fmt: str, salt: str) -> Path:
    """Write one figure file reproducibly (no dates; SVG ids from a fixed salt)."""
    metadata = {"svg": {"Date": None}, "pdf": {"CreationDate": None, "ModDate": None}, "png": {"Software": None}}.get(fmt)
    buf = io.BytesIO()
    with matplotlib.rc_context({"svg.hashsalt": salt}):
        fig.savefig(buf, format=fmt, metadata=metadata)
    from locality.experiment.store import atomic_write_bytes

    return atomic_write_bytes(path, buf.getvalue())
