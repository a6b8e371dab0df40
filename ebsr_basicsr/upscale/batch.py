"""Batch upscaling of image and video files: planning, running, reporting.

:func:`plan_batch` expands the inputs (files and folders, optionally recursive), classifies
them by extension, names the outputs ``OUTDIR/<stem><suffix>.<ext>`` and settles at once what
cannot be done (missing input, unknown type, an output that would replace an input or collide
with another output) or need not be (``skip_existing``). :func:`run_batch` then processes the
jobs, in this process or in N worker processes that each load the engine once, and never
stops at a failed file: every file ends up in the :class:`Summary` as done, skipped or failed
with a one-line reason. Another executor (:mod:`.cluster`: Ray) can run the same jobs with
the same worker code (:func:`worker_setup`, :func:`run_worker_job`) and the same reporting
(:class:`JobTracker`).

Nothing here imports torch or basicsr; the engine comes from ``ebsr_basicsr.runtime``.
"""
from __future__ import annotations

import functools
import logging
import os
import queue as queue_mod
import signal
import time
import traceback
from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Callable, Iterable, List, Optional, Sequence, Tuple, Union

import cv2
import numpy as np

from .. import _files
from . import interrupts
from .imageio import (DEFAULT_MAX_PIXELS, IMAGE_EXTENSIONS, WRITE_FORMATS, ImageReadError, ImageWriteError,
                      check_pixels, decode_image, format_for_path, image_size, max_file_bytes, read_file,
                      write_image)
from .upscaler import (EngineOutputError, MemoryBudgetError, UnsupportedImageError, default_memory_budget,
                       plan_tiles, upscale_image)
from .video import VIDEO_EXTENSIONS, VideoError, probe_video, upscale_video

log = logging.getLogger(__name__)
PKG_LOGGER = "ebsr_basicsr"

PathLike = Union[str, os.PathLike]
EXT_CHOICES = ("auto",) + tuple(WRITE_FORMATS)

#: errors that are a property of one input file, reported without a traceback
EXPECTED_ERRORS = (ImageReadError, ImageWriteError, VideoError, UnsupportedImageError, EngineOutputError,
                   MemoryBudgetError, OSError, cv2.error)


# --------------------------------------------------------------------------------------------
# data
# --------------------------------------------------------------------------------------------
class _Ensembled:
    """An engine whose ``run`` is its geometric self-ensemble (see ``Engine.run``)."""

    def __init__(self, engine):
        self.engine = engine

    def run(self, x):
        return self.engine.run(x, ensemble=True)

    def __getattr__(self, name):
        return getattr(self.engine, name)


@dataclass
class BatchOptions:
    output_dir: Path = Path("results")
    suffix: Optional[str] = None          # None: "_x<scale>"
    ext: str = "auto"                     # auto (keep the input's format) or a WRITE_FORMATS key
    quality: int = 95                     # JPEG / WebP quality
    tile: int = 0                         # 0: whole image, automatic tiles when too large
    tile_pad: int = 10
    recursive: bool = False               # folders: include sub-folders (mirrored in output_dir)
    skip_existing: bool = False
    frames_dir: Optional[Path] = None     # videos: also keep the upscaled frames as PNG here
    memory_budget: Optional[int] = None   # bytes for one file (per worker); None: from free memory
    max_pixels: Optional[int] = DEFAULT_MAX_PIXELS  # larger inputs are refused; 0/None: no limit
    keep_partial: bool = False            # videos that fail partway: keep <name>.partial.mp4
    copy_audio: bool = True
    ffmpeg: Optional[str] = "auto"        # "auto": look up on PATH; None: never use ffmpeg
    ensemble: bool = False                # geometric self-ensemble (8 passes per image)


@dataclass
class Job:
    index: int
    src: Path
    dst: Path
    kind: str                             # "image" or "video"
    frames_dir: Optional[Path] = None
    units: int = 1                        # expected progress units: 1 per image, frames per video


@dataclass
class JobResult:
    src: Path
    status: str                           # "done", "skipped" or "failed"
    dst: Optional[Path] = None
    reason: str = ""
    kind: str = "image"
    units: int = 0                        # images or frames actually produced
    expected_units: int = 0
    seconds: float = 0.0
    messages: List[Tuple[int, str]] = field(default_factory=list)  # log records of the job
    traceback: Optional[str] = None       # unexpected errors only


