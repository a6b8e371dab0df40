"""Video helpers: read frames, write MP4 atomically, copy the audio track with ffmpeg.

Frames are read with ``cv2.VideoCapture`` and written with ``cv2.VideoWriter`` (MPEG-4,
fourcc ``mp4v``) at the source's frame rate. The video is written under a temporary name in
the destination folder and renamed when complete, so an interrupted run never leaves a
half-written file under the final name. When ``ffmpeg`` is on PATH the source's audio track
is copied into the result (re-encoded to AAC if the MP4 container cannot hold it as is); when
it is not, or the source has no audio, the silent video is kept and a note is logged.

ffmpeg is always called with a list of arguments, never through a shell.
"""
from __future__ import annotations

import logging
import math
import os
import re
import shutil
import subprocess
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterable, Iterator, List, Optional, Union

import cv2
import numpy as np

from .._files import file_mode
from .imageio import IMAGE_EXTENSIONS, ImageReadError, check_not_protected, read_image, write_image

log = logging.getLogger(__name__)

PathLike = Union[str, os.PathLike]

#: extensions treated as videos (lower case, with the dot)
VIDEO_EXTENSIONS = frozenset({".mp4", ".m4v", ".mov", ".mkv", ".avi", ".webm", ".mpg", ".mpeg",
                              ".wmv", ".flv", ".ts", ".mts", ".3gp"})
#: fps used when the source does not report a usable one
FALLBACK_FPS = 25.0
#: frame file names used by --frames-dir and the frame scripts (numbered from 1, as ffmpeg does)
FRAME_PATTERN = "{:06d}.png"


class VideoError(Exception):
    """A video could not be opened, decoded or written (the message is the reason)."""


@dataclass
class VideoInfo:
    fps: float
    frame_count: int  # as reported by the container: an estimate for some formats
    width: int
    height: int


@dataclass
class VideoResult:
    path: Path
    frames: int
    fps: float
    audio: str  # "copied", "re-encoded", "none in source", "not copied: <why>", "not requested"
    notes: List[str] = field(default_factory=list)


def _open_capture(path: PathLike) -> "cv2.VideoCapture":
    if not os.path.isfile(path):
        raise VideoError("no such file" if not os.path.exists(path) else "not a file")
    if not os.access(path, os.R_OK):
        raise VideoError("permission denied")
    if os.path.getsize(path) == 0:
        raise VideoError("empty file")
    cap = cv2.VideoCapture(os.fspath(path))
    if not cap.isOpened():
        cap.release()
        raise VideoError("cannot open video (not a video, or a format OpenCV cannot read)")
    return cap


def _fps_of(cap) -> Optional[float]:
    fps = cap.get(cv2.CAP_PROP_FPS)
    if not fps or not math.isfinite(fps) or fps <= 0 or fps > 1000:
        return None
    return float(fps)


def probe_video(path: PathLike) -> VideoInfo:
    """Frame rate, frame count and size of a video; VideoError if it cannot be opened."""
    cap = _open_capture(path)
    try:
        count = cap.get(cv2.CAP_PROP_FRAME_COUNT)
        return VideoInfo(fps=_fps_of(cap) or FALLBACK_FPS,
                         frame_count=int(count) if count and math.isfinite(count) and count > 0 else 0,
                         width=int(cap.get(cv2.CAP_PROP_FRAME_WIDTH)),
                         height=int(cap.get(cv2.CAP_PROP_FRAME_HEIGHT)))
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


