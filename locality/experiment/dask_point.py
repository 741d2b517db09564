"""The worker side of a Dask sweep: one point per task, run in a fresh point process.

The task (``_run_point_task``) starts a point process through a
``channel.Channel`` (own session, SIGTERM when the worker dies), hands it
(run_fn, config, out, run_id) and waits for its answer. The point process
calls ``runner.run`` into a local temporary directory, holding the stop
signals from its first instruction, so a SIGTERM at any moment ends the run
``interrupted``, never ``failed``. The run's files go back to the client as
bytes, or are staged in a shared ``out`` (see distributed.py).
"""

from __future__ import annotations

import base64
import datetime as dt
import os
import shutil
import signal
import socket
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any, Callable

from locality import tempfiles
from locality.errors import LocalityError
from locality.experiment import store
from locality.experiment.channel import Channel, ChildDied, ChildEnd
from locality.experiment.lifecycle import record_refused

RESOURCE = "node"
RunFunction = Callable[..., Path]


class ClusterSetupError(LocalityError):
    """The cluster cannot run sweep points as configured."""



# Point processes and tasks running on this worker, per sweep token, so a
# cancelled sweep can stop them and wait until none can still write into
# ``out`` (see _stop_point_processes).
_RUNNING: dict[str, set[subprocess.Popen]] = {}
_RUNNING_LOCK = threading.Lock()
_ACTIVE_TASKS: dict[str, int] = {}
_TASK_DONE = threading.Condition(_RUNNING_LOCK)

_MARKER = ".locality-shared-{token}"
_STAGING = ".locality-staging-{token}-{point}"


def preflight_on_node(config: Any, run_fn: RunFunction | None) -> tuple[dict[str, dict], str | None]:
    """(capabilities of this node, why it cannot run ``config`` or None).

    The reason is the runner's preflight verdict, built from the doctor's
    (``kernel.capabilities``) reason. An injected ``run_fn`` (tests) does its
    own checks.
    """
    if run_fn is not None:
        return _node_capabilities(), None
    from locality.experiment.runner import preflight

    try:
        return preflight(config), None
    except LocalityError as e:
        return _node_capabilities(), f"{socket.gethostname()}: {e}"


def _node_capabilities() -> dict[str, dict]:
    from locality.kernel.capabilities import capabilities

    return capabilities()


def _run_point_task(point: Any, out: str, token: str, shared_out: bool | None, run_fn: RunFunction | None) -> dict[str, Any]:
    """The Dask task: run one point on this worker and hand back its run directory."""
    with _TASK_DONE:
        _ACTIVE_TASKS[token] = _ACTIVE_TASKS.get(token, 0) + 1
    try:
        return _run_point(point, out, token, shared_out, run_fn)
    finally:
        with _TASK_DONE:
            _ACTIVE_TASKS[token] -= 1
            if not _ACTIVE_TASKS[token]:
                del _ACTIVE_TASKS[token]
            _TASK_DONE.notify_all()


def _run_point(point: Any, out: str, token: str, shared_out: bool | None, run_fn: RunFunction | None) -> dict[str, Any]:
    """Run the point (or record why not) and return {point_id, node, status} plus
    the run's files as bytes, or the path where it was staged in a shared ``out``.

    ``node``: hostname, kernel, worker address, runs_per_node, start/end
    (epoch seconds and ISO). For a point whose worker was lost, the lost
    worker's, with the end when the loss was noticed.
    """
    from distributed import get_worker

    worker = get_worker()
    start = time.time()
    shared = _sees_marker(out, token) if shared_out is None else shared_out
    machine = store.machine()
    if shared and not _sees_marker(out, token):
        raise ClusterSetupError(f"out directory {out} is not shared with {machine['hostname']}", "drop shared_out=True")
    # The run itself always goes to a local directory: a point process
    # orphaned by a lost worker must not write into ``out`` afterwards.
    parent = Path(tempfile.mkdtemp(prefix=tempfiles.prefix("point")))
    run_dir = parent / point.point_id
    try:
        lost = _earlier_attempt(token, point.point_id)
        if lost is not None:
            # Dask re-runs the tasks of a lost worker elsewhere; a run that was
            # under way there is reported as failed, not silently repeated.
            machine, caps, node = lost["machine"], lost["capabilities"], {k: lost[k] for k in _NODE_KEYS}
            problem = f"the Dask worker {node['worker']} on {node['hostname']} was lost while running this point"
        else:
            caps, problem = preflight_on_node(point.config, run_fn)
            node = {
                "hostname": machine["hostname"],
                "kernel": machine["kernel"],
                "worker": worker.address,
                "runs_per_node": _count(worker.state.total_resources.get(RESOURCE)),
                "start_time": start,
            }
            worker.log_event(_topic(token, point.point_id), {"point": point.point_id, "machine": machine, "capabilities": caps, **node})
        if problem is not None:
            _write_failed(parent, point, problem, machine, caps)
        else:
            _run_point_process(point, parent, token, run_fn, machine, caps)
        end = time.time()
        node.update(end_time=end, started=_iso(node["start_time"]), finished=_iso(end))
        manifest = store.read_manifest(run_dir)
        fields: dict[str, Any] = {"node": node}
        if not manifest.get("capabilities"):
            fields["capabilities"] = caps
        store.update_manifest(run_dir, **fields)
        result: dict[str, Any] = {"point_id": point.point_id, "node": node, "status": manifest.get("status")}
        if shared and not _sees_marker(out, token):
            result["cancelled"] = True  # the sweep is over (Ctrl-C): leave nothing in out
        elif shared:
            staging = Path(out) / _STAGING.format(token=token, point=point.point_id)
            shutil.rmtree(staging, ignore_errors=True)
            shutil.copytree(run_dir, staging / point.point_id)
            result["staged"] = str(staging)
        else:
            result["files"] = {str(p.relative_to(run_dir)): p.read_bytes() for p in sorted(run_dir.rglob("*")) if p.is_file()}
        return result
    finally:
        shutil.rmtree(parent, ignore_errors=True)