@dataclass
class Plan:
    jobs: List[Job]
    results: List[JobResult]              # settled while planning (skipped or failed)
    suffix: str

    @property
    def total_units(self) -> int:
        return sum(j.units for j in self.jobs)

    @property
    def has_video(self) -> bool:
        return any(j.kind == "video" for j in self.jobs)


@dataclass
class Summary:
    results: List[JobResult]
    elapsed: float = 0.0

    def count(self, status: str) -> int:
        return sum(r.status == status for r in self.results)

    @property
    def done(self) -> int:
        return self.count("done")

    @property
    def skipped(self) -> int:
        return self.count("skipped")

    @property
    def failed(self) -> int:
        return self.count("failed")

    def line(self) -> str:
        return f"{self.done} done, {self.skipped} skipped, {self.failed} failed"


# --------------------------------------------------------------------------------------------
# planning
# --------------------------------------------------------------------------------------------
def classify(path: PathLike) -> Optional[str]:
    """"image", "video" or None, from the file extension."""
    ext = Path(path).suffix.lower()
    if ext in IMAGE_EXTENSIONS:
        return "image"
    if ext in VIDEO_EXTENSIONS:
        return "video"
    return None


def _key(path: PathLike) -> str:
    return os.path.normcase(os.path.realpath(path))


def _inside(path: PathLike, folder: Optional[PathLike]) -> bool:
    if folder is None:
        return False
    p, f = _key(path), _key(folder)
    return p == f or p.startswith(f.rstrip(os.sep) + os.sep)


def _scan_folder(folder: Path, recursive: bool, errors: List[JobResult]) -> List[Path]:
    """Files of a folder (sorted; hidden files and folders excluded), sub-folders if recursive."""
    found: List[Path] = []

    def onerror(exc: OSError):
        errors.append(JobResult(Path(exc.filename or folder), "failed",
                                reason=f"cannot list folder ({exc.strerror or exc})"))

    if recursive:
        for root, dirs, files in os.walk(folder, onerror=onerror):
            dirs[:] = sorted(d for d in dirs if not d.startswith("."))
            found.extend(Path(root) / f for f in sorted(files) if not f.startswith("."))
    else:
        try:
            entries = sorted(folder.iterdir())
        except OSError as exc:
            onerror(exc)
            return []
        found = [p for p in entries if not p.name.startswith(".") and p.is_file()]
    return found


def output_name(src: Path, kind: str, suffix: str, ext: str) -> str:
    """``<stem><suffix>.<ext>``: .mp4 for videos; images keep their extension with ext="auto"."""
    if kind == "video":
        out_ext = ".mp4"
    elif ext == "auto":
        out_ext = src.suffix.lower()
    else:
        out_ext = WRITE_FORMATS[ext]
    return f"{src.stem}{suffix}{out_ext}"


