"""The run store: plain files under ``runs/<run-id>/`` that pandas and numpy open.

Every file is written atomically (temp file in the same directory, then
``os.replace``), so a reader never sees half a file, and an interrupted run
leaves only whole files behind. Layout of a run directory: docs/internals.md.
"""

from __future__ import annotations

import contextlib
import datetime as _dt
import fcntl
import io
import json
import os
import platform
import shutil
import socket
import tempfile
from importlib import metadata
from pathlib import Path
from typing import Any, Iterator, Mapping

import numpy as np

from locality.errors import InvalidArgument
from locality.experiment.schema import check_metrics, empty_timeline, row  # noqa: F401 - the writers' names
from locality.kernel import PAGE_SIZE

STATUSES = ("running", "complete", "interrupted", "failed", "crashed")
# Statuses a stored run can end in; "crashed" is only ever read (a "running" run whose runner is dead).
FINAL = ("complete", "interrupted", "failed", "crashed")
_UMASK = os.umask(0)
os.umask(_UMASK)


def utcnow() -> str:
    return _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> Path:
    """Write ``data`` to ``path`` so readers see the old file or the new one, never a mix."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        # mkstemp creates 0600; a run is a plain file others read, so honour the umask.
        os.fchmod(fd, 0o666 & ~_UMASK)
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        raise
    return path


def atomic_write_text(path: str | os.PathLike, text: str) -> Path:
    return atomic_write_bytes(path, text.encode())


def atomic_write_json(path: str | os.PathLike, obj: Any) -> Path:
    return atomic_write_text(path, json.dumps(obj, indent=2, sort_keys=True, default=_json_default) + "\n")


def atomic_write_csv(path: str | os.PathLike, frame: "Any") -> Path:
    """Write a pandas DataFrame as CSV (no index)."""
    buf = io.StringIO()
    frame.to_csv(buf, index=False)
    return atomic_write_text(path, buf.getvalue())


def atomic_write_npz(path: str | os.PathLike, **arrays: np.ndarray) -> Path:
    buf = io.BytesIO()
    np.savez_compressed(buf, **arrays)
    return atomic_write_bytes(path, buf.getvalue())


def _json_default(obj: Any) -> Any:
    if isinstance(obj, np.generic):
        return obj.item()
    if isinstance(obj, np.ndarray):
        return obj.tolist()
    if isinstance(obj, Path):
        return str(obj)
    raise TypeError(f"not JSON serialisable: {type(obj).__name__}")


def versions() -> dict[str, str]:
    """Versions of Python and of the packages that shape a measurement."""
    out = {"python": platform.python_version()}
    for pkg in ("locality", "numpy", "pandas", "psutil", "matplotlib", "click", "pydantic"):
        try:
            out[pkg] = metadata.version(pkg)
        except metadata.PackageNotFoundError:
            pass
    return out


def machine() -> dict[str, Any]:
    import psutil

    return {
        "hostname": socket.gethostname(),
        "kernel": platform.release(),
        "arch": platform.machine(),
        "cpus": os.cpu_count(),
        "memory_bytes": psutil.virtual_memory().total,
        "page_size": PAGE_SIZE,
    }


def new_run_dir(out: str | os.PathLike, prefix: str, run_id: str | None = None) -> Path:
    """Create a fresh run directory ``out/<prefix>-<UTC time>[-n]`` (or ``out/run_id``)."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    if run_id is not None:
        path = out / run_id
        path.mkdir(exist_ok=True)
        return path
    stamp = _dt.datetime.now(_dt.timezone.utc).strftime("%Y%m%dT%H%M%SZ")
    for n in range(1000):
        path = out / (f"{prefix}-{stamp}" + (f"-{n}" if n else ""))
        try:
            path.mkdir()
            return path
        except FileExistsError:
            continue
    raise FileExistsError(f"could not create a run directory under {out}")


class RunExists(InvalidArgument):
    """A run directory of that id is already there."""


class RunBusy(RunExists):
    """The run directory belongs to a runner that is still alive."""


class RunDone(RunExists):
    """(resume) The run directory holds a complete run."""


def check_run_id(run_id: object, what: str = "--id") -> str:
    """A run id must be one plain path component: it names a directory under ``out``."""
    text = run_id if isinstance(run_id, str) else ""
    if (not text or text in (".", "..") or "/" in text or "\\" in text or "\0" in text
            or text != text.strip() or text.startswith(".")):
        raise InvalidArgument(f"{what} {run_id!r} is not a plain directory name",
                              "use letters, digits, '-', '_' or '.', not starting with '.' and without '/'")
    return text


def runner_info() -> dict[str, Any]:
    """Who is writing a run: enough to tell later whether that process is still alive."""
    import psutil

    return {"pid": os.getpid(), "start_time": psutil.Process().create_time(), "hostname": socket.gethostname()}