def _to_bgr8(frame: np.ndarray) -> np.ndarray:
    if frame.dtype == np.uint16:
        frame = ((frame.astype(np.uint32) + 128) // 257).astype(np.uint8)
    if frame.ndim == 2 or frame.shape[2] == 1:
        frame = cv2.cvtColor(frame, cv2.COLOR_GRAY2BGR)
    elif frame.shape[2] == 4:
        frame = cv2.cvtColor(frame, cv2.COLOR_BGRA2BGR)
    return frame


def _temp_path(dst: Path, tag: str) -> Path:
    fd, tmp = tempfile.mkstemp(prefix=f".{dst.stem}.", suffix=f".{tag}{dst.suffix}", dir=dst.parent)
    os.close(fd)
    return Path(tmp)


def _unlink(path: Optional[Path]) -> None:
    if path is not None:
        try:
            os.unlink(path)
        except OSError:
            pass


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
        self._tmp: Optional[Path] = None
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
            self._tmp = _temp_path(self.dst, "part")
            writer = cv2.VideoWriter(os.fspath(self._tmp), cv2.VideoWriter_fourcc(*"mp4v"), self.fps, size)
            if not writer.isOpened():
                writer.release()
                raise VideoError(f"cannot create an MP4 writer for {size[0]}x{size[1]} at {self.fps:g} fps")
            self._writer, self.size = writer, size
        elif size != self.size:
            raise VideoError(f"frame {self.frames + 1} is {size[0]}x{size[1]}, "
                             f"the video is {self.size[0]}x{self.size[1]}")
        self._writer.write(np.ascontiguousarray(frame))
        self.frames += 1

    def finish(self, *, audio_from: Optional[PathLike] = None, ffmpeg: Optional[str] = "auto") -> VideoResult:
        """Close the video, copy audio from ``audio_from`` if given, move it to ``dst``.

        ``ffmpeg``: path of the ffmpeg executable, "auto" to look it up on PATH, None to skip."""
        if self._writer is None or self.frames == 0:
            raise VideoError("no frames to write")
        self._writer.release()
        self._writer = None
        if not self._tmp.exists() or self._tmp.stat().st_size == 0:
            raise VideoError("the video writer produced no data")
        notes: List[str] = list(self.notes)
        audio = "not requested"
        final = self._tmp
        if audio_from is not None:
            exe = shutil.which("ffmpeg") if ffmpeg == "auto" else ffmpeg
            audio, muxed = _copy_audio(self._tmp, Path(audio_from), self.dst, exe)
            if muxed is not None:
                _unlink(self._tmp)
                self._tmp = final = muxed
            if audio.startswith("not copied"):
                what = "audio (if any)" if "not found" in audio else "audio"
                notes.append(f"{what} {audio}; the video is silent")
                log.warning("%s", notes[-1])
            elif audio == "none in source":
                log.info("the source has no audio track")
        check_not_protected(self.dst, self.protect)
        try:
            os.chmod(final, file_mode())
            os.replace(final, self.dst)
        except OSError as exc:
            raise VideoError(f"cannot write {self.dst} ({exc.strerror or exc})") from None
        self._tmp = None
        return VideoResult(self.dst, self.frames, self.fps, audio, notes)

    def abort(self) -> None:
        if self._writer is not None:
            self._writer.release()
            self._writer = None
        _unlink(self._tmp)
        self._tmp = None


# --------------------------------------------------------------------------------------------
# audio
# --------------------------------------------------------------------------------------------
_AUDIO_STREAM = re.compile(r"^\s*Stream #\S+.*?: Audio:", re.MULTILINE)


def has_audio(path: PathLike, ffmpeg: str) -> bool:
    """Whether ffmpeg sees an audio stream in ``path``."""
    proc = subprocess.run([ffmpeg, "-hide_banner", "-nostdin", "-i", os.fspath(path)],
                          stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                          timeout=60)
    return bool(_AUDIO_STREAM.search(proc.stderr.decode("utf-8", "replace")))


def _last_line(stderr: bytes) -> str:
    lines = [ln.strip() for ln in stderr.decode("utf-8", "replace").splitlines() if ln.strip()]
    return lines[-1] if lines else "no message"


def _copy_audio(video: Path, source: Path, dst: Path, ffmpeg: Optional[str]):
    """Mux the audio of ``source`` with ``video``; return (status, muxed temp path or None)."""
    if not ffmpeg:
        return "not copied: ffmpeg not found on PATH", None
    try:
        if not has_audio(source, ffmpeg):
            return "none in source", None
    except (OSError, subprocess.SubprocessError) as exc:
        return f"not copied: cannot run ffmpeg ({exc})", None
    out = _temp_path(dst, "mux")
    base = [ffmpeg, "-hide_banner", "-nostdin", "-loglevel", "error", "-y",
            "-i", os.fspath(video), "-i", os.fspath(source),
            "-map", "0:v:0", "-map", "1:a", "-c:v", "copy"]
    reason = "unknown error"
    for status, audio_args in (("copied", ["-c:a", "copy"]), ("re-encoded", ["-c:a", "aac", "-b:a", "192k"])):
        try:
            proc = subprocess.run(base + audio_args + ["-f", "mp4", os.fspath(out)],
                                  stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                  stderr=subprocess.PIPE, timeout=3600)
        except (OSError, subprocess.SubprocessError) as exc:
            reason = str(exc)
            break
        if proc.returncode == 0 and out.exists() and out.stat().st_size > 0:
            return status, out
        reason = _last_line(proc.stderr)
    _unlink(out)
    return f"not copied: ffmpeg failed ({reason})", None


# --------------------------------------------------------------------------------------------
# whole-video operations
# --------------------------------------------------------------------------------------------
def upscale_video(engine, src: PathLike, dst: PathLike, *, tile: int = 0, tile_pad: int = 10,
                  memory_budget: Optional[int] = None, frames_dir: Optional[PathLike] = None,
                  copy_audio: bool = True, ffmpeg: Optional[str] = "auto",
                  protect: Iterable[PathLike] = (),
                  on_frame: Optional[Callable[[int], None]] = None) -> VideoResult:
    """Upscale every frame of ``src`` with ``engine`` and write an MP4 at ``dst``.

    Same fps and frame count as the source; audio copied when possible (see module doc).
    ``frames_dir``: also keep the upscaled frames there as PNG (``000001.png``, ...).
    ``on_frame(n)`` is called after each frame with the number of frames done.
    Raises VideoError if the source cannot be opened or has no decodable frame."""
    from .upscaler import upscale_image

    src, dst = Path(src), Path(dst)
    protect = list(protect) + [src]
    info = probe_video(src)
    cap = _open_capture(src)
    fps = _fps_of(cap)
    if fps is None:
        log.warning("%s reports no frame rate: writing at %g fps", src.name, FALLBACK_FPS)
        fps = FALLBACK_FPS
    if frames_dir is not None:
        frames_dir = Path(frames_dir)
        frames_dir.mkdir(parents=True, exist_ok=True)
    try:
        with VideoSink(dst, fps, protect=protect) as sink:
            while True:
                ok, frame = cap.read()
                if not ok or frame is None:
                    break
                big = upscale_image(engine, frame, tile=tile, tile_pad=tile_pad, memory_budget=memory_budget)
                sink.write(big)
                if frames_dir is not None:
                    write_image(frames_dir / FRAME_PATTERN.format(sink.frames), big, protect=protect)
                if on_frame is not None:
                    on_frame(sink.frames)
            if sink.frames == 0:
                raise VideoError("no decodable frames")
            cap.release()
            result = sink.finish(audio_from=src if copy_audio else None, ffmpeg=ffmpeg)
    finally:
        cap.release()
    if info.frame_count and result.frames < info.frame_count:
        note = f"decoded {result.frames} of the {info.frame_count} frames the file announces"
        result.notes.append(note)
        log.warning("%s", note)
    return result


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