def plan_batch(inputs: Sequence[PathLike], scale: int, options: BatchOptions) -> Plan:
    """Expand ``inputs`` into jobs; see the module doc."""
    suffix = options.suffix if options.suffix is not None else f"_x{scale}"
    if options.ext not in EXT_CHOICES:
        raise ValueError(f"ext must be one of {EXT_CHOICES}")
    out_dir = Path(options.output_dir)
    results: List[JobResult] = []
    entries: List[Tuple[Path, Path, str]] = []  # (src, sub-folder relative to the output dir, kind)
    seen = set()
    ignored_outputs = 0

    def add(src: Path, rel: Path, kind: str):
        k = _key(src)
        if k not in seen:
            seen.add(k)
            entries.append((src, rel, kind))

    for item in inputs:
        item = Path(item)
        if item.is_dir():
            for f in _scan_folder(item, options.recursive, results):
                kind = classify(f)
                if kind is None or _inside(f, options.frames_dir):
                    continue
                # earlier results living in the input folder (-o inside it) are not inputs
                if suffix and _inside(f, out_dir) and f.stem.endswith(suffix):
                    ignored_outputs += 1
                    continue
                rel = f.parent.relative_to(item) if options.recursive else Path()
                add(f, rel, kind)
        elif item.exists():
            kind = classify(item)
            if kind is None:
                results.append(JobResult(item, "failed", reason=(
                    f"unsupported file type {item.suffix or '(no extension)'!r} "
                    f"(images: {', '.join(sorted(IMAGE_EXTENSIONS))}; videos: {', '.join(sorted(VIDEO_EXTENSIONS))})")))
                continue
            add(item, Path(), kind)
        elif os.path.lexists(item):
            results.append(JobResult(item, "failed", reason="broken symbolic link"))
        else:
            results.append(JobResult(item, "failed", reason="no such file or directory"))
    if ignored_outputs:
        log.info("ignored %d file(s) in %s that look like earlier results (*%s)", ignored_outputs, out_dir, suffix)

    input_keys = {_key(src): src for src, _, _ in entries}
    claimed = {}
    jobs: List[Job] = []
    for src, rel, kind in entries:
        dst = out_dir / rel / output_name(src, kind, suffix, options.ext)
        dkey = _key(dst)
        if dkey in input_keys:
            other = input_keys[dkey]
            what = "is the input itself" if _key(other) == _key(src) else f"is the input file {other}"
            results.append(JobResult(src, "failed", dst=dst, kind=kind, reason=(
                f"output {dst} {what}; refusing to overwrite an input (use another --suffix or -o)")))
            continue
        if dkey in claimed:
            results.append(JobResult(src, "failed", dst=dst, kind=kind, reason=(
                f"output {dst} is also the output of {claimed[dkey]} (rename one of them or use --ext auto)")))
            continue
        claimed[dkey] = src
        if options.skip_existing and dst.exists():
            results.append(JobResult(src, "skipped", dst=dst, kind=kind, reason="output exists"))
            continue
        frames_dir = None
        if kind == "video" and options.frames_dir is not None:
            frames_dir = Path(options.frames_dir) / rel / dst.stem
        units = 1
        if kind == "video":
            try:
                units = max(1, probe_video(src).frame_count)
            except VideoError:
                units = 1  # the job reports the error
        jobs.append(Job(len(jobs), src, dst, kind, frames_dir, units))
    return Plan(jobs, results, suffix)


# --------------------------------------------------------------------------------------------
# one job
# --------------------------------------------------------------------------------------------
class _JobHandler(logging.Handler):
    """Keeps the library's log records of one job, and passes each on as it comes."""

    def __init__(self, emit: Optional[Callable[[int, str], None]] = None):
        super().__init__(logging.DEBUG)
        self.records: List[Tuple[int, str]] = []
        self.forward = emit

    def emit(self, record):
        try:
            message = record.getMessage()
        except Exception:  # a bad format string must not fail the job
            message = str(record.msg)
        self.records.append((record.levelno, message))
        if self.forward is not None:
            self.forward(record.levelno, message)


def _reason(exc: BaseException) -> str:
    if isinstance(exc, OSError) and not isinstance(exc, (ImageReadError, ImageWriteError)):
        where = f": {exc.filename}" if exc.filename else ""
        return f"{exc.strerror or exc}{where}"
    if isinstance(exc, cv2.error):
        lines = [ln for ln in str(exc).splitlines() if "error:" in ln]
        return "OpenCV: " + (lines[0].split("error:", 1)[1].strip() if lines else str(exc).strip())
    return str(exc) or type(exc).__name__


def _read_image(job: Job, engine, options: BatchOptions) -> np.ndarray:
    """Decode an input image, refusing before decoding what the header shows cannot be done
    (more than ``max_pixels``; more memory than the budget even as 8-bit gray)."""
    data = read_file(job.src, max_file_bytes(options.max_pixels))
    interrupts.check()
    size = image_size(data)
    if size is not None:
        check_pixels(size[0], size[1], options.max_pixels)
        plan_tiles(engine, size[1], size[0], channels=1, itemsize=1, tile=options.tile, tile_pad=options.tile_pad,
                   budget=options.memory_budget)
    return decode_image(data, max_pixels=options.max_pixels)


def _release_buffers(engine) -> None:
    """Drop the buffers the engine keeps for reuse: they fit the last file's size only."""
    pool = getattr(engine, "pool", None)
    clear = getattr(pool, "clear", None)
    if callable(clear):
        clear()


