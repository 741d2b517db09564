"""Run sweep points on a Dask cluster, one measured run per node by default.

Each point is one Dask task. On the worker it starts a *point process*
(a fresh Python interpreter) that calls ``runner.run``, which in turn runs
the population in its own child: the sampler never shares an interpreter
with the Dask worker's threads, and the point process dies with the worker
(PR_SET_PDEATHSIG), so a lost worker leaves no orphan behind.

Measurement isolation: every task asks for the resource ``node=1`` and each
node's worker offers ``node=<runs_per_node>`` (1 by default), so at most that
many runs share a machine. Whether they did anyway (several workers on one
host, as on a LocalCluster) is recorded: every stored manifest gets a
``node`` field (hostname, kernel, worker, start and end) and a
``shared_node_with`` list of the points that ran on the same host in
overlapping time.

Storage: the point process writes the run into a temporary directory on the
worker. The finished files are shipped back as bytes and written by the
client with the store's atomic writers, so a distributed run is stored
exactly like a local one. When ``out`` is a file system the worker sees at
the same path (detected with a marker file, or forced with
``shared_out=True``), the worker copies the run there instead. Either way a
run appears under ``out/<point_id>`` only once it is whole.

Lost workers: Dask re-runs the tasks of a lost worker on another one. Every
task logs a start event to the scheduler; a task that finds an earlier start
of its own point stores the point as failed (the worker was lost mid-run)
instead of repeating the measurement on another node. A point whose retries
run out (``distributed.scheduler.allowed-failures``) is stored as failed by
the client.
"""

from __future__ import annotations

import math
import os
import shutil
import socket
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any, Callable, Sequence
from urllib.parse import urlsplit

from locality import tempfiles
from locality.errors import LocalityError
from locality.experiment import store
from locality.experiment.dask_point import (  # noqa: F401 - re-exported: the sweep's public names
    _MARKER,
    _NODE_KEYS,
    _STAGING,
    RESOURCE,
    ClusterSetupError,
    RunFunction,
    _iso,
    _run_point_task,
    _stop_point_processes,
    _topic,
    _write_failed,
    shared_node_with,
)

CLUSTERS = ("local", "slurm", "pbs")
CONNECT_TIMEOUT = 10.0

# Defaults for batch clusters; anything set in dask's jobqueue config
# (~/.config/dask/jobqueue.yaml: queue, account, walltime, ...) wins.
JOBQUEUE_DEFAULTS: dict[str, Any] = {
    # A run is two busy processes (sampler + population): two cores each.
    "cores_per_run": 2,
    "memory": "16GiB",
    "walltime": "04:00:00",
}
# Whole nodes, so no other job's memory traffic shows up in a measurement.
JOBQUEUE_EXCLUSIVE = {"slurm": ["--exclusive"], "pbs": ["-l place=excl"]}

class SchedulerUnreachable(LocalityError):
    """No Dask scheduler answers at the given address."""

    def __init__(self, address: str, reason: str) -> None:
        super().__init__(
            f"cannot reach the Dask scheduler at {address}: {reason}",
            "start one with `dask scheduler` and pass its address, or use --cluster local",
        )
        self.address = address


# --- client side --------------------------------------------------------------


