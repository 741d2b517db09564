"""The Erlang VM running population.escript: commands in, JSON events out, always killed."""

from __future__ import annotations

import json
import os
import queue
import shutil
import signal
import subprocess
import threading
import time
from collections import deque
from pathlib import Path
from typing import Any

from locality.errors import Unsupported
from locality.experiment.beam.config import ESCRIPT_NAME, INSTALL_HINT, BeamConfig, BeamError

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


class BeamVM:
    """A running population escript: send commands, read its JSON events.

    Use as a context manager; leaving it always kills the VM.
    """

    def __init__(self, config: BeamConfig, *, start_timeout: float = 60.0) -> None:
        self.config = config
        escript = find_escript()
        env = dict(os.environ)
        # +P: the process table must hold every worker plus the VM's own.
        plimit = max(1024, int(config.processes * 1.1) + 10_000)
        env["ERL_FLAGS"] = f"+P {plimit} " + env.get("ERL_FLAGS", "")
        self._events: queue.Queue[dict[str, Any] | None] = queue.Queue()
        self._stderr: deque[str] = deque(maxlen=20)
        self.noise: deque[str] = deque(maxlen=20)
        self.proc = subprocess.Popen(
            [escript, str(escript_path()), *config.escript_args()],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
            text=True, bufsize=1, env=env,
            start_new_session=True,  # Ctrl-C reaches locality only; it kills the VM itself
        )
        threading.Thread(target=self._read_stdout, daemon=True).start()
        threading.Thread(target=self._read_stderr, daemon=True).start()
        try:
            self.hello = self.wait_for("hello", start_timeout)
        except BaseException:
            self.close()
            raise
        self.pid: int = int(self.hello["os_pid"])

    def _read_stdout(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            line = line.strip()
            if not line:
                continue
            try:
                self._events.put(json.loads(line))
            except json.JSONDecodeError:
                self.noise.append(line)
        self._events.put(None)  # end of output: the VM is gone

    def _read_stderr(self) -> None:
        assert self.proc.stderr is not None
        for line in self.proc.stderr:
            self._stderr.append(line.rstrip())

    def _died(self) -> BeamError:
        rc = self.proc.poll()
        tail = " | ".join(list(self._stderr)[-3:] + list(self.noise)[-3:])
        return BeamError(f"the Erlang VM exited (status {rc})" + (f": {tail}" if tail else ""),
                         "see the VM's output above; try fewer --processes")

    def send(self, command: str) -> None:
        assert self.proc.stdin is not None
        try:
            self.proc.stdin.write(command + "\n")
            self.proc.stdin.flush()
        except BrokenPipeError:
            raise self._died() from None

    def poll(self, timeout: float) -> dict[str, Any] | None:
        """The next event, or None if none arrives within ``timeout`` seconds."""
        try:
            event = self._events.get(timeout=timeout)
        except queue.Empty:
            return None
        if event is None:
            self._events.put(None)  # stay dead for later callers
            try:
                self.proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                pass
            raise self._died()
        if event.get("event") == "error":
            raise BeamError(f"the Erlang VM reported: {event.get('message')}")
        return event

    def wait_for(self, name: str | tuple[str, ...], timeout: float) -> dict[str, Any]:
        """Wait for the event called ``name`` (or any of several); BeamError if none comes in time."""
        names = (name,) if isinstance(name, str) else name
        deadline = time.monotonic() + timeout
        while True:
            event = self.poll(max(0.0, deadline - time.monotonic()))
            if event is None:
                raise BeamError(f"the Erlang VM did not answer within {timeout:.0f} s",
                                "the machine may be short of memory; try fewer --processes")
            if event.get("event") in names:
                return event

    def request(self, command: str, name: str, timeout: float = 120.0) -> dict[str, Any]:
        self.send(command)
        return self.wait_for(name, timeout)

    def close(self) -> None:
        """Stop the VM: close its stdin, then kill its process group. Idempotent."""
        if self.proc.poll() is None:
            # End of stdin halts the VM at once, even in the middle of `steps`.
            try:
                if self.proc.stdin:
                    self.proc.stdin.close()
                self.proc.wait(timeout=3)
            except (subprocess.TimeoutExpired, OSError, ValueError):
                pass
        if self.proc.poll() is None:
            try:
                os.killpg(self.proc.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            self.proc.wait(timeout=10)
        pid = getattr(self, "pid", None)
        if pid and pid != self.proc.pid and _alive(pid):
            # beam.smp outside the group (should not happen: escript execs it); ours, so kill it.
            os.kill(pid, signal.SIGKILL)
        for stream in (self.proc.stdin, self.proc.stdout, self.proc.stderr):
            try:
                if stream:
                    stream.close()
            except OSError:
                pass

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