def process_job(engine, job: Job, options: BatchOptions, protect: Iterable[PathLike] = (),
                on_units: Optional[Callable[[int], None]] = None,
                on_message: Optional[Callable[[int, str], None]] = None) -> JobResult:
    """Upscale one file; never raises for a per-file problem (the result says what happened).

    Log records of the library emitted meanwhile are not propagated: each is passed to
    ``on_message(level, text)`` as it comes and kept in ``result.messages``, so the caller
    can report them with the file name, from any process.
    A pending interrupt (see :mod:`.interrupts`) raises :class:`.interrupts.Interrupted`
    at the next safe point, after the job's temporary files are removed; any error that
    happens while an interrupt is pending is taken for the interrupt."""
    t0 = time.perf_counter()
    res = JobResult(job.src, "failed", dst=job.dst, kind=job.kind, expected_units=job.units)
    pkg = logging.getLogger(PKG_LOGGER)
    # the job's records go to the caller only (who reports them with the file name)
    handler, saved_handlers, propagate = _JobHandler(on_message), pkg.handlers[:], pkg.propagate
    pkg.handlers = [handler]
    pkg.propagate = False
    advance = on_units or (lambda n: None)
    protect = list(protect)
    frames_done = [0]
    try:
        interrupts.check()
        if options.ensemble:
            engine = _Ensembled(engine)
        if job.kind == "image":
            img = _read_image(job, engine, options)
            out = upscale_image(engine, img, tile=options.tile, tile_pad=options.tile_pad,
                                memory_budget=options.memory_budget)
            del img
            interrupts.check()
            job.dst.parent.mkdir(parents=True, exist_ok=True)
            write_image(job.dst, out, fmt=format_for_path(job.dst), quality=options.quality, protect=protect)
            res.units = 1
            advance(1)
        else:
            job.dst.parent.mkdir(parents=True, exist_ok=True)

            def on_frame(n):
                frames_done[0] = n
                advance(1)

            video = upscale_video(engine, job.src, job.dst, tile=options.tile, tile_pad=options.tile_pad,
                                  memory_budget=options.memory_budget, frames_dir=job.frames_dir,
                                  copy_audio=options.copy_audio, ffmpeg=options.ffmpeg, protect=protect,
                                  max_pixels=options.max_pixels, keep_partial=options.keep_partial,
                                  on_frame=on_frame)
            res.units = video.frames
        res.status = "done"
    except BaseException as exc:
        interrupts.raise_if_interrupted(exc)
        if isinstance(exc, MemoryError):
            res.reason = "out of memory (try a smaller --tile, e.g. --tile 128, or fewer --workers)"
        elif isinstance(exc, EXPECTED_ERRORS):
            res.reason = _reason(exc)
        elif isinstance(exc, Exception):  # a bug or an engine failure: still only this file fails
            res.reason = f"unexpected error: {type(exc).__name__}: {exc}"
            res.traceback = traceback.format_exc()
        else:
            raise
    finally:
        if res.status != "done":
            res.units = frames_done[0]  # frames already counted as progress
        _release_buffers(engine)
        pkg.handlers = saved_handlers
        pkg.propagate = propagate
        res.messages = handler.records
        res.seconds = time.perf_counter() - t0
    return res


# --------------------------------------------------------------------------------------------
# engines, threads, workers
# --------------------------------------------------------------------------------------------
def load_engine(path: PathLike):
    """``Engine.load(path)`` from the bitwise runtime (raises its ModelFileError)."""
    from ..runtime import Engine
    return Engine.load(path)


def load_engine_bytes(raw: bytes, source: str):
    """The engine of a model file's contents ``raw``, checked as :func:`load_engine` checks a
    file (``source`` names it in errors): for workers that cannot read the file itself."""
    from ..runtime import Engine
    from ..runtime.format import decode_model
    return Engine(*decode_model(raw, source), source)


