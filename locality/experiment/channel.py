"""One JSON-lines channel between a parent and the child process it measures.

The parent end (``Channel``) starts the child in its own session (a
terminal's Ctrl-C reaches the parent only, which alone decides how the run
ends) with a parent-death signal set before exec (a child outliving a
SIGKILLed parent would hold its memory forever), reads its stdout on a thread
into a queue of decoded messages and keeps its stderr in a temporary file
for the tail an error message quotes. The child end (``ChildEnd``) moves the
protocol off fd 1, so a stray print from a library cannot corrupt it.

Used by the run's population child, Dask sweep points and the Erlang VM
(whose escript answers JSON events to plain-text commands).
"""

from __future__ import annotations

import json
import os
import queue
import select
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections import deque
from typing import Any, Callable, Mapping, Sequence

from locality.errors import LocalityError
from locality.kernel import die_with_parent

STDERR_TAIL = 2000


class ChildDied(LocalityError):
    """The child process ended (or garbled the protocol) before the conversation was over."""


class ChildTimeout(LocalityError):
    """The child did not answer within the time allowed."""


class Interrupted(Exception):
    """A wait was cut short because the parent was asked to stop (SIGINT/SIGTERM)."""


def exit_text(rc: int | None) -> str:
    """'exited with status 1' / 'was killed by SIGKILL (...)' for a return code."""
    if rc is None:
        return "is still running"
    if rc < 0:
        try:
            name = signal.Signals(-rc).name
        except ValueError:
            name = f"signal {-rc}"
        why = " (out of memory? a cgroup limit kills with SIGKILL)" if rc == -signal.SIGKILL else ""
        return f"was killed by {name}{why}"
    return f"exited with status {rc}"


def _in_child(death_signal: int) -> None:
    # Runs between fork and exec; the parent is blocked until exec, so it is alive here.
    die_with_parent(death_signal)


