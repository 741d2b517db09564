"""Shared fixtures. Keep this small: test modules own their specific fixtures."""

from __future__ import annotations

import atexit
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

# Calibration runs (locality.experiment.estimate) are cached per user; the
# suite keeps its own cache (removed at exit), never the user's.
_CACHE = tempfile.mkdtemp(prefix="locality-test-cache-")
os.environ["LOCALITY_CACHE_DIR"] = _CACHE
atexit.register(shutil.rmtree, _CACHE, True)

TESTS = Path(__file__).resolve().parent
ROOT = TESTS.parent
if str(TESTS) not in sys.path:  # `from childproc import Child` in any test module
    sys.path.insert(0, str(TESTS))


# CI installs every system package the suite needs (.ci/run), so there a missing
# one is a broken set-up to fail on, not a reason to skip.
IN_CI = os.environ.get("CI", "").lower() in ("1", "true", "yes")


def skip_or_fail(reason: str) -> None:
    """Skip a test whose system dependency is missing here; fail it in CI."""
    if IN_CI:
        pytest.fail(f"CI must provide this: {reason}", pytrace=False)
    pytest.skip(reason)


# Run a command as user nobody with no capability but CAP_DAC_READ_SEARCH, which
# only lets it reach the interpreter under /root (mode 700): no ptrace, no
# write access to other users' files, so the permission checks are real.
UNPRIVILEGED = (
    "setpriv", "--reuid=65534", "--regid=65534", "--clear-groups",
    "--inh-caps=-all,+dac_read_search", "--ambient-caps=+dac_read_search",
)


def run_cli(*args: str, cwd: str | os.PathLike | None = None, timeout: float = 120, prefix: tuple[str, ...] = (),
            env: dict | None = None) -> tuple[int, str, str]:
    """Run ``python -m locality ARGS`` in a subprocess; returns (rc, stdout, stderr).

    ``prefix`` runs it under another command (e.g. setpriv to drop root).
    """
    full_env = dict(os.environ, PYTHONPATH=str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    full_env.update(env or {})
    p = subprocess.run(
        [*prefix, sys.executable, "-m", "locality", *map(str, args)],
        cwd=cwd,
        env=full_env,
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    return p.returncode, p.stdout, p.stderr


@pytest.fixture
def cli(tmp_path):
    """``cli("doctor", "--json") -> (rc, stdout, stderr)``, run in a fresh temporary directory."""

    def call(*args: str, **kw) -> tuple[int, str, str]:
        kw.setdefault("cwd", tmp_path)
        return run_cli(*args, **kw)

    return call


def zram_swap_active() -> bool:
    from locality.kernel import swap_active

    return any(a["filename"] == "/dev/zram0" for a in swap_active())


@pytest.fixture
def swap_on():
    """zram swap on for the test, and ALWAYS off again, leaving the device as found."""
    from locality.kernel import swap as zram

    if os.geteuid() != 0 or not zram.ZRAM_SYSFS.is_dir():
        skip_or_fail("zram swap needs root and /sys/block/zram0")
    if zram_swap_active():
        pytest.skip("zram swap is already in use on this machine (another run?)")
    zram.zram_swap_on(512 << 20)  # outside the try: if it fails, someone else's swap stays on
    try:
        yield
    finally:
        zram.zram_swap_off()
        assert not zram_swap_active()
        assert zram._read("disksize") == "0" and not zram.STATE_FILE.exists()



# Under pytest-xdist (pyproject's addopts run the suite on two workers), the
# modules that turn zram swap on, or whose runs behave differently once swap is
# on (compare and beam page out for real, doctor reports it, the fault and
# lifecycle tests compare swap and cgroups before and after), all run on one
# worker, one after another, so that no test sees another's swap.
MACHINE_STATE_MODULES = frozenset({
    "test_bad_inputs", "test_beam", "test_beam_compare", "test_beam_targets", "test_capabilities", "test_compare",
    "test_compare_paging", "test_faults", "test_kernel_edges", "test_leftovers", "test_lifecycle", "test_policies",
    "test_portions", "test_progress", "test_reclaim", "test_run", "test_swap",
})


@pytest.hookimpl(tryfirst=True)  # before xdist's own hook reads the groups
def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    for item in items:
        if item.module is not None and item.module.__name__ in MACHINE_STATE_MODULES:
            item.add_marker(pytest.mark.xdist_group("machine-state"))


@pytest.fixture(autouse=True)
def _swap_left_as_found(request):
    """A test that leaves zram swap on (or off) where it found it off (or on) fails in teardown:
    the tool must leave the machine as it found it, and the next swap test would skip."""
    # Only the machine-state modules, which run one after another on one xdist worker: a test of
    # another module may run beside one of these and see its swap come and go.
    if "swap_on" in request.fixturenames or request.module.__name__ not in MACHINE_STATE_MODULES:
        yield
        return
    before = zram_swap_active()
    yield
    after = zram_swap_active()
    if after != before:
        pytest.fail(f"zram swap was {'off' if not before else 'on'} before this test and is "
                    f"{'on' if after else 'off'} after it (it did not restore it, or another "
                    "pytest ran on this machine meanwhile)", pytrace=False)
