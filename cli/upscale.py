"""``ebsr-upscale``: upscale images, folders and videos with a binary super-resolution model.

A thin click layer over :mod:`ebsr_basicsr.upscale.batch`; no torch, no basicsr. The library
modules are imported inside :func:`main` so that ``--help`` stays instant.
"""
from __future__ import annotations

import functools
import logging
import os
import sys
from pathlib import Path

import click

EPILOG = """\b
Examples:
  ebsr-upscale photo.jpg                        # -> results/photo_x4.jpg
  ebsr-upscale a.png b.jpg clip.mp4 -o out/     # several files at once
  ebsr-upscale photos/ -r -o big/ --scale 2     # a folder and its sub-folders
  ebsr-upscale scans/ --ext png --skip-existing # resume an interrupted batch
  ebsr-upscale huge.tif --tile 256              # bounded memory for big images
  ebsr-upscale clip.mp4 --frames-dir frames/    # MP4 (+ PNG frames), same fps, audio
  ebsr-upscale scan.png --model bicubic          # the model for antialiased downscales
  ebsr-upscale photos/ --model my_x3.ebsr --workers 2 --threads 1
  ebsr-upscale scan.tif --max-pixels 0 --memory-limit 16G   # a very large image
  ebsr-upscale /shared/in -o /shared/out --ray auto   # on a Ray cluster

\b
Outputs are named OUTDIR/<name>_x<scale>.<ext>; with --ext auto an image keeps
its format (16-bit PNG/TIFF stay 16-bit, gray stays gray, alpha is kept), a
video becomes .mp4 (audio is copied when ffmpeg is on PATH). Inputs are never
modified; outputs are written atomically. A file that cannot be processed
(missing, corrupt, too large, a video that ends early) is reported on stderr
and the batch goes on. Ctrl-C or SIGTERM stops the run after cleaning up (no
partial files; --skip-existing resumes). Exit status: 0 if every file was done
or skipped, 1 if any failed, 2 for a usage error, 130 if interrupted.
"""


class _EchoHandler(logging.Handler):
    """Library log records to stderr, above the progress bar."""

    PREFIX = {logging.INFO: "note: ", logging.WARNING: "warning: ",
              logging.ERROR: "error: ", logging.CRITICAL: "error: "}

    def emit(self, record):
        try:
            _echo(self.PREFIX.get(record.levelno, "") + record.getMessage())
        except Exception:
            self.handleError(record)


def _echo(message: str, *, lines: bool = False) -> None:
    """One message on stderr, above the progress bar. Control characters (from file names)
    are escaped so that it stays one line; ``lines``: a multi-line text (a traceback),
    escaped line by line."""
    from ebsr_basicsr._files import printable
    text = "\n".join(printable(line) for line in message.split("\n")) if lines else printable(message)
    try:
        from tqdm import tqdm
        with tqdm.external_write_mode(file=sys.stderr):
            click.echo(text, err=True)
    except ImportError:
        click.echo(text, err=True)
    except OSError:  # stderr closed (a pipe whose reader went away): nothing to tell
        pass


class _Size(click.ParamType):
    """A count with an optional K/M/G/T suffix (powers of ``base``), at least ``minimum``."""

    name = "size"

    def __init__(self, base: int, minimum: int = 0):
        self.base, self.minimum = base, minimum

    def convert(self, value, param, ctx):
        if isinstance(value, int):
            return value
        text = str(value).strip().upper()
        text = text[:-1] if text.endswith("B") and len(text) > 1 else text
        power = {"K": 1, "M": 2, "G": 3, "T": 4}.get(text[-1:], 0)
        try:
            size = int(float(text[:-1] if power else text) * self.base ** power)
        except (ValueError, OverflowError):
            self.fail(f"{value!r} is not a size (examples: 50000000, 50M, 2G)", param, ctx)
        if size < self.minimum:
            self.fail(f"must be at least {self.minimum}", param, ctx)
        return size


def _setup_logging(quiet: bool, verbose: bool) -> int:
    level = logging.ERROR if quiet else (logging.DEBUG if verbose else logging.INFO)
    pkg = logging.getLogger("ebsr_basicsr")
    for h in list(pkg.handlers):
        if isinstance(h, _EchoHandler):
            pkg.removeHandler(h)
    pkg.addHandler(_EchoHandler())
    pkg.setLevel(level)
    pkg.propagate = False
    if not verbose:
        # FFmpeg inside OpenCV prints its own errors ("moov atom not found") for broken videos;
        # they are reported per file instead. Read when the first video is opened, and
        # inherited by worker processes.
        os.environ.setdefault("OPENCV_FFMPEG_LOGLEVEL", "-8")
    try:
        import cv2
        cv2.utils.logging.setLogLevel(cv2.utils.logging.LOG_LEVEL_WARNING if verbose
                                      else cv2.utils.logging.LOG_LEVEL_SILENT)
    except Exception:
        pass
    return level


