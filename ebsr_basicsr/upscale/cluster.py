"""Batch upscaling on a Ray cluster: the jobs of :func:`.batch.plan_batch`, run by Ray actors.

Ray is optional (the ``cluster`` extra) and imported only when a run uses it. :func:`connect`
joins a cluster (or starts one on this machine); :func:`run_jobs` is an executor for
:func:`.batch.run_batch`. Each actor is one worker: it reserves ``threads`` CPUs, loads the
model once and runs one job at a time with :func:`.batch.run_worker_job`, the code of a local
worker process, so names, refusals, atomic writes, error lines and outputs are those of a
local run. A video is one job: one actor does all its frames in order and copies its audio.

Jobs travel as absolute paths, which every node must reach (a shared filesystem); the model
travels as the loader the caller gives (``load_engine_bytes`` with the file's contents needs
no shared path). The driver hands a job to each actor that is up and idle, polls the busy ones
for progress and log records (a :class:`.batch.JobTracker` reconciles them with the results),
and on an interrupt asks the busy actors to stop at their next safe point (they remove their
temporary files), waits for them a while, kills them, and removes what temporary files remain.
"""
from __future__ import annotations

import collections
import contextlib
import logging
import os
import re
import signal
import socket
import threading
import time
from dataclasses import replace
from pathlib import Path
from typing import Callable, Iterator, List, Optional

from . import interrupts
from .batch import (PKG_LOGGER, WORKER_DIED, BatchOptions, Job, JobResult, JobTracker, remove_temp_files,
                    run_worker_job, set_threads, unexpected_result, worker_setup)
from .upscaler import default_memory_budget

log = logging.getLogger(__name__)

MIN_RAY = (2, 9)
INSTALL = 'pip install "ray[client]>=2.9" (the cluster extra: pip install -e ".[cluster]")'
#: the Ray instance that ``--ray local`` starts: this machine's CPUs, no dashboard, and a small
#: object store (only the model, paths and results go through it)
LOCAL_OBJECT_STORE = 256 << 20
POLL_SECONDS = 0.5      # how often busy actors are asked for progress and log records
STOP_GRACE = 30.0       # how long stopped actors get to clean up before they are killed
CONNECT_SECONDS = 10.0  # for the reachability check of HOST:PORT (Ray itself retries forever)
_ADDRESS = re.compile(r"(local|auto|(ray://)?([^\s/:]+):(\d+))")


class ClusterError(RuntimeError):
    """Ray is missing, or the cluster cannot be reached or used; the message is one line."""


class RayUnavailable(ClusterError):
    """Ray is not installed (or too old)."""


def import_ray():
    """The ``ray`` module, or :class:`RayUnavailable` saying how to install it."""
    try:
        import ray
    except ImportError:
        raise RayUnavailable(f"--ray needs Ray, which is not installed: {INSTALL}") from None
    version = tuple(int(n) for n in re.findall(r"\d+", getattr(ray, "__version__", "0"))[:2])
    if version < MIN_RAY:
        raise RayUnavailable(f"--ray needs Ray >= {'.'.join(map(str, MIN_RAY))}, not {ray.__version__}: {INSTALL}")
    return ray


def check_address(address: str) -> str:
    """``local``, ``auto``, ``ray://HOST:PORT`` or ``HOST:PORT``; ValueError otherwise."""
    if not _ADDRESS.fullmatch(address or ""):
        raise ValueError(f"{address!r} is not a Ray address: use local, auto, ray://HOST:PORT or HOST:PORT")
    return address


def _check_reachable(address: str) -> None:
    """A ClusterError unless ``HOST:PORT`` (or ``ray://HOST:PORT``) accepts connections:
    ``ray.init`` would wait for it forever."""
    match = _ADDRESS.fullmatch(address)
    if match is None or match.group(3) is None:
        return
    try:
        with socket.create_connection((match.group(3), int(match.group(4))), timeout=CONNECT_SECONDS):
            pass
    except OSError as exc:
        raise ClusterError(f"cannot connect to the Ray cluster at {address}: {exc.strerror or exc}") from None


def _first_line(exc: BaseException) -> str:
    """One line of Ray's (often long) error text: the first, and the last if the first only
    announces the rest ("Initialization failure from server:")."""
    lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
    if not lines:
        return type(exc).__name__
    return f"{lines[0]} {lines[-1]}" if lines[0].endswith(":") and len(lines) > 1 else lines[0]