class Channel:
    """A child process speaking JSON lines: commands on its stdin, messages on its stdout.

    ``kind_key`` names the field that says what a message is ("msg" for the
    population child, "event" for the Erlang VM). Lines that are not JSON
    objects are protocol errors, or kept in ``noise`` with ``tolerate_noise``.
    Use as a context manager: leaving it always ends the child.
    """

    def __init__(self, argv: Sequence[str], *, name: str = "child", env: Mapping[str, str] | None = None,
                 kind_key: str = "msg", death_signal: int = signal.SIGKILL, new_session: bool = True,
                 tolerate_noise: bool = False) -> None:
        self.name = name
        self.kind_key = kind_key
        self.tolerate_noise = tolerate_noise
        self.noise: deque[str] = deque(maxlen=20)
        self._messages: queue.Queue[dict[str, Any] | None] = queue.Queue()
        self._dead: ChildDied | None = None
        self._stderr = tempfile.TemporaryFile()
        self.proc = subprocess.Popen(
            list(argv), stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=self._stderr, text=True, bufsize=1,
            env=dict(env) if env is not None else None, start_new_session=new_session,
            preexec_fn=lambda: _in_child(death_signal),
        )
        threading.Thread(target=self._read, name=f"locality-{name}-reader", daemon=True).start()

    @property
    def pid(self) -> int:
        return self.proc.pid

    def __enter__(self) -> "Channel":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            if not line.strip():
                continue
            try:
                message = json.loads(line)
                if not isinstance(message, dict):
                    raise ValueError("not an object")
            except ValueError:
                if self.tolerate_noise:
                    self.noise.append(line.rstrip())
                    continue
                message = {self.kind_key: "garbage", "line": line[:200]}
            self._messages.put(message)
        self._messages.put(None)

    # -- sending ---------------------------------------------------------------
    def send_line(self, text: str) -> bool:
        """Write one line to the child; False if it is gone (``recv`` then says how)."""
        assert self.proc.stdin is not None
        try:
            self.proc.stdin.write(text + "\n")
            self.proc.stdin.flush()
            return True
        except (BrokenPipeError, OSError, ValueError):
            return False

    def send(self, cmd: str, **fields: Any) -> bool:
        """Send the command ``{"cmd": cmd, **fields}``."""
        return self.send_line(json.dumps({"cmd": cmd, **fields}))

    # -- receiving -------------------------------------------------------------
    def recv(self, timeout: float) -> dict[str, Any] | None:
        """The next message, or None after ``timeout`` seconds; ChildDied once the child is gone."""
        if self._dead is not None:
            raise self._dead
        try:
            message = self._messages.get(timeout=max(0.0, timeout))
        except queue.Empty:
            return None
        if message is None:
            try:
                rc = self.proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                rc = None
            tail = " | ".join(self.noise)
            self._dead = ChildDied(f"the {self.name} {exit_text(rc)}" + (f": {tail}" if tail else ""))
            raise self._dead
        if message.get(self.kind_key) == "garbage":
            raise ChildDied(f"protocol error from the {self.name}: {message['line']!r}")
        return message

    def expect(self, kind: str | tuple[str, ...], timeout: float, *,
               handle: Callable[[dict[str, Any]], None] | None = None,
               stop: Callable[[], bool] | None = None) -> dict[str, Any]:
        """Wait for a message of ``kind``; every message on the way goes to ``handle``.

        Raises ChildTimeout after ``timeout`` seconds, Interrupted as soon as
        ``stop()`` is true, ChildDied if the child ends first.
        """
        kinds = (kind,) if isinstance(kind, str) else kind
        deadline = time.monotonic() + timeout
        while True:
            if stop is not None and stop():
                raise Interrupted
            message = self.recv(min(0.1, max(0.0, deadline - time.monotonic())))
            if message is not None:
                if handle is not None:
                    handle(message)
                if message.get(self.kind_key) in kinds:
                    return message
            elif time.monotonic() > deadline:
                raise ChildTimeout(f"the {self.name} did not answer {kinds[0]!r} within {timeout:.0f} s")

    # -- ending ----------------------------------------------------------------
    def exit_text(self) -> str:
        return exit_text(self.proc.poll())

    def stderr_tail(self, limit: int = STDERR_TAIL) -> str:
        """The last ``limit`` bytes the child wrote to stderr."""
        try:
            self._stderr.seek(0, os.SEEK_END)
            size = self._stderr.tell()
            self._stderr.seek(max(0, size - limit))
            return self._stderr.read().decode(errors="replace").strip()
        except (OSError, ValueError):
            return ""

    def close(self, timeout: float = 10.0, *, farewell: str | None = None) -> int | None:
        """Send ``farewell`` (a raw line), close stdin, wait ``timeout`` s, then SIGKILL; returns the exit code."""
        if self.proc.poll() is None:
            if farewell is not None:
                self.send_line(farewell)
            try:
                if self.proc.stdin:
                    self.proc.stdin.close()
            except OSError:
                pass
            try:
                self.proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        # stderr stays readable (stderr_tail) until the channel is garbage collected.
        return self.proc.returncode


class ChildEnd:
    """The child's side: messages to the parent on the original stdout, commands from stdin.

    fd 1 is pointed at stderr first, so a stray print cannot corrupt the
    protocol. Commands are read from the raw fd with our own line buffer: a
    buffered sys.stdin could swallow a second command, which select() then
    never reports (a "stop" queued behind a "register" would be lost).
    """

    def __init__(self) -> None:
        self._out = os.fdopen(os.dup(1), "w", buffering=1)
        os.dup2(2, 1)
        sys.stdout = sys.stderr
        self._fd = sys.stdin.fileno()
        self._buf = b""

    def send(self, msg: str, **fields: Any) -> None:
        self._out.write(json.dumps({"msg": msg, **fields}) + "\n")
        self._out.flush()

    def _line(self) -> bytes | None:
        if b"\n" in self._buf:
            line, self._buf = self._buf.split(b"\n", 1)
            return line
        return None

    def recv(self) -> dict[str, Any]:
        """The next command; SystemExit(0) when the parent went away."""
        while (line := self._line()) is None:
            chunk = os.read(self._fd, 65536)
            if not chunk:
                raise SystemExit(0)
            self._buf += chunk
        return json.loads(line)

    def poll(self) -> dict[str, Any] | None:
        """A command if one is waiting, else None (never blocks)."""
        if b"\n" in self._buf or select.select([self._fd], [], [], 0)[0]:
            return self.recv()
        return None

    def expect(self, cmd: str) -> dict[str, Any]:
        """The next command, which must be ``cmd``; "exit" or "stop" end the child quietly."""
        m = self.recv()
        if m.get("cmd") in ("exit", "stop"):
            raise SystemExit(0)
        if m.get("cmd") != cmd:
            raise RuntimeError(f"protocol: expected {cmd!r}, got {m!r}")
        return m