def set_threads(n: Optional[int]) -> None:
    """Use ``n`` threads in the numba kernels and in OpenCV (None: leave the defaults).

    Numba's setting is per thread: call this in the thread that runs the engine. More threads
    than the kernels' pool has are reduced to the pool size, with a warning."""
    if not n:
        return
    from .. import kernels
    n, limit = int(n), kernels.max_threads()
    if n > limit:
        log.warning("%d threads requested but only %d available: using %d", n, limit, limit)
        n = limit
    cv2.setNumThreads(n)
    kernels.set_num_threads(n)


def warm_up(engine) -> None:
    """Run the engine once on a tiny input so its JIT kernels are compiled (and cached)."""
    engine.run(np.zeros((16, 16, 3), np.float32))


#: reason of a job whose worker process died under it
WORKER_DIED = "the worker process died (out of memory? try --tile or fewer --workers)"


def worker_setup(loader: Callable[[], object], threads: Optional[int], level: int):
    """What a worker process does once before its jobs: the package's log level, OpenCV
    quiet, the thread count, and the engine from ``loader``. Returns ``(engine, error)``:
    a model that cannot be loaded is an error reported for each job (see
    :func:`run_worker_job`), not a broken worker."""
    logging.getLogger(PKG_LOGGER).setLevel(level)
    cv2.utils.logging.setLogLevel(cv2.utils.logging.LOG_LEVEL_SILENT)
    try:
        set_threads(threads)
        return loader(), None
    except Exception as exc:
        return None, f"cannot load the model in a worker: {type(exc).__name__}: {exc}"


def run_worker_job(engine, error: Optional[str], job: Job, options: BatchOptions, protect: Iterable[PathLike],
                   put: Callable[[tuple], None]) -> JobResult:
    """:func:`process_job` in a worker: progress and log records go to ``put`` as
    ``(job.index, "units", n)`` and ``(job.index, "log", (level, text))`` events, for a
    :class:`JobTracker` on the other side."""
    if error:
        return JobResult(job.src, "failed", dst=job.dst, kind=job.kind, reason=error)
    return process_job(engine, job, options, protect,
                       on_units=lambda n: put((job.index, "units", n)),
                       on_message=lambda level, text: put((job.index, "log", (level, text))))


def unexpected_result(job: Job, exc: BaseException) -> JobResult:
    """The result of a job whose worker raised ``exc`` instead of returning (a bug)."""
    return JobResult(job.src, "failed", dst=job.dst, kind=job.kind,
                     reason=f"unexpected error: {type(exc).__name__}: {exc}",
                     traceback="".join(traceback.format_exception(type(exc), exc, exc.__traceback__)))


class JobTracker:
    """Progress and log records of jobs that run elsewhere (worker processes, a cluster),
    passed on as they come and reconciled with each job's result when it arrives: events
    may still be in flight then, and late ones are dropped."""

    def __init__(self, jobs: Sequence[Job], progress: Callable[[int], None],
                 message: Callable[[Job, int, str], None]):
        self.jobs = {job.index: job for job in jobs}
        self.progress, self.message = progress, message
        self.done_units: dict = {}
        self.told: dict = {}
        self.settled: set = set()

    def event(self, index: int, kind: str, value) -> None:
        """An event of :func:`run_worker_job`."""
        if index in self.settled:  # late event of a job already accounted for
            return
        if kind == "log":
            self.told[index] = self.told.get(index, 0) + 1
            self.message(self.jobs[index], *value)
        else:
            self.done_units[index] = self.done_units.get(index, 0) + value
            self.progress(value)

    def settle(self, job: Job, res: JobResult) -> None:
        """The job is over: pass on what its events did not."""
        missing = res.units - self.done_units.get(job.index, 0) if res.status == "done" else 0
        self.settled.add(job.index)
        for level, text in res.messages[self.told.get(job.index, 0):]:
            self.message(job, level, text)
        if missing > 0:
            self.progress(missing)


_WORKER: dict = {}


def _worker_signal(signum, frame):
    """SIGTERM in a worker: an idle worker exits at once; a busy one stops at the job's next
    safe point, after cleaning up (see :func:`_worker_job`); one still loading its engine
    exits once loading is over (it has nothing to clean up yet). Raising while loading would
    raise inside Numba's ctypes callbacks (its object cache), which print the exception as a
    traceback and go on."""
    if _WORKER.get("loading"):
        _WORKER["stop"] = signum
    elif _WORKER.get("busy"):
        interrupts.record(signum, frame)
    else:
        raise SystemExit(128 + signum)


