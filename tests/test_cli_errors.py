"""Bad input: one clear line, exit status 2, no traceback, nothing half-written."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
from conftest import UNPRIVILEGED, run_cli

from locality.cli import main


@pytest.fixture
def run_main(tmp_path, monkeypatch, capsys):
    """In-process ``locality ARGS`` (fast): (rc, stdout, stderr), run in an empty directory."""
    monkeypatch.chdir(tmp_path)

    def call(*args: str) -> tuple[int, str, str]:
        with pytest.raises(SystemExit) as e:
            main([str(a) for a in args])
        out, err = capsys.readouterr()
        return e.value.code, out, err

    return call


def assert_refused(rc: int, err: str, *needles: str) -> str:
    assert rc == 2, err
    assert "Traceback" not in err
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    assert lines[0].startswith("locality: error: "), err
    for needle in needles:
        assert needle in lines[0], (needle, lines[0])
    return lines[0]


def assert_nothing_written(directory) -> None:
    assert list(os.listdir(directory)) == []


@pytest.fixture(scope="module")
def gone_pid() -> int:
    p = subprocess.Popen([sys.executable, "-c", "pass"])
    p.wait()
    return p.pid


def test_nonexistent_pid(cli, tmp_path, gone_pid):
    rc, out, err = cli("probe", gone_pid, "--duration", "1s")
    assert_refused(rc, err, f"no process with PID {gone_pid}")
    assert_nothing_written(tmp_path)


def test_pid_1_with_track_refs_without_permission(tmp_path):
    # As user nobody (tests run as root); its working directory is writable, so a
    # leftover run directory would show.
    work = tmp_path / "w"
    work.mkdir()
    work.chmod(0o777)

    rc, out, err = run_cli("probe", "1", "--track-refs", "--duration", "1s", cwd=work, prefix=UNPRIVILEGED)
    line = assert_refused(rc, err, "permission denied", "PID 1")
    assert line.startswith("locality: error: ")
    assert_nothing_written(work)


@pytest.mark.parametrize(
    "args, needles",
    [
        (["--interval", "0"], ["--interval must be > 0"]),
        (["--interval=-1s"], ["--interval must be > 0"]),
        (["--interval", "5x"], ["--interval", "not a duration"]),
        (["--duration", "0ms"], ["--duration must be > 0"]),
        (["--interval", "2s", "--duration", "1s"], ["shorter than --interval"]),
        (["--range", "1001-3000"], ["not page-aligned"]),
        (["--range=-1000-3000"], ["negative"]),
        (["--range", "3000-1000"], ["empty or reversed"]),
        (["--range", "zz-1000"], ["not a hexadecimal address"]),
        (["--range", "1000"], ["not START-END"]),
    ],
)
def test_bad_probe_options(run_main, tmp_path, args, needles):
    rc, out, err = run_main("probe", os.getpid(), *args)
    assert_refused(rc, err, *needles)
    assert_nothing_written(tmp_path)


def test_existing_out_directory_is_not_overwritten(run_main, tmp_path):
    out = tmp_path / "taken"
    out.mkdir()
    (out / "manifest.json").write_text("{}")
    rc, _, err = run_main("probe", os.getpid(), "--out", out, "--duration", "1s")
    assert_refused(rc, err, "already exists")
    assert os.listdir(out) == ["manifest.json"] and (out / "manifest.json").read_text() == "{}"


def test_range_matching_no_vma(run_main, tmp_path):
    rc, _, err = run_main("probe", os.getpid(), "--range", "1000-2000", "--duration", "1s")
    assert_refused(rc, err, "no VMA", "intersects")
    assert_nothing_written(tmp_path)


@pytest.mark.parametrize("args, needle", [
    (["frobnicate"], "No such command 'frobnicate'"),
    (["probe", "--bogus", "1"], "No such option '--bogus'"),
    (["probe", "abc"], "'abc' is not a valid integer"),
    (["probe"], "Missing argument 'PID'"),
])
def test_usage_errors(run_main, tmp_path, args, needle):
    rc, _, err = run_main(*args)
    assert_refused(rc, err, needle)
    assert_nothing_written(tmp_path)


def test_unknown_subcommand_in_a_real_process(cli, tmp_path):
    rc, out, err = cli("frobnicate")
    assert_refused(rc, err, "No such command")
    assert out == ""
    assert_nothing_written(tmp_path)
