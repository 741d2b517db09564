"""Progress: a bar only on a terminal; one plain line per finished unit otherwise."""

from __future__ import annotations

import io

from locality.progress import progress


class Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_log_gets_one_line_per_finished_unit():
    log = io.StringIO()
    with progress(3, "sweep", "run", file=log) as bar:
        for point in ("a", "b", "c"):
            bar.set_postfix_str(point)
            bar.update(1)
    assert "\r" not in log.getvalue()
    assert log.getvalue().splitlines() == ["sweep: 1/3 runs done (a) [0 s]", "sweep: 2/3 runs done (b) [0 s]",
                                           "sweep: 3/3 runs done (c) [0 s]"]


def test_fine_grained_units_are_throttled_but_the_last_is_printed():
    log = io.StringIO()
    bar = progress(600, "run-1", "step", file=log, every=3600.0)
    for _ in range(600):
        bar.update(1)
    bar.close()
    assert log.getvalue().splitlines() == ["run-1: 1/600 steps done [0 s]", "run-1: 600/600 steps done [0 s]"]


def test_resumed_count_and_disabled():
    log = io.StringIO()
    with progress(4, "sweep", "run", initial=3, file=log) as bar:
        bar.update(1)
    assert log.getvalue() == "sweep: 4/4 runs done [0 s]\n"
    quiet = io.StringIO()
    with progress(4, "sweep", "run", file=quiet, enabled=False) as bar:
        bar.update(4)
    assert quiet.getvalue() == ""


def test_a_terminal_gets_a_bar():
    tty = Terminal()
    with progress(2, "compare", "layout", file=tty) as bar:
        bar.update(1)
        bar.update(1)
    assert "\r" in tty.getvalue() and "compare" in tty.getvalue() and "2/2" in tty.getvalue()
