"""The Erlang VM running population.escript: commands in, JSON events out, always killed."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import time
from pathlib import Path
from typing import Any, Callable

from locality.errors import InvalidArgument, Unsupported
from locality.experiment.beam.config import ESCRIPT_NAME, INSTALL_HINT, BeamConfig, BeamError
from locality.experiment.channel import Channel, ChildDied, Interrupted

def find_escript() -> str:
    """Path of `escript`; Unsupported with the install hint when Erlang is missing."""
    erl, escript = shutil.which("erl"), shutil.which("escript")
    if not erl or not escript:
        raise Unsupported("the Erlang VM", "erl/escript not found on PATH", INSTALL_HINT)
    return escript


def escript_path() -> Path:
    """The population escript, shipped as package data (experiments/beam/ links to it)."""
    path = Path(__file__).with_name(ESCRIPT_NAME)
    if not path.is_file():
        raise BeamError(f"{ESCRIPT_NAME} is missing from the installation at {path}", "reinstall locality")
    return path


def vm_flags(config: BeamConfig) -> list[str]:
    """The emulator flags a run's VM starts with: its process limit, then the technique's flags."""
    return ["+P", str(config.process_limit), *config.vm_flags]


def preflight(config: BeamConfig, *, timeout: float = 60.0) -> None:
    """Start an empty VM with the run's flags and stop it; InvalidArgument with the VM's own
    words if it refuses them (a bad allocator flag, a process limit above the VM's maximum)."""
    find_escript()
    erl = shutil.which("erl")
    assert erl is not None
    env = {k: v for k, v in os.environ.items() if k != "ERL_FLAGS"}  # the run's flags alone
    flags = vm_flags(config)
    try:
        done = subprocess.run([erl, *flags, "-noshell", "-eval", "halt()."], capture_output=True, text=True,
                              timeout=timeout, env=env, stdin=subprocess.DEVNULL, start_new_session=True)
    except subprocess.TimeoutExpired:
        raise BeamError(f"the Erlang VM did not start within {timeout:.0f} s with {' '.join(flags)}",
                        "the machine may be short of memory") from None
    said = next((line.strip() for line in (done.stderr + done.stdout).splitlines() if line.strip()), "")
    if done.returncode == 0 and not said:
        return
    if said.startswith("bad number of processes"):
        raise InvalidArgument(
            f"-n {config.processes:,} needs {config.vm_processes:,} Erlang processes (+P {config.process_limit:,}), "
            f"above the VM's process limit: the VM said \"{said}\"", "use a smaller -n")
    raise InvalidArgument(f"the Erlang VM refuses {' '.join(config.vm_flags) or 'its flags'} "
                          f"(technique {config.technique}): the VM said \"{said or f'exit status {done.returncode}'}\"",
                          "fix or drop the flag set; see `erl +M` flags in the erts_alloc manual")


class BeamVM:
    """A running population escript on the shared JSON-lines channel: commands in, events out.

    The channel starts it in its own session (a terminal's Ctrl-C reaches
    locality, which alone ends the VM) with a parent-death signal (escript
    execs beam.smp in the same process, so SIGKILL reaches the VM if locality
    is killed); the escript also halts on end of stdin. ``stop`` (e.g. the run
    lifecycle's ``stopping``) cuts every wait short with channel.Interrupted.
    Use as a context manager; leaving it always kills the VM.
    """

    def __init__(self, config: BeamConfig, *, start_timeout: float = 60.0,
                 stop: Callable[[], bool] | None = None) -> None:
        self.config = config
        self.stop = stop
        escript = find_escript()
        env = dict(os.environ)
        # +P: the process table must hold every worker plus the VM's own; then the technique's flags.
        env["ERL_FLAGS"] = " ".join(vm_flags(config) + [env.get("ERL_FLAGS", "")]).strip()
        self.channel = Channel([escript, str(escript_path()), *config.escript_args()], name="Erlang VM", env=env,
                               kind_key="event", tolerate_noise=True)
        self.proc = self.channel.proc
        try:
            self.hello = self.wait_for("hello", start_timeout)
        except BaseException:
            self.close()
            raise
        self.pid: int = int(self.hello["os_pid"])

    def _died(self, e: ChildDied) -> BeamError:
        tail = self.channel.stderr_tail(400).splitlines()[-3:]
        return BeamError(str(e) + (f": {' | '.join(tail)}" if tail else ""),
                         "see the VM's output above; try fewer --processes")

    def send(self, command: str) -> None:
        if not self.channel.send_line(command):
            try:
                self.channel.recv(5)
            except ChildDied as e:
                raise self._died(e) from None
            raise BeamError("the Erlang VM stopped reading commands", "try fewer --processes")

    def poll(self, timeout: float) -> dict[str, Any] | None:
        """The next event, or None if none arrives within ``timeout`` seconds."""
        try:
            event = self.channel.recv(timeout)
        except ChildDied as e:
            raise self._died(e) from None
        if event is not None and event.get("event") == "error":
            raise BeamError(f"the Erlang VM reported: {event.get('message')}")
        return event

    def wait_for(self, name: str | tuple[str, ...], timeout: float) -> dict[str, Any]:
        """Wait for the event called ``name`` (or any of several); BeamError if none comes in time,
        channel.Interrupted as soon as ``stop()`` is true."""
        names = (name,) if isinstance(name, str) else name
        deadline = time.monotonic() + timeout
        while True:
            if self.stop is not None and self.stop():
                raise Interrupted
            left = deadline - time.monotonic()
            if left <= 0:
                raise BeamError(f"the Erlang VM did not answer within {timeout:.0f} s",
                                "the machine may be short of memory; try fewer --processes")
            event = self.poll(min(0.1, left))
            if event is not None and event.get("event") in names:
                return event

    def request(self, command: str, name: str, timeout: float = 120.0) -> dict[str, Any]:
        self.send(command)
        return self.wait_for(name, timeout)

    def close(self) -> None:
        """Stop the VM: end of stdin halts it at once (even mid-steps), else SIGKILL. Idempotent."""
        self.channel.close(timeout=3)
        try:  # anything left in the VM's session (erl_child_setup), which the channel started
            os.killpg(self.proc.pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass
        pid = getattr(self, "pid", None)
        if pid and pid != self.proc.pid and _alive(pid):
            # beam.smp outside the channel's process (should not happen: escript execs it); ours, so kill it.
            os.kill(pid, signal.SIGKILL)

    def __enter__(self) -> "BeamVM":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
        return True
    except ProcessLookupError:
        return False
    except PermissionError:
        return True