def run_points(
    points: Sequence[Any],
    out: str | os.PathLike,
    *,
    scheduler: str | None = None,
    cluster: str = "local",
    runs_per_node: int = 1,
    progress: bool = True,
    shared_out: bool | None = None,
    connect_timeout: float = CONNECT_TIMEOUT,
    run_fn: RunFunction | None = None,
) -> list[Path]:
    """Run sweep points on Dask workers and store each as ``out/<point_id>``.

    ``scheduler``: address of a running scheduler (its workers must offer the
    ``node`` resource: ``dask worker --resources node=1``). Otherwise a cluster
    is created and closed again: ``local`` (``runs_per_node`` single-threaded
    worker processes on this machine) or ``slurm``/``pbs`` (dask-jobqueue, one
    exclusive job per node, as many jobs as the points need).
    ``shared_out``: None detects whether workers see ``out``; True/False force it.
    ``run_fn``: replaces ``runner.run`` (for tests); must be picklable.
    Returns the run directories in the order of ``points``; a point whose
    worker was lost, or whose node lacks a capability it needs, is stored
    with status ``failed`` and the reason.
    """
    from locality.errors import InvalidArgument

    if runs_per_node < 1:
        raise InvalidArgument(f"runs_per_node must be >= 1 (got {runs_per_node})")
    if scheduler is None and cluster not in CLUSTERS:
        raise InvalidArgument(f"unknown cluster {cluster!r} (allowed: {', '.join(CLUSTERS)})")
    out = Path(out)
    points = list(points)
    ids = [p.point_id for p in points]
    if len(set(ids)) != len(ids):
        raise InvalidArgument("sweep points must have distinct point ids")
    if not points:
        return []
    _require_dask()
    out.mkdir(parents=True, exist_ok=True)
    token = uuid.uuid4().hex[:12]
    marker = store.atomic_write_text(out / _MARKER.format(token=token), token)
    created = None
    client = None
    try:
        if scheduler is not None:
            client = _connect(scheduler, connect_timeout)
            _check_workers(client, scheduler)
        else:
            created = make_cluster(cluster, runs_per_node=runs_per_node, n_points=len(points))
            from distributed import Client

            client = Client(created, set_as_default=False)
        return _Sweep(client, points, out, token, marker, shared_out, run_fn, progress).run()
    finally:
        marker.unlink(missing_ok=True)
        if client is not None:
            client.close()
        if created is not None:
            close_cluster(created)
        _remove_staging(out, token)  # no worker of ours can write any more


def make_cluster(kind: str, *, runs_per_node: int = 1, n_points: int = 1, **overrides: Any) -> Any:
    """Create (and scale) the cluster ``run_points`` uses when no scheduler is given."""
    if kind == "local":
        from distributed import LocalCluster

        return _with_own_scratch(lambda d: LocalCluster(**_LOCAL_CLUSTER, n_workers=runs_per_node,
                                                        local_directory=d, **overrides))
    cluster = jobqueue_cluster(kind, runs_per_node=runs_per_node, **overrides)
    cluster.scale(jobs=math.ceil(n_points / runs_per_node))
    return cluster


_LOCAL_CLUSTER = dict(
    threads_per_worker=1,
    processes=True,
    resources={RESOURCE: 1},
    host="127.0.0.1",
    dashboard_address="127.0.0.1:0",  # loopback, any free port: never clash with another cluster
    memory_limit=0,  # the runner owns the memory budget, not the nanny
    silence_logs=50,  # task errors are stored in the failed runs' manifests
)


def _with_own_scratch(create: Callable[[str], Any]) -> Any:
    """``create(directory)`` with Dask's scratch (the scheduler's too, not only the workers') in a
    directory named for this process: Dask's default, /tmp/dask-scratch-space, is left behind
    with its lock files. leftovers removes ours if we are killed; close_cluster does otherwise."""
    import dask

    scratch = tempfile.mkdtemp(prefix=tempfiles.prefix("dask"))
    try:
        with dask.config.set({"temporary-directory": scratch}):
            cluster = create(scratch)
    except BaseException:
        shutil.rmtree(scratch, ignore_errors=True)
        raise
    cluster.locality_scratch = scratch
    return cluster


def close_cluster(cluster: Any) -> None:
    """Close a cluster make_cluster created, and remove the scratch directory it made for it."""
    try:
        cluster.close()
    finally:
        scratch = getattr(cluster, "locality_scratch", None)
        if scratch:
            shutil.rmtree(scratch, ignore_errors=True)