def _load_model(model: Path, verbose: bool):
    """Load the engine or exit 1 with one line naming the file."""
    from ebsr_basicsr.upscale import batch
    try:
        return batch.load_engine(model)
    except ImportError as exc:
        _echo(f"error: the bitwise runtime (ebsr_basicsr.runtime) cannot be imported: {exc}")
    except MemoryError:
        _echo(f"error: {model}: out of memory while loading the model")
    except Exception as exc:
        name = type(exc).__name__
        reason = str(exc) if name == "ModelFileError" or isinstance(exc, (OSError, ValueError)) else f"{name}: {exc}"
        _echo(f"error: {model}: cannot load model: {reason}")
        if verbose:
            import traceback
            _echo(traceback.format_exc().rstrip(), lines=True)
    sys.exit(1)


def _fail_unexpected(exc: Exception, verbose: bool) -> None:
    """Report an error that is not about one input file (a bug): one line, exit 1."""
    _echo(f"error: {type(exc).__name__}: {exc}")
    if verbose:
        import traceback
        _echo(traceback.format_exc().rstrip(), lines=True)
    else:
        _echo("(run with --verbose for the traceback)")
    sys.exit(1)


@click.command(epilog=EPILOG, context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@click.argument("inputs", nargs=-1, required=True, metavar="INPUT...",
                type=click.Path(path_type=Path))
@click.option("-o", "--output", "outdir", default=Path("results"), show_default=True,
              type=click.Path(file_okay=False, path_type=Path), help="Output folder (created if needed).")
@click.option("-s", "--scale", type=click.Choice(["2", "3", "4"]), default="4", show_default=True,
              help="Upscaling factor; picks the embedded model for it. With --model, the model's scale "
                   "is used, and --scale (if given) must match it.")
@click.option("-m", "--model", metavar="NAME|FILE",
              help="Embedded model to use: 'robust' (the default; JPEGs, thumbnails, video frames) or "
                   "'bicubic' (images downscaled with antialiasing, the papers' protocol), or a runtime "
                   "model file (.ebsr).")
@click.option("--ensemble", is_flag=True,
              help="Geometric self-ensemble: average the model over the 8 flips and rotations of each "
                   "image (a little more quality, 8 times the time).")
@click.option("-t", "--tile", type=click.IntRange(min=0), default=0, show_default=True,
              help="Tile size in input pixels (0: whole image, tiled automatically when it would not "
                   "fit in memory). Lower it if you run out of memory.")
@click.option("--tile-pad", type=click.IntRange(min=0), default=10, show_default=True,
              help="Context pixels around each tile (at least how far the model looks, when known), so tiles "
                   "join without seams.")
@click.option("--max-pixels", type=_Size(1000), default="200M", show_default=True, metavar="N",
              help="Refuse input images (and video frames) of more pixels than this, checked from the "
                   "file's header before decoding (K/M/G: thousands, millions, billions; 0: no limit).")
@click.option("--memory-limit", type=_Size(1024, minimum=1), default=None, metavar="SIZE",
              help="Memory for one file (per worker), e.g. 2G or 500M: larger images are tiled, and "
                   "refused if even tiles cannot fit [default: half the available memory].")
@click.option("--suffix", default=None, metavar="TEXT",
              help="Appended to output names instead of _x<scale> (may be empty if -o differs from "
                   "the input folder).")
@click.option("--ext", type=click.Choice(["auto", "png", "jpg", "webp"]), default="auto", show_default=True,
              help="Output image format; auto keeps the input's format. Videos are always .mp4.")
@click.option("--jpeg-quality", type=click.IntRange(1, 100), default=95, show_default=True,
              help="Quality of JPEG (and WebP) output.")
@click.option("-r", "--recursive", is_flag=True,
              help="Also process the sub-folders of input folders (mirrored under the output folder).")
@click.option("--skip-existing", is_flag=True, help="Skip inputs whose output file already exists.")
@click.option("--frames-dir", type=click.Path(file_okay=False, path_type=Path),
              help="For videos, also keep the upscaled frames as PNG in FRAMES_DIR/<name>_x<scale>/.")
@click.option("--keep-partial", is_flag=True,
              help="For a video that ends before its announced frame count (truncated or damaged), keep "
                   "the frames upscaled as <name>_x<scale>.partial.mp4 (it still counts as failed).")
@click.option("-j", "--workers", type=click.IntRange(min=1), default=1, show_default=True,
              help="Worker processes (with --ray: workers on the cluster), each with its own copy of the "
                   "model.")
@click.option("--threads", type=click.IntRange(min=1), default=None,
              help="Threads per process for the kernels [default: all cores, shared among workers; "
                   "1 with --ray].")
@click.option("--ray", "ray_address", metavar="ADDRESS", default=None,
              help="Spread the files over the workers of a Ray cluster: 'local' (start Ray on this machine), "
                   "'auto' (the cluster this machine is part of), ray://HOST:PORT or HOST:PORT. Each worker "
                   "reserves --threads CPUs and loads the model once; --workers defaults to as many as the "
                   "cluster's CPUs hold. A video is done by one worker. Inputs and outputs (and --frames-dir) "
                   "must be paths every node reaches, e.g. on a shared filesystem; the model is sent to the "
                   "workers. Needs Ray: pip install \"ray[client]>=2.9\".")
@click.option("-q", "--quiet", is_flag=True, help="Only report errors (no progress bar, no summary unless "
                                                    "something failed).")
@click.option("-v", "--verbose", is_flag=True, help="Report every file, and tracebacks of unexpected errors.")
@click.option("--progress-interval", type=click.FloatRange(min=0), default=15, show_default=True, metavar="SECONDS",
              help="When stderr is not a terminal (a log file, a pipe), print a progress line this often "
                   "(0: never). On a terminal a progress bar is shown instead.")
@click.pass_context
def main(ctx, inputs, outdir, scale, model, ensemble, tile, tile_pad, max_pixels, memory_limit, suffix, ext,
         jpeg_quality, recursive, skip_existing, frames_dir, keep_partial, workers, threads, ray_address, quiet,
         verbose, progress_interval):
    """Upscale images (PNG, JPEG, BMP, TIFF, WebP), folders of them, and videos.

    Each INPUT is a file or a folder. Images keep their bit depth, gray/colour
    layout, transparency and EXIF orientation (the output is stored upright)."""
    if quiet and verbose:
        raise click.UsageError("--quiet and --verbose cannot be used together")
    if suffix is not None and any(sep in suffix for sep in ("/", "\\")):
        raise click.BadParameter("must not contain a path separator", param_hint="--suffix")
    if ray_address is not None:
        _check_ray(ray_address)
    level = _setup_logging(quiet, verbose)

    from ebsr_basicsr.upscale import interrupts
    with interrupts.handle_signals():
        try:
            status = _run(ctx, inputs, outdir, scale, model, level, quiet, verbose, progress_interval, workers,
                          threads, ray_address, options=dict(suffix=suffix, ext=ext, quality=jpeg_quality, tile=tile,
                                                tile_pad=tile_pad, recursive=recursive, skip_existing=skip_existing,
                                                frames_dir=frames_dir, max_pixels=max_pixels,
                                                memory_budget=memory_limit, keep_partial=keep_partial,
                                                ensemble=ensemble))
        except KeyboardInterrupt:
            _echo("interrupted")
            status = interrupts.EXIT_STATUS
    sys.exit(status)


def _check_ray(address: str) -> None:
    """A usage error (exit 2) unless ``address`` is a Ray address and Ray can be imported."""
    from ebsr_basicsr.upscale import cluster
    try:
        cluster.check_address(address)
    except ValueError as exc:
        raise click.BadParameter(str(exc), param_hint="--ray") from None
    try:
        cluster.import_ray()
    except cluster.RayUnavailable as exc:
        _echo(f"error: {exc}")
        sys.exit(2)


def _run_batch(ctx, plan, engine, model, workers, threads, ray_address, verbose, **kwargs):
    """``batch.run_batch`` in worker processes, or on the Ray cluster at ``ray_address``."""
    from ebsr_basicsr.upscale import batch
    if ray_address is None:
        loader = functools.partial(batch.load_engine, str(model))
        return batch.run_batch(plan, engine, engine_loader=loader, workers=workers, threads=threads, **kwargs)

    import contextlib
    from ebsr_basicsr.upscale import cluster
    # the workers get the model's bytes: its path need not be readable on every node
    loader = functools.partial(batch.load_engine_bytes, model.read_bytes(), str(model))
    if ctx.get_parameter_source("workers") in (click.core.ParameterSource.DEFAULT, None):
        workers = None  # as many as the cluster holds
    cpus = max(os.cpu_count() or 1, workers * (threads or 1)) if workers else None
    session = cluster.connect(ray_address, cpus=cpus, verbose=verbose) if plan.jobs else contextlib.nullcontext()
    with session:
        return batch.run_batch(plan, engine, engine_loader=loader, workers=workers, threads=threads,
                               executor=cluster.run_jobs, **kwargs)


def _run(ctx, inputs, outdir, scale, model, level, quiet, verbose, progress_interval, workers, threads,
         ray_address, options) -> int:
    from ebsr_basicsr.upscale import batch, interrupts
    from ebsr_basicsr.upscale.report import ProgressLog
    from ebsr_basicsr._files import printable
    from ebsr_basicsr.weights import DEFAULT_MODEL, MODELS, NoDefaultModel, resolve_model

    scale = int(scale)
    scale_given = ctx.get_parameter_source("scale") not in (click.core.ParameterSource.DEFAULT, None)
    try:
        model = resolve_model(DEFAULT_MODEL if model is None else model, scale)
    except NoDefaultModel as exc:
        raise click.UsageError(str(exc)) from None
    if not model.is_file():
        raise click.BadParameter(f"{printable(str(model))} is neither a model file nor an embedded model "
                                 f"({', '.join(MODELS)})", param_hint="--model")
    model = model.resolve()
    engine = _load_model(model, verbose)
    model_scale = int(engine.scale)
    if scale_given and model_scale != scale:
        raise click.UsageError(f"{model} is a x{model_scale} model but --scale {scale} was given "
                               f"(drop --scale to use the model's scale)")
    scale = model_scale
    if verbose:
        header = getattr(engine, "header", None)
        header = header if isinstance(header, dict) else {}
        arch = header.get("arch") or header.get("arch_name") or header.get("name") or "?"
        _echo(f"model: {model} (x{scale}, {arch})")

    try:
        outdir.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        _echo(f"error: cannot create the output folder {outdir}: {exc.strerror or exc}")
        return 1

    options = batch.BatchOptions(output_dir=outdir, **options)
    interrupts.check()
    try:
        plan = batch.plan_batch(inputs, scale, options)
    except KeyboardInterrupt:
        raise
    except Exception as exc:  # not a per-file problem
        _fail_unexpected(exc, verbose)
    if not plan.jobs and not plan.results:
        _echo("nothing to do: no image or video files found in the inputs")
        return 0

    from tqdm import tqdm
    unit = "frame" if plan.has_video else "img"
    bar = tqdm(total=plan.total_units, unit=unit, file=sys.stderr,
               disable=True if quiet else None, dynamic_ncols=True, leave=False)
    lines = ProgressLog(plan.total_units, "frames" if plan.has_video else "images",
                        progress_interval if bar.disable and not quiet else 0, _echo)

    unexpected = []

    def on_result(r):
        if r.status == "failed":
            _echo(f"error: {r.src}: {r.reason}")
            if r.traceback:
                if verbose:
                    _echo(r.traceback.rstrip(), lines=True)
                else:
                    unexpected.append(r.src)
        elif r.status == "skipped":
            if verbose:
                _echo(f"skipped {r.src}: {r.reason} ({r.dst})")
        elif verbose:
            what = f"{r.units} frames, " if r.kind == "video" else ""
            _echo(f"{r.src} -> {r.dst} ({what}{r.seconds:.1f} s)")
        if r.expected_units and r.units != r.expected_units:
            lines.total = max(lines.done, lines.total + r.units - r.expected_units)
            if not bar.disable:
                bar.total = max(bar.n, bar.total + r.units - r.expected_units)
                bar.refresh()

    def on_start(job):
        lines.current = job.src.name
        if not bar.disable:
            bar.set_postfix_str(job.src.name, refresh=True)

    def on_progress(n):
        bar.update(n)
        lines.update(n)

    def on_message(job, lvl, msg):
        if lvl >= level:
            _echo(_EchoHandler.PREFIX.get(lvl, "") + f"{job.src}: {msg}")

    try:
        summary = _run_batch(ctx, plan, engine, model, workers, threads, ray_address, verbose, options=options,
                             on_result=on_result, on_progress=on_progress, on_start=on_start, on_message=on_message)
    except KeyboardInterrupt:
        raise
    except Exception as exc:  # not a per-file problem
        from ebsr_basicsr.upscale.cluster import ClusterError
        bar.close()
        if isinstance(exc, ClusterError):  # the Ray cluster cannot be reached or used
            _echo(f"error: {exc}")
            return 1
        _fail_unexpected(exc, verbose)
    finally:
        bar.close()
    if unexpected:
        _echo("note: run with --verbose to see the tracebacks of the unexpected errors")
    if not quiet or summary.failed:
        _echo(f"{summary.line()} ({summary.elapsed:.1f} s)")
    return 1 if summary.failed else 0


if __name__ == "__main__":
    main()
