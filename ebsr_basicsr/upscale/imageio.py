"""Image files in and out, with the care a batch tool needs.

Reading (:func:`read_image`):

* the file is read as bytes and decoded with ``cv2.imdecode``, so any path Python can open
  works (unicode, long paths) and the bytes are checked before OpenCV sees them;
* the image keeps its depth (8 or 16 bit), its channels (gray, BGR, BGRA);
* the EXIF orientation is applied (JPEG, PNG, TIFF, WebP). OpenCV's behaviour here differs by
  format and version (``IMREAD_UNCHANGED`` ignores the tag for JPEG/PNG/WebP but the TIFF
  decoder applies it itself), so the tag is reset to 1 in a private copy of the bytes before
  decoding and the orientation is then applied here, the same way for every format;
* empty, truncated, corrupt and non-image files raise :class:`ImageReadError` with a short
  reason that can be shown to a user.

Writing (:func:`write_image`) encodes in memory, writes a temporary file next to the
destination and renames it over the destination (``os.replace``): a reader never sees a
half-written file and an existing file is left intact when anything fails. It refuses to
replace a file listed in ``protect`` (the inputs of a batch).
"""
from __future__ import annotations

import logging
import os
import struct
import tempfile
import zlib
from pathlib import Path
from typing import Iterable, Optional, Tuple, Union

import cv2
import numpy as np

from .._files import file_mode

log = logging.getLogger(__name__)

PathLike = Union[str, os.PathLike]

#: extensions read as images (lower case, with the dot)
IMAGE_EXTENSIONS = frozenset({".png", ".jpg", ".jpeg", ".jpe", ".bmp", ".tif", ".tiff", ".webp"})
#: output formats and the extension used for each
WRITE_FORMATS = {"png": ".png", "jpg": ".jpg", "webp": ".webp", "tif": ".tif", "bmp": ".bmp"}

_EXT_FORMAT = {
    ".png": "png", ".jpg": "jpg", ".jpeg": "jpg", ".jpe": "jpg", ".bmp": "bmp",
    ".tif": "tif", ".tiff": "tif", ".webp": "webp",
}
_FORMAT_NAMES = {"png": "PNG", "jpg": "JPEG", "webp": "WebP", "tif": "TIFF", "bmp": "BMP"}
_ORIENTATION_TAG = 0x0112


class ImageReadError(Exception):
    """An image file could not be read or decoded (the message is the reason)."""


class ImageWriteError(Exception):
    """An image could not be encoded or written (the message is the reason)."""


# --------------------------------------------------------------------------------------------
# format sniffing and structural checks
# --------------------------------------------------------------------------------------------
def sniff_format(data: bytes) -> Optional[str]:
    """The format of encoded image bytes from their magic number: png/jpg/webp/tif/bmp or None."""
    if data[:8] == b"\x89PNG\r\n\x1a\n":
        return "png"
    if data[:3] == b"\xff\xd8\xff":
        return "jpg"
    if data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        return "webp"
    if data[:4] in (b"II*\x00", b"MM\x00*"):
        return "tif"
    if data[:2] == b"BM":
        return "bmp"
    return None


def _png_chunks(data: bytes):
    """Yield (type, data_start, length) for each PNG chunk; raise ImageReadError if truncated."""
    pos, n = 8, len(data)
    while True:
        if pos + 8 > n:
            raise ImageReadError("truncated PNG (the file ends before the IEND chunk)")
        length, ctype = struct.unpack(">I4s", data[pos:pos + 8])
        if pos + 12 + length > n:
            raise ImageReadError(f"truncated PNG (the file ends inside a {ctype.decode('latin-1')!r} chunk)")
        yield ctype, pos + 8, length
        if ctype == b"IEND":
            return
        pos += 12 + length