def runner_alive(runner: Mapping[str, Any] | None) -> bool | None:
    """True/False if the runner recorded in a manifest is alive/dead here; None if we cannot tell."""
    import psutil

    if not runner or runner.get("hostname") != socket.gethostname():
        return None
    try:
        proc = psutil.Process(int(runner["pid"]))
        same = abs(proc.create_time() - float(runner["start_time"])) < 0.05
        return same and proc.status() != psutil.STATUS_ZOMBIE
    except (psutil.NoSuchProcess, KeyError, TypeError, ValueError):
        return False
    except psutil.Error:
        return None


def effective_status(run: str | os.PathLike | Mapping[str, Any]) -> str | None:
    """The status of a run directory (or of its manifest), with ``crashed`` for a
    ``running`` run whose runner died; None if there is no readable manifest."""
    if isinstance(run, Mapping):
        manifest: Mapping[str, Any] = run
    else:
        try:
            manifest = read_manifest(run)
        except (OSError, ValueError):
            return None
        if not isinstance(manifest, Mapping):
            return None
    status = manifest.get("status")
    if status == "running" and runner_alive(manifest.get("runner")) is False:
        return "crashed"
    return status


@contextlib.contextmanager
def _locked(directory: Path) -> Iterator[None]:
    # One claim at a time per directory of runs (flock on the directory itself:
    # nothing left behind, released if the process dies).
    fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)


def claim_run_dir(out: str | os.PathLike, run_id: str, manifest: Mapping[str, Any], *, replace: bool = False,
                  resume: bool = False) -> Path:
    """Create ``out/run_id`` holding ``manifest``, atomically and exclusively.

    The directory appears whole (made under a temporary name, then renamed),
    so no two runners ever share it. An existing run is refused (RunExists)
    unless ``replace``; one whose runner is alive always is (RunBusy). With
    ``resume`` a complete run is kept (RunDone) and any other is replaced.
    """
    out = Path(out)
    check_run_id(run_id)
    out.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{run_id}.", suffix=".new", dir=out))
    old: Path | None = None
    try:
        os.chmod(tmp, 0o777 & ~_UMASK)
        write_manifest(tmp, manifest)
        target = out / run_id
        with _locked(out):
            if target.is_dir() and not any(target.iterdir()):
                target.rmdir()  # an empty directory made by hand holds nothing to keep
            elif target.exists() or target.is_symlink():
                status = effective_status(target) if target.is_dir() else None
                where = f"run directory {target} already exists" + (f" ({status})" if status else "")
                if status == "running":
                    pid = (read_manifest(target).get("runner") or {}).get("pid")
                    raise RunBusy(f"{where}: its runner (PID {pid}) is still writing it", "wait for it, or choose another --id")
                if resume and status == "complete":
                    raise RunDone(where)
                if not (replace or resume) or not target.is_dir():
                    raise RunExists(where, "pass --replace to overwrite it, or choose another --id")
                old = Path(tempfile.mkdtemp(prefix=f".{run_id}.", suffix=".old", dir=out))
                os.replace(target, old / run_id)
            os.rename(tmp, target)
        return target
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    finally:
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)


def write_manifest(run_dir: str | os.PathLike, manifest: Mapping[str, Any]) -> Path:
    if manifest.get("status") not in STATUSES:
        raise ValueError(f"status must be one of {STATUSES}, not {manifest.get('status')!r}")
    return atomic_write_json(Path(run_dir) / "manifest.json", dict(manifest))


def read_manifest(run_dir: str | os.PathLike) -> dict[str, Any]:
    with open(Path(run_dir) / "manifest.json") as f:
        return json.load(f)


def update_manifest(run_dir: str | os.PathLike, **fields: Any) -> dict[str, Any]:
    manifest = read_manifest(run_dir)
    manifest.update(fields)
    write_manifest(run_dir, manifest)
    return manifest


def start_manifest(kind: str, run_id: str, config: Mapping[str, Any], capabilities: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """The manifest of a run that has just started (status ``running``)."""
    return {
        "id": run_id,
        "kind": kind,
        "status": "running",
        "error": None,
        "created": utcnow(),
        "finished": None,
        "config": dict(config),
        "versions": versions(),
        "machine": machine(),
        "capabilities": dict(capabilities or {}),
    }


def pack_bits(matrix: np.ndarray) -> np.ndarray:
    """samples x pages bool matrix -> packed uint8 (pages padded to a multiple of 8)."""
    return np.packbits(np.asarray(matrix, dtype=bool), axis=1)


def unpack_bits(packed: np.ndarray, n_pages: int) -> np.ndarray:
    return np.unpackbits(packed, axis=1, count=int(n_pages)).astype(bool)