def jobqueue_cluster(kind: str, *, runs_per_node: int = 1, **overrides: Any) -> Any:
    """A dask-jobqueue SLURMCluster/PBSCluster: one worker process per exclusive node."""
    import dask

    try:
        import dask_jobqueue
    except ImportError:
        raise ClusterSetupError(f"--cluster {kind} needs dask-jobqueue", "pip install 'locality[dask]'") from None
    cls = {"slurm": dask_jobqueue.SLURMCluster, "pbs": dask_jobqueue.PBSCluster}[kind]
    submit = {"slurm": "sbatch", "pbs": "qsub"}[kind]
    if shutil.which(submit) is None:
        # Without it every job submission fails in the background and the sweep would wait forever.
        raise ClusterSetupError(
            f"--cluster {kind} needs `{submit}`, which is not on PATH here",
            "run the sweep on the cluster's login node, or start workers by hand and pass --scheduler",
        )
    conf = dask.config.get(f"jobqueue.{kind}", {}) or {}
    kwargs: dict[str, Any] = {
        "cores": conf.get("cores") or JOBQUEUE_DEFAULTS["cores_per_run"] * runs_per_node,
        "memory": conf.get("memory") or JOBQUEUE_DEFAULTS["memory"],
        "walltime": conf.get("walltime") or JOBQUEUE_DEFAULTS["walltime"],
        "processes": 1,
        "worker_extra_args": list(conf.get("worker-extra-args") or []) + ["--resources", f"{RESOURCE}={runs_per_node}"],
        "job_extra_directives": list(conf.get("job-extra-directives") or []) + JOBQUEUE_EXCLUSIVE[kind],
    }
    kwargs.update(overrides)
    return _with_own_scratch(lambda _: cls(**kwargs))  # its scheduler runs here (the job script does not carry it)


def _require_dask() -> None:
    try:
        import distributed  # noqa: F401
    except ImportError:
        raise ClusterSetupError("--executor dask needs dask.distributed", "pip install 'locality[dask]'") from None


def _connect(address: str, timeout: float) -> Any:
    from distributed import Client

    parts = urlsplit(address if "://" in address else f"tcp://{address}")
    if parts.scheme == "tcp" and parts.hostname:
        # Fail in one line now, rather than after dask's retries and its traceback.
        try:
            socket.create_connection((parts.hostname, parts.port or 8786), timeout=timeout).close()
        except OSError as e:
            raise SchedulerUnreachable(address, e.strerror or str(e) or type(e).__name__) from None
    try:
        return Client(address, timeout=timeout, set_as_default=False)
    except (OSError, TimeoutError) as e:
        raise SchedulerUnreachable(address, str(e).splitlines()[0] if str(e) else type(e).__name__) from None


def _check_workers(client: Any, address: str) -> None:
    workers = client.scheduler_info().get("workers", {})
    if workers and not any(w.get("resources", {}).get(RESOURCE) for w in workers.values()):
        raise ClusterSetupError(
            f"no worker of the scheduler at {address} offers the '{RESOURCE}' resource, so no point could start",
            f"start workers with `dask worker {address} --nworkers 1 --resources {RESOURCE}=1`",
        )
    if not workers:
        print(f"locality: no workers at {address} yet; points start when workers join", file=sys.stderr)


def _remove_staging(out: Path, token: str) -> None:
    for staging in out.glob(_STAGING.format(token=token, point="*")):
        shutil.rmtree(staging, ignore_errors=True)