def _jpeg_segments(data: bytes):
    """Yield (marker, data_start, length) of the JPEG header segments up to the first SOS.

    Raises ImageReadError when the header is cut short or the image has no end marker after
    its scan data (a truncated download: OpenCV 4 decodes those to a half-gray picture)."""
    pos, n = 2, len(data)
    while True:
        # skip fill bytes between segments
        while pos < n and data[pos] == 0xFF and pos + 1 < n and data[pos + 1] == 0xFF:
            pos += 1
        if pos + 2 > n:
            raise ImageReadError("truncated JPEG (the file ends inside its header)")
        if data[pos] != 0xFF:
            raise ImageReadError("corrupt JPEG (bad segment marker)")
        marker = data[pos + 1]
        if marker in (0x01,) or 0xD0 <= marker <= 0xD8:
            pos += 2
            continue
        if marker == 0xD9:
            raise ImageReadError("corrupt JPEG (end marker before any image data)")
        if pos + 4 > n:
            raise ImageReadError("truncated JPEG (the file ends inside its header)")
        (length,) = struct.unpack(">H", data[pos + 2:pos + 4])
        if length < 2 or pos + 2 + length > n:
            raise ImageReadError("truncated JPEG (the file ends inside its header)")
        yield marker, pos + 4, length - 2
        if marker == 0xDA:  # start of scan: entropy-coded data follows
            # inside scan data 0xFF is always followed by 0x00 or a restart marker, so an
            # EOI marker after the first SOS can only be the real end of the image
            if data.find(b"\xff\xd9", pos + 2 + length) < 0:
                raise ImageReadError("truncated JPEG (no end-of-image marker)")
            return
        pos += 2 + length


def _riff_chunks(data: bytes):
    """Yield (fourcc, data_start, length) of the chunks of a RIFF/WebP file."""
    pos, n = 12, len(data)
    while pos + 8 <= n:
        fourcc, length = struct.unpack("<4sI", data[pos:pos + 8])
        yield fourcc, pos + 8, min(length, n - pos - 8)
        pos += 8 + length + (length & 1)


# --------------------------------------------------------------------------------------------
# EXIF orientation
# --------------------------------------------------------------------------------------------
def _tiff_orientation_offset(data: bytes, base: int) -> Optional[Tuple[int, str]]:
    """Offset of the orientation value in the IFD0 of a TIFF structure starting at ``base``
    (a TIFF file, or the payload of an EXIF block) and its byte order; None if absent."""
    head = data[base:base + 8]
    if len(head) < 8:
        return None
    if head[:4] == b"II*\x00":
        end = "<"
    elif head[:4] == b"MM\x00*":
        end = ">"
    else:
        return None
    (ifd,) = struct.unpack(end + "I", head[4:8])
    pos = base + ifd
    if pos + 2 > len(data):
        return None
    (count,) = struct.unpack(end + "H", data[pos:pos + 2])
    for i in range(count):
        entry = pos + 2 + 12 * i
        if entry + 12 > len(data):
            return None
        tag, typ = struct.unpack(end + "HH", data[entry:entry + 4])
        if tag == _ORIENTATION_TAG:
            if typ != 3:  # SHORT
                return None
            return entry + 8, end
    return None


def _orientation_location(data: bytes, fmt: Optional[str]):
    """(value offset, byte order, png chunk or None) of the orientation tag, or None."""
    if fmt == "jpg":
        for marker, start, length in _jpeg_segments(data):
            if marker == 0xE1 and data[start:start + 6] == b"Exif\x00\x00":
                found = _tiff_orientation_offset(data[:start + length], start + 6)
                if found:
                    return found + (None,)
        return None
    if fmt == "tif":
        found = _tiff_orientation_offset(data, 0)
        return found + (None,) if found else None
    if fmt == "png":
        for ctype, start, length in _png_chunks(data):
            if ctype == b"eXIf":
                found = _tiff_orientation_offset(data[:start + length], start)
                return found + ((start, length),) if found else None
        return None
    if fmt == "webp":
        for fourcc, start, length in _riff_chunks(data):
            if fourcc == b"EXIF":
                base = start + 6 if data[start:start + 6] == b"Exif\x00\x00" else start
                found = _tiff_orientation_offset(data[:start + length], base)
                return found + (None,) if found else None
        return None
    return None


def exif_orientation(data: bytes) -> int:
    """The EXIF orientation (1..8) stored in encoded image bytes; 1 when absent or invalid."""
    try:
        loc = _orientation_location(data, sniff_format(data))
    except ImageReadError:
        return 1
    if not loc:
        return 1
    offset, end, _ = loc
    (value,) = struct.unpack(end + "H", data[offset:offset + 2])
    return value if 1 <= value <= 8 else 1