def _worker_init(loader, options, protect, threads, level, progress_queue):
    # Ctrl-C is handled by the parent, which stops the workers with SIGTERM: no stray
    # KeyboardInterrupt tracebacks from idle workers, and busy ones unwind and clean up.
    # The parent starts workers with both signals blocked, so none is lost before this.
    _WORKER.update(loading=True, stop=None, busy=False)
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, _worker_signal)
    signal.pthread_sigmask(signal.SIG_UNBLOCK, interrupts.SIGNALS)
    engine, error = worker_setup(loader, threads, level)
    _WORKER.update(options=options, protect=protect, queue=progress_queue, engine=engine, error=error, loading=False)
    if _WORKER["stop"] is not None:  # not SystemExit: the pool logs an initializer's exception with a traceback
        os._exit(128 + _WORKER["stop"])


def _worker_job(job: Job) -> JobResult:
    _WORKER["busy"] = True
    try:
        interrupts.check()
        return run_worker_job(_WORKER["engine"], _WORKER["error"], job, _WORKER["options"], _WORKER["protect"],
                              _WORKER["queue"].put)
    except KeyboardInterrupt:  # stopped by the parent: the job has cleaned up; nothing more to do
        os._exit(interrupts.EXIT_STATUS)
    finally:
        _WORKER["busy"] = False


