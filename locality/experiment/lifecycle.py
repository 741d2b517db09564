"""One run lifecycle for every kind of run: run, probe, Erlang VM, sweep points.

``with RunLifecycle("run", out, run_id, config) as life:`` owns

- the run directory: created whole and exclusively (``store.claim_run_dir``);
  an existing id is refused unless ``replace``; an id that is not one plain
  path component is refused before anything is created;
- the manifest: versions, machine, capabilities, the runner's pid and start
  time (so a reader can tell a ``crashed`` run from a ``running`` one), the
  load average at start and at end (as pyperf records it: a number measured
  on a busy machine should say so), and the status
  ``running -> complete | interrupted | failed``;
- SIGINT/SIGTERM: from before the directory exists until the manifest is
  final, a signal only sets ``life.stopping``; the body stops at its next
  check and writes what it measured.

How the body ends decides the status: it returns -> ``complete`` (or
``interrupted`` if it called ``life.cut()`` because it stopped early); it
raises ``KeyboardInterrupt`` or ``channel.Interrupted`` -> ``interrupted``;
any other exception -> ``failed`` with the error, unless a signal is pending,
which makes it ``interrupted``: a run never fails because it was told to stop.
On leaving, an interrupted run raises KeyboardInterrupt, a failed one
re-raises its error.
"""

from __future__ import annotations

import datetime as _dt
import os
from pathlib import Path
from typing import Any, Callable, Mapping

from locality.errors import LocalityError
from locality.experiment import store
from locality.experiment.channel import Interrupted
from locality.experiment.signals import StopSignals


def load_average() -> list[float]:
    return [round(x, 2) for x in os.getloadavg()]


class RunLifecycle:
    """See the module docstring. ``life.dir`` and ``life.manifest`` are the run's."""

    def __init__(self, kind: str, out: str | os.PathLike, run_id: str | None, config: Mapping[str, Any], *,
                 capabilities: Mapping[str, Any] | None = None, prefix: str | None = None, replace: bool = False,
                 resume: bool = False, on_end: Callable[["RunLifecycle", str], None] | None = None) -> None:
        self.kind = kind
        self.out = Path(out)
        self.run_id = None if run_id is None else store.check_run_id(run_id)
        self.prefix = prefix or kind
        self.replace, self.resume = replace, resume
        self.on_end = on_end
        self.manifest: dict[str, Any] = store.start_manifest(kind, run_id or "", config, capabilities)
        self.dir: Path | None = None
        self.status: str | None = None
        self.error_detail: str | None = None  # appended to the error of a failed run (e.g. a child's stderr tail)
        self._cut = False
        self._signals = StopSignals()

    # -- the body's view -------------------------------------------------------
    @property
    def stopping(self) -> bool:
        """A SIGINT or SIGTERM arrived: stop at the next safe point."""
        return self._signals.signum is not None

    def check(self) -> None:
        """Raise channel.Interrupted if a signal is pending."""
        if self.stopping:
            raise Interrupted

    def cut(self) -> None:
        """The body stopped early (on a signal) but ends normally: the run is ``interrupted``."""
        self._cut = True

    def save(self) -> None:
        """Write the manifest as it is now (still ``running``)."""
        assert self.dir is not None
        store.write_manifest(self.dir, self.manifest)

    # -- the context -----------------------------------------------------------
    def __enter__(self) -> "RunLifecycle":
        self._signals.__enter__()
        try:
            self.manifest.update(runner=store.runner_info(), load_average={"start": load_average(), "end": None})
            self.dir = self._claim()
        except BaseException:
            self._signals.__exit__(None, None, None)
            raise
        return self

    def _claim(self) -> Path:
        if self.run_id is not None:
            self.manifest["id"] = self.run_id
            return store.claim_run_dir(self.out, self.run_id, self.manifest, replace=self.replace, resume=self.resume)
        stamp = _dt.datetime.now(_dt.timezone.utc).strftime("%Y%m%dT%H%M%SZ")
        for n in range(1000):
            run_id = f"{self.prefix}-{stamp}" + (f"-{n}" if n else "")
            self.manifest["id"] = run_id
            try:
                return store.claim_run_dir(self.out, run_id, self.manifest)
            except store.RunExists:
                continue
        raise store.RunExists(f"could not create a run directory under {self.out}")

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: object) -> bool:
        try:
            if exc_type is None:
                status = "interrupted" if self._cut else "complete"
            elif issubclass(exc_type, (KeyboardInterrupt, Interrupted)) or self.stopping:
                status = "interrupted"
            else:
                status = "failed"
            self.status = status
            if self.on_end is not None:
                self.on_end(self, status)
            error = None
            if status == "failed":
                error = str(exc) if isinstance(exc, LocalityError) else f"{exc_type.__name__}: {exc}"
                if self.error_detail:
                    error = f"{error}\n{self.error_detail}"
            self.manifest.update(status=status, error=error, finished=store.utcnow())
            self.manifest["load_average"]["end"] = load_average()
            store.write_manifest(self.dir, self.manifest)
        finally:
            self._signals.__exit__(None, None, None)
        if status == "interrupted" and not (exc_type is not None and issubclass(exc_type, KeyboardInterrupt)):
            raise KeyboardInterrupt
        return False


def record_refused(kind: str, out: str | os.PathLike, run_id: str, config: Mapping[str, Any], error: str, *,
                   machine: Mapping[str, Any] | None = None, capabilities: Mapping[str, Any] | None = None) -> Path:
    """Store a run that never ran (refused up front, or lost with its Dask worker) as ``failed`` with the reason."""
    manifest = store.start_manifest(kind, run_id, config, capabilities)
    if machine:
        manifest["machine"] = dict(machine)
    manifest.update(status="failed", error=error, finished=store.utcnow())
    return store.claim_run_dir(out, run_id, manifest)