def _reset_orientation(data: bytes, fmt: Optional[str]) -> Tuple[bytes, int]:
    """Return (bytes with the orientation tag set to 1, the original orientation)."""
    loc = _orientation_location(data, fmt)
    if not loc:
        return data, 1
    offset, end, png_chunk = loc
    (value,) = struct.unpack(end + "H", data[offset:offset + 2])
    if not 1 <= value <= 8:
        value = 1
    if value == 1:
        return data, 1
    patched = bytearray(data)
    patched[offset:offset + 2] = struct.pack(end + "H", 1)
    if png_chunk:  # keep the chunk's CRC valid
        start, length = png_chunk
        crc = zlib.crc32(bytes(patched[start - 4:start + length])) & 0xFFFFFFFF
        patched[start + length:start + length + 4] = struct.pack(">I", crc)
    return bytes(patched), value


def apply_orientation(img: np.ndarray, orientation: int) -> np.ndarray:
    """Turn an image stored with EXIF ``orientation`` (1..8) the right way up."""
    if orientation == 2:
        out = img[:, ::-1]
    elif orientation == 3:
        out = img[::-1, ::-1]
    elif orientation == 4:
        out = img[::-1]
    elif orientation == 5:
        out = img.swapaxes(0, 1)
    elif orientation == 6:
        out = img.swapaxes(0, 1)[:, ::-1]
    elif orientation == 7:
        out = img.swapaxes(0, 1)[::-1, ::-1]
    elif orientation == 8:
        out = img.swapaxes(0, 1)[::-1]
    else:
        return img
    return np.ascontiguousarray(out)


# --------------------------------------------------------------------------------------------
# reading
# --------------------------------------------------------------------------------------------
def decode_image(data: bytes, *, apply_exif: bool = True) -> np.ndarray:
    """Decode encoded image bytes, see :func:`read_image`."""
    if not data:
        raise ImageReadError("empty file")
    fmt = sniff_format(data)
    orientation = 1
    if fmt in ("png", "jpg", "webp", "tif"):
        if fmt == "png":
            for _ in _png_chunks(data):  # raises on truncation
                pass
        elif fmt == "jpg":
            for _ in _jpeg_segments(data):
                pass
        data, orientation = _reset_orientation(data, fmt)
    try:
        img = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_UNCHANGED)
    except cv2.error as exc:  # OpenCV raises for a few malformed headers
        raise ImageReadError(f"cannot decode image ({_short_cv_error(exc)})") from None
    if img is None:
        if fmt is None:
            raise ImageReadError("not an image file (unrecognised content)")
        raise ImageReadError(f"corrupt or unsupported {_FORMAT_NAMES[fmt]} data (cannot decode)")
    if img.size == 0:
        raise ImageReadError("image has no pixels")
    if apply_exif and orientation != 1:
        img = apply_orientation(img, orientation)
    return img


def read_image(path: PathLike, *, apply_exif: bool = True) -> np.ndarray:
    """Read an image file as stored: uint8 or uint16, (H, W) gray, (H, W, 3) BGR or (H, W, 4) BGRA.

    The EXIF orientation is applied unless ``apply_exif`` is false. Raises ImageReadError
    with a one-line reason for unreadable, empty, truncated, corrupt and non-image files."""
    try:
        with open(path, "rb") as f:
            data = f.read()
    except IsADirectoryError:
        raise ImageReadError("is a directory") from None
    except OSError as exc:
        raise ImageReadError(f"cannot read file ({exc.strerror or exc})") from None
    return decode_image(data, apply_exif=apply_exif)


def _short_cv_error(exc: Exception) -> str:
    text = str(exc).strip().splitlines()
    for line in text:
        if "error:" in line:
            return line.split("error:", 1)[1].strip()
    return text[-1] if text else type(exc).__name__


