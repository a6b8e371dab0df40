"""Video helpers: read frames, write MP4 atomically, copy the audio track with ffmpeg.

Frames are read with ``cv2.VideoCapture`` and written with ``cv2.VideoWriter`` (MPEG-4,
fourcc ``mp4v``) at the source's frame rate, both through OpenCV's FFmpeg backend and given
absolute paths (so a file name is never taken for an FFmpeg protocol or an image-sequence
pattern). The video is written under a temporary name in the destination folder and renamed
when complete (:class:`ebsr_basicsr._files.AtomicFile`), so an interrupted run never leaves a
half-written file under the final name. When ``ffmpeg`` is on PATH the source's audio track
is copied into the result (re-encoded to AAC if the MP4 container cannot hold it as is); when
it is not, or the source has no audio, the silent video is kept and a note is logged.

A source is refused when it is not really a video (an image under a video extension, a
single frame of unknown count) and reported as failed when it ends before the frame count
its container announces (truncated or damaged): nothing is kept then, unless the caller asks
for the frames done as ``<name>.partial.mp4``.

ffmpeg is always called with a list of arguments, never through a shell.
"""
from __future__ import annotations

import logging
import math
import os
import re
import shutil
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterable, Iterator, List, Optional, Union

import cv2
import numpy as np

from .._files import AtomicFile
from .imageio import (DEFAULT_MAX_PIXELS, IMAGE_EXTENSIONS, ImageReadError, check_not_protected, check_pixels,
                      cv2_path, read_image, sniff_format, write_image)
from .interrupts import check as check_interrupt
from .interrupts import pending as interrupt_pending

log = logging.getLogger(__name__)

PathLike = Union[str, os.PathLike]

#: extensions treated as videos (lower case, with the dot)
VIDEO_EXTENSIONS = frozenset({".mp4", ".m4v", ".mov", ".mkv", ".avi", ".webm", ".mpg", ".mpeg",
                              ".wmv", ".flv", ".ts", ".mts", ".3gp"})
#: containers whose frame count is stored (elsewhere OpenCV estimates it from the duration)
_COUNTED = frozenset({".mp4", ".m4v", ".mov", ".avi", ".3gp"})
#: fps used when the source does not report a usable one
FALLBACK_FPS = 25.0
#: frame file names used by --frames-dir and the frame scripts (numbered from 1, as ffmpeg does)
FRAME_PATTERN = "{:06d}.png"
#: infix of the file that keeps the frames of a failed video (``keep_partial``)
PARTIAL = ".partial"
_IMAGE_NAMES = {"png": "PNG", "jpg": "JPEG", "webp": "WebP", "tif": "TIFF", "bmp": "BMP"}


class VideoError(Exception):
    """A video could not be opened, decoded or written (the message is the reason)."""


@dataclass
class VideoInfo:
    fps: float
    frame_count: int  # as reported by the container (0: unknown): an estimate for some formats
    width: int
    height: int
    codec: str = ""


@dataclass
class VideoResult:
    path: Path
    frames: int
    fps: float
    audio: str  # "copied", "re-encoded", "none in source", "not copied: <why>", "not requested"
    notes: List[str] = field(default_factory=list)


def _video_api() -> int:
    """OpenCV's FFmpeg backend when it has one (never the image-sequence reader), else any."""
    try:
        if cv2.videoio_registry.hasBackend(cv2.CAP_FFMPEG):
            return cv2.CAP_FFMPEG
    except (AttributeError, cv2.error):
        pass
    return cv2.CAP_ANY


def _opencv_name(path: PathLike) -> str:
    """The absolute path, as OpenCV can take it; VideoError if it cannot."""
    name = cv2_path(os.path.abspath(path))
    if name is None:
        raise VideoError("the file or folder name is not valid UTF-8, which OpenCV cannot open (rename it)")
    return name