_NODE_KEYS = ("hostname", "kernel", "worker", "runs_per_node", "start_time")


def _earlier_attempt(token: str, point_id: str) -> dict[str, Any] | None:
    """The start event of an earlier attempt at this point in this sweep (its worker was lost), or None."""
    from distributed import get_client

    for _, msg in get_client().get_events(_topic(token, point_id)):
        return msg
    return None


def _run_point_process(point: Any, parent: Path, token: str, run_fn: RunFunction | None, machine: dict, caps: dict) -> None:
    """Run ``run_fn(config, parent, run_id=point_id)`` in a fresh interpreter; always leaves a manifest."""
    import cloudpickle

    run_dir = parent / point.point_id
    payload = base64.b64encode(cloudpickle.dumps((run_fn, point.config, str(parent), point.point_id))).decode()
    chan = Channel([sys.executable, "-c", "from locality.experiment.dask_point import _point_process_main as m; m()"],
                   name="point process", env={**os.environ, "LOCALITY_POINT_PARENT": str(os.getpid())},
                   # SIGTERM: the runner then marks the run interrupted and stops its own child.
                   death_signal=signal.SIGTERM)
    with _RUNNING_LOCK:
        _RUNNING.setdefault(token, set()).add(chan.proc)
    error = ""
    try:
        chan.send("run", payload=payload)
        try:
            error = chan.expect("done", float("inf")).get("error") or ""
        except ChildDied:
            pass
        rc = chan.close()
    finally:
        with _RUNNING_LOCK:
            running = _RUNNING.get(token, set())
            running.discard(chan.proc)
            if not running:
                _RUNNING.pop(token, None)
    why = error or chan.stderr_tail(4000) or f"the point process {chan.exit_text()}"
    if (run_dir / "manifest.json").exists():
        if store.read_manifest(run_dir).get("status") == "running":
            # The runner never got to finish its manifest (killed hard): what it measured stays.
            store.update_manifest(run_dir, status="crashed", error=why, finished=store.utcnow())
        return
    shutil.rmtree(run_dir, ignore_errors=True)
    _write_failed(parent, point, why if rc else f"the point process stored no run: {why}", machine, caps)


def _point_process_main() -> None:
    """Entry point of the point process: read (run_fn, config, out, run_id) from the channel and run it."""
    from locality.experiment.signals import StopSignals

    # From the first instruction on, SIGTERM (our worker stopping us, or dying)
    # only asks the run to stop: it ends interrupted, whatever moment it lands.
    with StopSignals():
        import cloudpickle

        end = ChildEnd()
        m = end.expect("run")
        run_fn, config, out, run_id = cloudpickle.loads(base64.b64decode(m["payload"]))
        if run_fn is None:
            from locality.experiment.runner import run as run_fn
        try:
            run_fn(config, Path(out), run_id=run_id, progress=False)
            end.send("done", error=None)
        except KeyboardInterrupt:
            end.send("done", error="interrupted: the Dask worker stopped this point")
            sys.exit(130)
        except BaseException as e:  # noqa: BLE001 - the reason goes into the run's manifest
            end.send("done", error=f"{type(e).__name__}: {e}")
            sys.exit(1)
        finally:
            if str(os.getppid()) != os.environ.get("LOCALITY_POINT_PARENT"):
                shutil.rmtree(out, ignore_errors=True)  # our worker is gone: nobody collects this run


def _stop_point_processes(token: str, grace: float = 5.0) -> int:
    """Run on each worker by a cancelled sweep: SIGTERM its point processes (SIGKILL
    after ``grace``), then wait until its tasks of this sweep have returned."""
    with _RUNNING_LOCK:
        procs = list(_RUNNING.get(token, ()))
    for proc in procs:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
    deadline = time.monotonic() + grace
    for proc in procs:
        try:
            proc.wait(timeout=max(0.0, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
    with _TASK_DONE:
        _TASK_DONE.wait_for(lambda: token not in _ACTIVE_TASKS, timeout=grace)
    return len(procs)


def _count(value: float | None) -> float | int | None:
    # Dask keeps resources as floats; node=1 reads better as 1.
    return int(value) if value is not None and float(value).is_integer() else value


def _sees_marker(out: str, token: str) -> bool:
    try:
        return (Path(out) / _MARKER.format(token=token)).read_text() == token
    except OSError:
        return False


# --- both sides ---------------------------------------------------------------


def _write_failed(parent: Path, point: Any, error: str, machine: dict | None, caps: dict | None) -> Path:
    """Store ``parent/<point_id>`` as a failed run with the reason."""
    return record_refused("run", parent, point.point_id, point.config.model_dump(mode="json"), error,
                          machine=machine, capabilities=caps)


def _iso(t: float) -> str:
    return dt.datetime.fromtimestamp(t, dt.timezone.utc).isoformat(timespec="milliseconds")


def _topic(token: str, point_id: str) -> str:
    # One topic per point: looking up a point's starts stays cheap in a big sweep.
    return f"locality-sweep-{token}-{point_id}"


def shared_node_with(point_id: str, intervals: dict[str, tuple[str, float, float]]) -> list[str]:
    """Points that ran on the same host as ``point_id`` in overlapping time."""
    host, start, end = intervals[point_id]
    return sorted(
        other
        for other, (h, s, e) in intervals.items()
        if other != point_id and h == host and s < end and start < e
    )