# --------------------------------------------------------------------------------------------
# running a plan
# --------------------------------------------------------------------------------------------
def run_batch(plan: Plan, engine=None, *, options: BatchOptions,
              engine_loader: Optional[Callable[[], object]] = None, workers: int = 1,
              threads: Optional[int] = None, protect: Iterable[PathLike] = (),
              on_result: Optional[Callable[[JobResult], None]] = None,
              on_progress: Optional[Callable[[int], None]] = None,
              on_start: Optional[Callable[[Job], None]] = None,
              on_message: Optional[Callable[[Job, int, str], None]] = None,
              executor: Optional[Callable[..., None]] = None) -> Summary:
    """Run the jobs of ``plan`` and return the summary.

    ``engine``: an engine already loaded in this process (used when ``workers`` is 1 and
    warmed up before workers start). ``engine_loader``: a picklable callable returning an
    engine, required for ``workers`` > 1 or an ``executor`` (each worker calls it once).
    ``executor``: runs the jobs somewhere else than in local worker processes, called as
    ``executor(jobs, engine_loader, options, protect, workers, threads, report, tracker)``
    (``report(result)`` for each job, events to the :class:`JobTracker`); ``workers`` and
    ``threads`` (None: its defaults) and the default memory budget are then its own to
    settle (:mod:`.cluster` is one). ``protect``: files never
    to be written over (all inputs of the plan are always protected). ``on_result`` is called
    for every result (planning results first), ``on_progress(n)`` when n more images or
    frames are done, ``on_start(job)`` when a job starts (in-process runs only),
    ``on_message(job, level, text)`` for each log record of a job as it comes (they are
    also in the job's result).

    Stopping: when a signal is pending (see :mod:`.interrupts`, installed by the caller),
    :class:`.interrupts.Interrupted` is raised once the job in progress has cleaned up (with
    workers: once they have stopped, or were killed after a grace period); the temporary
    files of the unfinished jobs are removed, finished outputs are complete."""
    t0 = time.perf_counter()
    protect = [j.src for j in plan.jobs] + [r.src for r in plan.results] + list(protect)
    results: List[JobResult] = []

    def report(r: JobResult):
        results.append(r)
        if on_result is not None:
            on_result(r)

    for r in plan.results:
        report(r)
    jobs = plan.jobs
    progress = on_progress or (lambda n: None)
    message = on_message or (lambda job, level, text: None)
    if executor is not None:
        if engine_loader is None:
            raise ValueError("run_batch with an executor needs a picklable engine_loader")
        if jobs:
            if engine is not None:
                warm_up(engine)  # numba compiles (and caches) once here, for the workers on this machine
            executor(jobs, engine_loader, options, protect, workers, threads, report,
                     JobTracker(jobs, progress, message))
        return Summary(results, time.perf_counter() - t0)

    workers = max(1, min(int(workers), len(jobs)))
    if options.memory_budget is None:
        options = replace(options, memory_budget=default_memory_budget(workers))

    if workers == 1:
        if jobs and engine is None:
            if engine_loader is None:
                raise ValueError("run_batch needs an engine or an engine_loader")
            engine = engine_loader()
        set_threads(threads)
        for job in jobs:
            interrupts.check()
            if on_start is not None:
                on_start(job)
            try:
                report(process_job(engine, job, options, protect, progress,
                                   functools.partial(message, job)))
            except BaseException:  # interrupted: the job cleans up; this is the safety net
                remove_temp_files(job)
                raise
        return Summary(results, time.perf_counter() - t0)

    if engine_loader is None:
        raise ValueError("run_batch with workers > 1 needs a picklable engine_loader")
    if engine is not None:
        warm_up(engine)  # numba compiles (and caches) once here instead of in every worker
    if threads is None:
        threads = max(1, (os.cpu_count() or 1) // workers)
    _run_parallel(jobs, engine_loader, options, protect, workers, threads, report,
                  JobTracker(jobs, progress, message))
    return Summary(results, time.perf_counter() - t0)


def _stop_processes(processes, grace: float = 30.0) -> None:
    """SIGTERM (the workers stop at a safe point and clean up), then SIGKILL what is left after
    ``grace`` seconds, or at once when another signal arrives meanwhile."""
    for proc in processes:
        if proc.is_alive():
            proc.terminate()
    deadline = time.monotonic() + grace
    signals = interrupts.received()
    while any(proc.is_alive() for proc in processes):
        if time.monotonic() > deadline or interrupts.received() != signals:
            break
        time.sleep(0.05)
    for proc in processes:
        if proc.is_alive():
            proc.kill()
            proc.join(1.0)


def remove_temp_files(job: Job) -> None:
    """Remove the temporary files an interrupted job may have left (see ``ebsr_basicsr._files``)."""
    _files.remove_temp_files(job.dst.parent, job.dst.name)
    if job.frames_dir is not None:
        _files.remove_temp_files(job.frames_dir)


def _run_parallel(jobs, loader, options, protect, workers, threads, report, tracker: JobTracker):
    import multiprocessing as mp

    ctx = mp.get_context("spawn")
    progress_queue = ctx.Queue()
    level = logging.getLogger(PKG_LOGGER).getEffectiveLevel()

    def drain():
        while True:
            try:
                tracker.event(*progress_queue.get_nowait())
            except (queue_mod.Empty, EOFError, OSError):
                return

    executor = ProcessPoolExecutor(max_workers=workers, mp_context=ctx, initializer=_worker_init,
                                   initargs=(loader, options, protect, threads, level, progress_queue))
    futures = {}
    try:
        # workers start (on submit) with the signals blocked, until their handlers are set
        blocked = signal.pthread_sigmask(signal.SIG_BLOCK, interrupts.SIGNALS)
        try:
            futures = {executor.submit(_worker_job, job): job for job in jobs}
        finally:
            signal.pthread_sigmask(signal.SIG_SETMASK, blocked)
        pending = set(futures)
        while pending:
            interrupts.check()
            finished, pending = wait(pending, timeout=0.2, return_when=FIRST_COMPLETED)
            drain()
            for fut in finished:
                job = futures[fut]
                try:
                    res = fut.result()
                except BrokenProcessPool:
                    interrupts.check()
                    res = JobResult(job.src, "failed", dst=job.dst, kind=job.kind, reason=WORKER_DIED)
                except Exception as exc:
                    res = unexpected_result(job, exc)
                tracker.settle(job, res)  # progress and log messages may still be in flight
                report(res)
        drain()
    except BaseException:  # interrupted: stop the workers now rather than after their jobs
        processes = list((getattr(executor, "_processes", None) or {}).values())
        executor.shutdown(wait=False, cancel_futures=True)
        _stop_processes(processes)
        for fut, job in futures.items():
            if not fut.done() or fut.cancelled() or fut.exception() is not None:
                remove_temp_files(job)
        raise
    else:
        executor.shutdown(wait=True)
    finally:
        progress_queue.close()