class _Sweep:
    """Client side of one ``run_points`` call: submit, store as completed, clean up."""

    def __init__(self, client: Any, points: list, out: Path, token: str, marker: Path, shared_out: bool | None, run_fn: RunFunction | None, progress: bool) -> None:
        self.client = client
        self.points = {p.point_id: p for p in points}
        self.out = out
        self.token = token
        self.marker = marker
        self.shared_out = shared_out
        self.run_fn = run_fn
        self.progress = progress
        self.intervals: dict[str, tuple[str, float, float]] = {}
        self.stored: list[str] = []

    def run(self) -> list[Path]:
        from distributed import as_completed
        from locality.progress import progress

        futures = {
            self.client.submit(
                _run_point_task, p, str(self.out), self.token, self.shared_out, self.run_fn,
                key=f"locality-point-{p.point_id}-{self.token}", resources={RESOURCE: 1}, pure=False, retries=0,
            ): pid
            for pid, p in self.points.items()
        }
        bar = progress(len(futures), "sweep (dask)", "run", enabled=self.progress)
        failed = 0
        try:
            for future in as_completed(futures, loop=self.client.loop):
                pid = futures[future]
                try:
                    result = future.result()
                except Exception as e:  # noqa: BLE001 - any task failure becomes a failed run
                    self._store_failure(pid, e)
                    failed += 1
                else:
                    self._store_result(result)
                    failed += result.get("status") != "complete"
                bar.update(1)
                bar.set_postfix(failed=failed, refresh=False)
        except BaseException:
            # Ctrl-C (or a client error): stop outstanding points, keep what is stored.
            self.marker.unlink(missing_ok=True)  # tasks still finishing leave out alone
            pending = [f for f in futures if not f.done()]
            self.client.cancel(pending, force=True)
            try:
                self.client.run(_stop_point_processes, self.token, on_error="ignore")
            except Exception:  # noqa: BLE001 - best effort while shutting down
                pass
            raise
        finally:
            bar.close()
            self._finish()
        return [self.out / pid for pid in self.points]

    def _store_result(self, result: dict[str, Any]) -> None:
        pid = result["point_id"]
        node = result["node"]
        self.intervals[pid] = (node["hostname"], node["start_time"], node["end_time"])
        staging = self.out / _STAGING.format(token=self.token, point=pid)
        run_dir = staging / pid
        if result.get("cancelled"):  # the marker vanished while the sweep still runs
            self._store_failure(pid, ClusterSetupError(f"the worker lost sight of {self.out} before storing the run"))
            return
        if "files" in result:
            for rel, data in result["files"].items():
                store.atomic_write_bytes(run_dir / rel, data)
        self._install(pid, staging)

    def _store_failure(self, pid: str, exc: BaseException) -> None:
        started = self._start_event(pid)
        now = time.time()
        where = ""
        if started is not None:
            self.intervals[pid] = (started["hostname"], started["start_time"], now)
            where = f" on {started['hostname']} ({started['worker']})"
        from distributed import KilledWorker

        if isinstance(exc, KilledWorker):
            reason = f"the Dask worker{where} was lost while running this point"
        else:
            reason = f"the task{where} failed: {type(exc).__name__}: {exc}"
        staging = self.out / _STAGING.format(token=self.token, point=pid)
        shutil.rmtree(staging, ignore_errors=True)  # a half-written shared run
        machine = started["machine"] if started else None
        caps = started["capabilities"] if started else None
        run_dir = _write_failed(staging, self.points[pid], reason, machine, caps)
        if started is not None:
            node = {k: started[k] for k in _NODE_KEYS}
            node.update(end_time=now, started=_iso(node["start_time"]), finished=_iso(now))
            store.update_manifest(run_dir, node=node)
        self._install(pid, staging)

    def _install(self, pid: str, staging: Path) -> None:
        """Move a whole staged run to ``out/<pid>``, replacing an earlier attempt."""
        run_dir = staging / pid
        store.update_manifest(run_dir, shared_node_with=self._shared(pid))
        target = self.out / pid
        old = None
        if target.exists():
            old = staging / f".old-{pid}"
            os.replace(target, old)
        os.replace(run_dir, target)
        shutil.rmtree(staging, ignore_errors=True)
        self.stored.append(pid)

    def _shared(self, pid: str) -> list[str]:
        return shared_node_with(pid, self.intervals) if pid in self.intervals else []

    def _start_event(self, pid: str) -> dict | None:
        """The point's (first) start as logged by its worker, or None."""
        try:
            events = self.client.get_events(_topic(self.token, pid))
        except Exception:  # noqa: BLE001 - the scheduler may be gone
            return None
        return events[0][1] if events else None

    def _finish(self) -> None:
        # Later points may have overlapped earlier stored ones: update their lists.
        for pid in self.stored:
            shared = self._shared(pid)
            run_dir = self.out / pid
            try:
                if store.read_manifest(run_dir).get("shared_node_with") != shared:
                    store.update_manifest(run_dir, shared_node_with=shared)
            except FileNotFoundError:
                pass
        _remove_staging(self.out, self.token)