@contextlib.contextmanager
def connect(address: str, *, cpus: Optional[int] = None, verbose: bool = False) -> Iterator[None]:
    """Be a driver of the Ray cluster at ``address`` for the duration of the block.

    ``local`` starts a private Ray instance on this machine (``cpus`` CPUs, default all),
    stopped at the end; ``auto`` joins the cluster this machine belongs to, ``HOST:PORT`` the one
    whose head is there, ``ray://HOST:PORT`` one through the Ray client. Ray's own messages
    and the workers' output are shown only with ``verbose``. The signal handlers in place
    (:mod:`.interrupts`) are kept: ``ray.init`` installs its own for SIGTERM."""
    ray = import_ray()
    check_address(address)
    _check_reachable(address)
    kwargs = dict(logging_level=logging.INFO if verbose else logging.ERROR, log_to_driver=verbose)
    if address == "local":
        kwargs.update(num_cpus=cpus or os.cpu_count() or 1, include_dashboard=False,
                      object_store_memory=LOCAL_OBJECT_STORE)
    handlers = _signal_handlers()
    try:
        ray.init(address=address, **kwargs)
    except Exception as exc:
        where = "start Ray on this machine" if address == "local" else f"connect to the Ray cluster at {address}"
        raise ClusterError(f"cannot {where}: {_first_line(exc)}") from exc
    finally:
        _restore(handlers)
    try:
        yield
    finally:
        handlers = _signal_handlers()
        try:
            ray.shutdown()
        finally:
            _restore(handlers)


def _signal_handlers() -> dict:
    return {sig: signal.getsignal(sig) for sig in interrupts.SIGNALS}


def _restore(handlers: dict) -> None:
    if threading.current_thread() is not threading.main_thread():
        return
    for sig, handler in handlers.items():
        if handler is not None and signal.getsignal(sig) is not handler:
            signal.signal(sig, handler)