# --------------------------------------------------------------------------------------------
# writing
# --------------------------------------------------------------------------------------------
def format_for_path(path: PathLike) -> str:
    """The output format (png/jpg/webp/tif/bmp) for a file name; ImageWriteError if unknown."""
    ext = Path(path).suffix.lower()
    try:
        return _EXT_FORMAT[ext]
    except KeyError:
        raise ImageWriteError(f"cannot write images with extension {ext or '(none)'!r}") from None


def _to_8bit(img: np.ndarray) -> np.ndarray:
    if img.dtype == np.uint16:
        return ((img.astype(np.uint32) + 128) // 257).astype(np.uint8)
    return img


def encode_image(img: np.ndarray, fmt: str, *, quality: int = 95) -> bytes:
    """Encode an image for ``fmt`` (png/jpg/webp/tif/bmp), adapting what the format cannot hold:
    16 bit becomes 8 bit for jpg/webp/bmp, alpha is dropped for jpg (with a warning)."""
    if img.dtype not in (np.uint8, np.uint16):
        raise ImageWriteError(f"cannot write {img.dtype} pixels")
    channels = 1 if img.ndim == 2 else img.shape[2]
    params = []
    if fmt in ("jpg", "webp", "bmp") and img.dtype == np.uint16:
        log.info("%s cannot store 16-bit pixels: writing 8 bit", _FORMAT_NAMES[fmt])
        img = _to_8bit(img)
    if fmt == "jpg":
        if channels == 4:
            log.warning("JPEG has no alpha channel: transparency dropped (use --ext png to keep it)")
            img = img[..., :3]
        params = [cv2.IMWRITE_JPEG_QUALITY, int(quality)]
    elif fmt == "webp":
        params = [cv2.IMWRITE_WEBP_QUALITY, int(quality)]
    elif fmt not in ("png", "tif", "bmp"):
        raise ImageWriteError(f"unknown output format {fmt!r}")
    try:
        ok, buf = cv2.imencode("." + fmt, np.ascontiguousarray(img), params)
    except cv2.error as exc:
        raise ImageWriteError(f"cannot encode {fmt.upper()} ({_short_cv_error(exc)})") from None
    if not ok:
        raise ImageWriteError(f"cannot encode {fmt.upper()}")
    return buf.tobytes()


def same_file(a: PathLike, b: PathLike) -> bool:
    """Whether two paths name the same existing file (hard links and symlinks included)."""
    try:
        return os.path.samefile(a, b)
    except OSError:
        return False


def check_not_protected(dst: PathLike, protect: Iterable[PathLike] = ()) -> None:
    """Raise ImageWriteError if ``dst`` is (the same file as) one of ``protect``."""
    dst = Path(dst)
    if not os.path.lexists(dst):
        return
    for p in protect:
        if same_file(dst, p) or Path(os.path.abspath(dst)) == Path(os.path.abspath(p)):
            raise ImageWriteError(f"refusing to overwrite the input file {p}")


def atomic_write_bytes(dst: PathLike, data: bytes, *, protect: Iterable[PathLike] = ()) -> None:
    """Write ``data`` to ``dst`` through a temporary file in the same folder and a rename."""
    dst = Path(dst)
    check_not_protected(dst, protect)
    folder = dst.parent
    try:
        fd, tmp = tempfile.mkstemp(prefix=f".{dst.name}.", suffix=".tmp", dir=folder)
    except OSError as exc:
        raise ImageWriteError(f"cannot create a file in {folder} ({exc.strerror or exc})") from None
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, file_mode())
        os.replace(tmp, dst)
    except BaseException as exc:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        if isinstance(exc, OSError):
            raise ImageWriteError(f"cannot write {dst} ({exc.strerror or exc})") from None
        raise


def write_image(path: PathLike, img: np.ndarray, *, fmt: Optional[str] = None, quality: int = 95,
                protect: Iterable[PathLike] = ()) -> Path:
    """Encode ``img`` (as returned by :func:`read_image`) and write it atomically to ``path``.

    ``fmt`` defaults to the format of the path's extension; ``quality`` is used by JPEG and
    WebP. Raises ImageWriteError, leaving any existing file at ``path`` untouched, and refuses
    to replace any file in ``protect``."""
    path = Path(path)
    data = encode_image(img, fmt or format_for_path(path), quality=quality)
    atomic_write_bytes(path, data, protect=protect)
    return path