def _open_capture(path: PathLike) -> "cv2.VideoCapture":
    if not os.path.isfile(path):
        raise VideoError("no such file" if not os.path.exists(path) else "not a file")
    if not os.access(path, os.R_OK):
        raise VideoError("permission denied")
    if os.path.getsize(path) == 0:
        raise VideoError("empty file")
    try:
        with open(path, "rb") as f:
            head = f.read(32)
    except OSError as exc:
        raise VideoError(f"cannot read file ({exc.strerror or exc})") from None
    image = sniff_format(head)
    if image is not None:
        raise VideoError(f"not a video: this is a {_IMAGE_NAMES[image]} image (give it an image extension)")
    cap = cv2.VideoCapture(_opencv_name(path), _video_api())
    if not cap.isOpened():
        cap.release()
        raise VideoError("cannot open video (not a video, a truncated or damaged file, or a format "
                         "OpenCV cannot read)")
    try:
        backend = cap.getBackendName()
    except cv2.error:
        backend = ""
    if backend in ("CV_IMAGES", "CV_MJPEG"):
        cap.release()
        raise VideoError("not a video (OpenCV reads it as a still image)")
    return cap


def _fps_of(cap) -> Optional[float]:
    fps = cap.get(cv2.CAP_PROP_FPS)
    if not fps or not math.isfinite(fps) or fps <= 0 or fps > 1000:
        return None
    return float(fps)


def _info_of(cap) -> VideoInfo:
    count = cap.get(cv2.CAP_PROP_FRAME_COUNT)
    fourcc = int(cap.get(cv2.CAP_PROP_FOURCC) or 0) & 0xFFFFFFFF
    codec = "".join(chr(c) if 32 <= c < 127 else "?" for c in fourcc.to_bytes(4, "little")).strip()
    return VideoInfo(fps=_fps_of(cap) or FALLBACK_FPS,
                     frame_count=int(count) if count and math.isfinite(count) and 0 < count < 1 << 40 else 0,
                     width=int(cap.get(cv2.CAP_PROP_FRAME_WIDTH)), height=int(cap.get(cv2.CAP_PROP_FRAME_HEIGHT)),
                     codec=codec)


def probe_video(path: PathLike) -> VideoInfo:
    """Frame rate, frame count, size and codec of a video; VideoError if it cannot be opened."""
    cap = _open_capture(path)
    try:
        return _info_of(cap)
    finally:
        cap.release()


def iter_frames(path: PathLike) -> Iterator[np.ndarray]:
    """Yield the frames of a video as uint8 BGR arrays."""
    cap = _open_capture(path)
    try:
        while True:
            ok, frame = cap.read()
            if not ok or frame is None:
                return
            yield frame
    finally:
        cap.release()