# --------------------------------------------------------------------------------------------
# the actor
# --------------------------------------------------------------------------------------------
class Worker:
    """One worker on the cluster (made a Ray actor by :func:`run_jobs`): loads the engine
    once, runs one job at a time, keeps the job's events for :meth:`poll`, and stops at the
    job's next safe point when told to (:meth:`stop`)."""

    def __init__(self, loader: Callable[[], object], options: BatchOptions, protect: List[str], threads: int,
                 level: int, env: dict, workers: int):
        for key, value in env.items():
            os.environ.setdefault(key, value)
        if options.memory_budget is None:  # as a local run: half the free memory, shared by the workers here
            options = replace(options, memory_budget=default_memory_budget(self._sharing(workers, threads)))
        self.options, self.protect, self.threads = options, protect, threads
        self.events: collections.deque = collections.deque()
        self.engine, self.error = worker_setup(loader, threads, level)

    @staticmethod
    def _sharing(workers: int, threads: int) -> int:
        """How many workers may share this node: as many as its CPUs hold, at most ``workers``."""
        import ray
        node = ray.get_runtime_context().get_node_id()
        cpus = next((n["Resources"].get("CPU", 0) for n in ray.nodes() if n.get("NodeID") == node), 0)
        return max(1, min(workers, int((cpus or os.cpu_count() or 1) // threads)))

    def ready(self) -> int:
        return os.getpid()

    def run(self, job: Job) -> Optional[JobResult]:
        """The job's result, or None if it was stopped (its temporary files removed)."""
        set_threads(self.threads)  # Numba's setting is per thread, and calls may come in any thread
        try:
            interrupts.check()
            return run_worker_job(self.engine, self.error, job, self.options, self.protect, self.events.append)
        except KeyboardInterrupt:
            return None

    def poll(self) -> list:
        """The events of :func:`.batch.run_worker_job` since the last poll."""
        events = []
        while self.events:
            events.append(self.events.popleft())
        return events

    def stop(self) -> None:
        if interrupts.pending() is None:
            interrupts.record(signal.SIGINT)


# --------------------------------------------------------------------------------------------
# the driver
# --------------------------------------------------------------------------------------------
def capacity(ray, threads: int) -> int:
    """How many workers of ``threads`` CPUs the live nodes of the cluster hold."""
    cpus = [n.get("Resources", {}).get("CPU", 0) for n in ray.nodes() if n.get("Alive")]
    return sum(int(c // threads) for c in cpus)


def _absolute(job: Job) -> Job:
    return replace(job, src=Path(os.path.abspath(job.src)), dst=Path(os.path.abspath(job.dst)),
                   frames_dir=None if job.frames_dir is None else Path(os.path.abspath(job.frames_dir)))


def run_jobs(jobs: List[Job], loader: Callable[[], object], options: BatchOptions, protect, workers: Optional[int],
             threads: Optional[int], report: Callable[[JobResult], None], tracker: JobTracker) -> None:
    """Executor of :func:`.batch.run_batch` on the connected Ray cluster (see the module doc).

    ``threads``: CPUs (kernel threads) per worker, default 1. ``workers``: how many actors,
    default as many as the cluster's CPUs hold (its nodes' CPUs // ``threads``), never more
    than the jobs; actors the cluster cannot place yet wait, and get jobs once they are up.
    Raises :class:`ClusterError` if no node has ``threads`` CPUs."""
    ray = import_ray()
    from ray.exceptions import RayActorError, RayError

    threads = int(threads or 1)
    room = capacity(ray, threads)
    if room < 1:
        raise ClusterError(f"no node of the Ray cluster has {threads} CPUs for a worker (--threads {threads})")
    count = max(1, min(int(workers or room), len(jobs)))
    level = logging.getLogger(PKG_LOGGER).getEffectiveLevel()
    env = {key: os.environ[key] for key in ("OPENCV_FFMPEG_LOGLEVEL",) if key in os.environ}
    options = replace(options, output_dir=Path(os.path.abspath(options.output_dir)),
                      frames_dir=None if options.frames_dir is None else Path(os.path.abspath(options.frames_dir)))
    protect = [os.path.abspath(p) for p in protect]
    actor_class = ray.remote(Worker).options(num_cpus=threads, max_concurrency=3)
    loader_ref = ray.put(loader)
    actors = [actor_class.remote(loader_ref, options, protect, threads, level, env, count) for _ in range(count)]

    starting = {actor.ready.remote(): actor for actor in actors}
    queue = collections.deque(jobs)
    idle: list = []
    running: dict = {}      # ref of a run -> (actor, job)
    polls: dict = {}        # ref of a poll -> actor
    start_error = None
    next_poll = time.monotonic() + POLL_SECONDS
    try:
        while queue or running:
            interrupts.check()
            if queue and not (starting or idle or running):  # every actor failed to start
                reason = f"no Ray worker could start: {start_error}"
                while queue:
                    job = queue.popleft()
                    res = JobResult(job.src, "failed", dst=job.dst, kind=job.kind, reason=reason)
                    tracker.settle(job, res)
                    report(res)
                break
            ready, _ = ray.wait(list(starting) + list(running) + list(polls), num_returns=1, timeout=0.2)
            for ref in ready:
                if ref in starting:
                    actor = starting.pop(ref)
                    try:
                        ray.get(ref)
                        idle.append(actor)
                    except RayError as exc:
                        start_error = _first_line(exc)
                        log.debug("a Ray worker could not start: %s", exc)
                elif ref in polls:
                    polls.pop(ref)
                    try:
                        events = ray.get(ref)
                    except RayError:  # the run's result tells what happened
                        events = []
                    for event in events:
                        tracker.event(*event)
                else:
                    actor, job = running.pop(ref)
                    res, alive = _result(ray, ref, job, RayActorError)
                    if alive:
                        idle.append(actor)
                    tracker.settle(job, res)
                    report(res)
            while idle and queue:
                job = queue.popleft()
                actor = idle.pop()
                running[actor.run.remote(_absolute(job))] = (actor, job)
            if time.monotonic() >= next_poll:
                next_poll = time.monotonic() + POLL_SECONDS
                polled = set(polls.values())
                for actor, _ in running.values():
                    if actor not in polled:
                        polls[actor.poll.remote()] = actor
    except BaseException:  # interrupted (or the cluster failed): stop the work in progress
        _stop(ray, running)
        raise
    finally:
        for actor in actors:
            with contextlib.suppress(Exception):
                ray.kill(actor)


def _result(ray, ref, job: Job, actor_error) -> tuple:
    """(the job's result with the caller's paths, whether the actor is still alive)."""
    try:
        res = ray.get(ref)
    except actor_error:  # the worker process died (killed for memory, its node lost, ...)
        return JobResult(job.src, "failed", dst=job.dst, kind=job.kind, reason=WORKER_DIED), False
    except Exception as exc:
        return unexpected_result(job, getattr(exc, "cause", None) or exc), True
    if res is None:
        return JobResult(job.src, "failed", dst=job.dst, kind=job.kind, reason="stopped"), True
    res.src, res.dst = job.src, job.dst
    return res, True


def _stop(ray, running: dict, grace: float = STOP_GRACE) -> None:
    """Ask the busy actors to stop at a safe point, wait for them up to ``grace`` seconds (or
    until another signal), kill them, and remove the temporary files of their jobs."""
    pending = list(running)
    try:
        for actor, _ in running.values():
            with contextlib.suppress(Exception):
                actor.stop.remote()
        deadline, signals = time.monotonic() + grace, interrupts.received()
        while pending and time.monotonic() < deadline and interrupts.received() == signals:
            _, pending = ray.wait(pending, num_returns=len(pending), timeout=0.1)
    except BaseException:  # another Ctrl-C: stop waiting
        pass
    finally:
        for ref in pending:  # still busy: killed, and given a moment to be gone before the clean-up
            with contextlib.suppress(Exception):
                ray.kill(running[ref][0])
        with contextlib.suppress(BaseException):
            if pending:
                ray.wait(pending, num_returns=len(pending), timeout=5.0)
        for _, job in running.values():
            remove_temp_files(job)
