"""`locality doctor`: a report of every capability, exit 0, JSON for scripts."""

from __future__ import annotations

import json

from locality.kernel import capabilities


def test_doctor_json_lists_every_capability_and_exits_0(cli):
    rc, out, err = cli("doctor", "--json")
    assert rc == 0, err
    report = json.loads(out)["capabilities"]
    assert set(report) == set(capabilities())
    for c in report.values():
        assert set(c) >= {"available", "reason", "hint"}


def test_doctor_table_shows_each_verdict_with_reason_and_fix(cli):
    rc, out, err = cli("doctor")
    assert rc == 0 and err == ""
    rc2, js, _ = cli("doctor", "--json")
    report = json.loads(js)["capabilities"]
    table = out.split("\n\n")[0]
    rows = {line.split()[0]: line.split()[1] for line in table.splitlines()[1:] if line and not line.startswith(" ")}
    for name, c in report.items():
        assert rows[name] == ("works" if c["available"] else "MISSING"), name
    missing = [n for n, c in report.items() if not c["available"]]
    assert out.count("fix: ") == sum(1 for n in missing if report[n]["hint"])
    assert f"{len(report) - len(missing)} of {len(report)} capabilities work" in out


def test_doctor_help_explains(cli):
    rc, out, _ = cli("doctor", "--help")
    assert rc == 0 and "exit status" in out and "--json" in out