def check_complete(info: VideoInfo, frames: int, path: PathLike) -> Optional[str]:
    """Why a video that gave ``frames`` frames is incomplete, or None if it is not.

    Incomplete: fewer frames than the container announces (containers that only estimate the
    count from the duration, such as MKV or WebM, may be 1% short), or a single frame when the
    count is unknown (a still image, not a video)."""
    declared = info.frame_count
    if declared <= 0:
        if frames == 1:
            return "not a video (a single frame and no frame count: a still image?)"
        return None
    slack = 0 if Path(path).suffix.lower() in _COUNTED else max(1, declared // 100)
    if frames < declared - slack:
        return f"the video ends after {frames} of the {declared} frames it announces (truncated or damaged)"
    return None


def _to_bgr8(frame: np.ndarray) -> np.ndarray:
    if frame.dtype == np.uint16:
        frame = ((frame.astype(np.uint32) + 128) // 257).astype(np.uint8)
    if frame.ndim == 2 or frame.shape[2] == 1:
        frame = cv2.cvtColor(frame, cv2.COLOR_GRAY2BGR)
    elif frame.shape[2] == 4:
        frame = cv2.cvtColor(frame, cv2.COLOR_BGRA2BGR)
    return frame


def partial_path(dst: PathLike) -> Path:
    """Where the frames of a failed video are kept on request: ``<stem>.partial<ext>``."""
    dst = Path(dst)
    return dst.with_name(dst.stem + PARTIAL + dst.suffix)


class VideoSink:
    """Write frames to ``dst`` (MP4, mp4v) through a temporary file; :meth:`finish` renames it.

    The writer is created on the first frame (its size). All frames must have that size. Use
    as a context manager: leaving the block without :meth:`finish` (an error) deletes the
    temporary file and leaves any existing ``dst`` as it was."""

    def __init__(self, dst: PathLike, fps: float, *, protect: Iterable[PathLike] = ()):
        self.dst = Path(dst)
        self.fps = float(fps)
        self.protect = list(protect)
        self.frames = 0
        self.size = None
        self.notes: List[str] = []
        self._writer = None
        self._file: Optional[AtomicFile] = None
        check_not_protected(self.dst, self.protect)

    def __enter__(self):
        return self

    def __exit__(self, exc_type, exc, tb):
        self.abort()
        return False

    def write(self, frame: np.ndarray) -> None:
        frame = _to_bgr8(frame)
        h, w = frame.shape[:2]
        if (h | w) & 1:
            # the encoder silently drops an odd last row/column (4:2:0 chroma): do it here,
            # so the size is known and reported
            if self._writer is None:
                self.notes.append(f"MPEG-4 needs even dimensions: frames cropped from {w}x{h} "
                                  f"to {w & ~1}x{h & ~1}")
                log.warning("%s", self.notes[-1])
            frame = frame[:h & ~1, :w & ~1]
        size = (frame.shape[1], frame.shape[0])
        if size[0] == 0 or size[1] == 0:
            raise VideoError(f"frames of {w}x{h} are too small for a video")
        if self._writer is None:
            try:
                self._file = AtomicFile(self.dst)
            except OSError as exc:
                raise VideoError(f"cannot create a file in {self.dst.parent} ({exc.strerror or exc})") from None
            writer = cv2.VideoWriter(_opencv_name(self._file.path), _video_api(), cv2.VideoWriter_fourcc(*"mp4v"),
                                     self.fps, size)
            if not writer.isOpened():
                writer.release()
                raise VideoError(f"cannot create an MP4 writer for {size[0]}x{size[1]} at {self.fps:g} fps")
            self._writer, self.size = writer, size
        elif size != self.size:
            raise VideoError(f"frame {self.frames + 1} is {size[0]}x{size[1]}, "
                             f"the video is {self.size[0]}x{self.size[1]}")
        self._writer.write(np.ascontiguousarray(frame))
        self.frames += 1

    def finish(self, *, audio_from: Optional[PathLike] = None, ffmpeg: Optional[str] = "auto",
               dst: Optional[PathLike] = None) -> VideoResult:
        """Close the video, copy audio from ``audio_from`` if given, move it to ``dst``
        (default: the sink's own).

        ``ffmpeg``: path of the ffmpeg executable, "auto" to look it up on PATH, None to skip."""
        if self._writer is None or self.frames == 0:
            raise VideoError("no frames to write")
        self._writer.release()
        self._writer = None
        if self._file.path.stat().st_size == 0:
            raise VideoError("the video writer produced no data")
        target = self.dst if dst is None else Path(dst)
        notes: List[str] = list(self.notes)
        audio = "not requested"
        if audio_from is not None:
            exe = shutil.which("ffmpeg") if ffmpeg == "auto" else ffmpeg
            audio, muxed = _copy_audio(self._file.path, Path(audio_from), self.dst, exe)
            if muxed is not None:
                self._file.discard()
                self._file = muxed
            if audio.startswith("not copied"):
                what = "audio (if any)" if "not found" in audio else "audio"
                notes.append(f"{what} {audio}; the video is silent")
                log.warning("%s", notes[-1])
            elif audio == "none in source":
                log.info("the source has no audio track")
        check_interrupt()  # the last safe point before the result appears
        check_not_protected(target, self.protect)
        try:
            self._file.commit(target)
        except OSError as exc:
            raise VideoError(f"cannot write {target} ({exc.strerror or exc})") from None
        self._file = None
        return VideoResult(target, self.frames, self.fps, audio, notes)

    def abort(self) -> None:
        if self._writer is not None:
            self._writer.release()
            self._writer = None
        if self._file is not None:
            self._file.discard()
            self._file = None


# --------------------------------------------------------------------------------------------
# audio
# --------------------------------------------------------------------------------------------
_AUDIO_STREAM = re.compile(r"^\s*Stream #\S+.*?: Audio:", re.MULTILINE)


def _run_ffmpeg(args: List[str], timeout: float) -> "subprocess.CompletedProcess":
    """Run ffmpeg (stdout discarded, stderr kept), stopping it when an interrupt is pending
    (then :class:`.interrupts.Interrupted` is raised) or after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    with subprocess.Popen(args, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                          stderr=subprocess.PIPE) as proc:
        chunks = []
        while True:
            try:
                _, err = proc.communicate(timeout=0.2)
                chunks.append(err or b"")
                break
            except subprocess.TimeoutExpired:
                if interrupt_pending() is not None or time.monotonic() > deadline:
                    proc.kill()
                    proc.communicate()
                    check_interrupt()
                    raise subprocess.TimeoutExpired(args, timeout) from None
        return subprocess.CompletedProcess(args, proc.returncode, None, b"".join(chunks))


def has_audio(path: PathLike, ffmpeg: str) -> bool:
    """Whether ffmpeg sees an audio stream in ``path``."""
    proc = _run_ffmpeg([ffmpeg, "-hide_banner", "-nostdin", "-i", os.path.abspath(path)], timeout=60)
    return bool(_AUDIO_STREAM.search(proc.stderr.decode("utf-8", "replace")))


def _last_line(stderr: bytes) -> str:
    lines = [ln.strip() for ln in stderr.decode("utf-8", "replace").splitlines() if ln.strip()]
    return lines[-1] if lines else "no message"


def _copy_audio(video: Path, source: Path, dst: Path, ffmpeg: Optional[str]):
    """Mux the audio of ``source`` with ``video``; return (status, AtomicFile of the result or None)."""
    if not ffmpeg:
        return "not copied: ffmpeg not found on PATH", None
    try:
        if not has_audio(source, ffmpeg):
            return "none in source", None
    except (OSError, subprocess.SubprocessError) as exc:
        return f"not copied: cannot run ffmpeg ({exc})", None
    try:
        out = AtomicFile(dst)
    except OSError as exc:
        return f"not copied: cannot create a file in {dst.parent} ({exc.strerror or exc})", None
    base = [ffmpeg, "-hide_banner", "-nostdin", "-loglevel", "error", "-y",
            "-i", os.path.abspath(video), "-i", os.path.abspath(source),
            "-map", "0:v:0", "-map", "1:a", "-c:v", "copy"]
    reason = "unknown error"
    try:
        for status, audio_args in (("copied", ["-c:a", "copy"]), ("re-encoded", ["-c:a", "aac", "-b:a", "192k"])):
            try:
                proc = _run_ffmpeg(base + audio_args + ["-f", "mp4", os.path.abspath(out.path)], timeout=3600)
            except (OSError, subprocess.SubprocessError) as exc:
                reason = str(exc)
                break
            if proc.returncode == 0 and out.path.stat().st_size > 0:
                return status, out
            reason = _last_line(proc.stderr)
    except BaseException:
        out.discard()
        raise
    out.discard()
    return f"not copied: ffmpeg failed ({reason})", None


# --------------------------------------------------------------------------------------------
# whole-video operations
# --------------------------------------------------------------------------------------------
def upscale_video(engine, src: PathLike, dst: PathLike, *, tile: int = 0, tile_pad: int = 10,
                  memory_budget: Optional[int] = None, frames_dir: Optional[PathLike] = None,
                  copy_audio: bool = True, ffmpeg: Optional[str] = "auto",
                  protect: Iterable[PathLike] = (), max_pixels: Optional[int] = DEFAULT_MAX_PIXELS,
                  keep_partial: bool = False,
                  on_frame: Optional[Callable[[int], None]] = None) -> VideoResult:
    """Upscale every frame of ``src`` with ``engine`` and write an MP4 at ``dst``.

    Same fps and frame count as the source; audio copied when possible (see module doc).
    ``frames_dir``: also keep the upscaled frames there as PNG (``000001.png``, ...).
    ``max_pixels``: refuse frames larger than this (0/None: no limit).
    ``on_frame(n)`` is called after each frame with the number of frames done.

    Raises VideoError if the source cannot be opened, is not a video, or ends before the
    frame count it announces (see :func:`check_complete`); nothing is left at ``dst`` and the
    frames written to ``frames_dir`` are removed then, except that with ``keep_partial`` the
    frames done are kept, the video as :func:`partial_path` (``dst`` itself is never a
    partial video). On an interrupt nothing is kept."""
    from .upscaler import plan_tiles, upscale_image

    src, dst = Path(src), Path(dst)
    protect = list(protect) + [src]
    cap = _open_capture(src)
    written: List[Path] = []
    created_dir = None
    try:
        info = _info_of(cap)
        check_pixels(info.width, info.height, max_pixels)
        fps = _fps_of(cap)
        if fps is None:
            log.warning("%s reports no frame rate: writing at %g fps", src.name, FALLBACK_FPS)
            fps = FALLBACK_FPS
        if frames_dir is not None:
            frames_dir = Path(frames_dir)
            if not frames_dir.exists():
                created_dir = frames_dir
            frames_dir.mkdir(parents=True, exist_ok=True)
        with VideoSink(dst, fps, protect=protect) as sink:
            while True:
                check_interrupt()
                ok, frame = cap.read()
                if not ok or frame is None:
                    break
                check_pixels(frame.shape[1], frame.shape[0], max_pixels)
                if sink.frames == 0 and not tile:  # the tiles of the first frame serve for all
                    tile = plan_tiles(engine, frame.shape[0], frame.shape[1],
                                      channels=frame.shape[2] if frame.ndim == 3 else 1,
                                      itemsize=frame.itemsize, tile_pad=tile_pad, budget=memory_budget)
                    if tile:
                        log.info("%dx%d frames: automatic tiles of %d px, to stay within the memory budget",
                                 frame.shape[1], frame.shape[0], tile)
                big = upscale_image(engine, frame, tile=tile, tile_pad=tile_pad, memory_budget=memory_budget)
                sink.write(big)
                if frames_dir is not None:
                    path = frames_dir / FRAME_PATTERN.format(sink.frames)
                    write_image(path, big, protect=protect)
                    written.append(path)
                if on_frame is not None:
                    on_frame(sink.frames)
            cap.release()
            if sink.frames == 0:
                raise VideoError("no decodable frames")
            problem = check_complete(info, sink.frames, src)
            if problem is None:
                return sink.finish(audio_from=src if copy_audio else None, ffmpeg=ffmpeg)
            if not keep_partial or sink.frames == 1 and info.frame_count <= 0:
                raise VideoError(f"{problem}; nothing kept ({sink.frames} frames were upscaled; "
                                 f"--keep-partial keeps them)")
            kept = sink.finish(dst=partial_path(dst))
            written.clear()
            raise VideoError(f"{problem}; the {sink.frames} frames upscaled are kept in {kept.path.name}")
    except BaseException:
        for path in written:
            try:
                path.unlink()
            except OSError:
                pass
        if created_dir is not None:
            try:
                created_dir.rmdir()
            except OSError:
                pass
        raise
    finally:
        cap.release()


def extract_frames(video: PathLike, outdir: PathLike, *,
                   on_frame: Optional[Callable[[int], None]] = None) -> VideoInfo:
    """Save every frame of ``video`` as ``outdir/000001.png``, ...; return the video's info
    with the number of frames actually written."""
    info = probe_video(video)
    outdir = Path(outdir)
    outdir.mkdir(parents=True, exist_ok=True)
    count = 0
    for count, frame in enumerate(iter_frames(video), 1):
        write_image(outdir / FRAME_PATTERN.format(count), frame, protect=[video])
        if on_frame is not None:
            on_frame(count)
    if count == 0:
        raise VideoError("no decodable frames")
    info.frame_count = count
    return info


def _natural_key(path: Path):
    return [int(part) if part.isdigit() else part.lower() for part in re.split(r"(\d+)", path.name)]


def list_frames(folder: PathLike) -> List[Path]:
    """The image files of a folder in natural order (``2.png`` before ``10.png``)."""
    folder = Path(folder)
    files = [p for p in folder.iterdir()
             if p.is_file() and p.suffix.lower() in IMAGE_EXTENSIONS and not p.name.startswith(".")]
    return sorted(files, key=_natural_key)


def assemble_frames(frames_dir: PathLike, dst: PathLike, fps: float, *,
                    audio_from: Optional[PathLike] = None, ffmpeg: Optional[str] = "auto",
                    on_frame: Optional[Callable[[int], None]] = None) -> VideoResult:
    """Write the images of ``frames_dir`` (natural order) as an MP4 video at ``fps``,
    optionally with the audio track of ``audio_from``."""
    frames = list_frames(frames_dir)
    if not frames:
        raise VideoError(f"no image files in {frames_dir}")
    with VideoSink(dst, fps, protect=frames + ([audio_from] if audio_from else [])) as sink:
        for path in frames:
            try:
                sink.write(read_image(path))
            except ImageReadError as exc:
                raise VideoError(f"{path.name}: {exc}") from None
            except VideoError as exc:
                raise VideoError(f"{path.name}: {exc}") from None
            if on_frame is not None:
                on_frame(sink.frames)
        return sink.finish(audio_from=audio_from, ffmpeg=ffmpeg)
