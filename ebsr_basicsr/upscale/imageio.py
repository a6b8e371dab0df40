"""Image files in and out, with the care a batch tool needs.

Reading (:func:`read_image`):

* the file is read as bytes and decoded with ``cv2.imdecode``, so any path Python can open
  works (unicode, long paths) and the bytes are checked before OpenCV sees them;
* the image keeps its depth (8 or 16 bit), its channels (gray, BGR, BGRA);
* the EXIF orientation is applied (JPEG, PNG, TIFF, WebP). OpenCV's behaviour here differs by
  format and version (``IMREAD_UNCHANGED`` ignores the tag for JPEG/PNG/WebP but the TIFF
  decoder applies it itself), so the tag is reset to 1 in a private copy of the bytes before
  decoding and the orientation is then applied here, the same way for every format;
* the size is read from the header (:func:`image_size`) before anything is decoded, so an
  image of more than ``max_pixels`` pixels (a "decompression bomb": a small file that
  decodes to gigabytes) is refused without allocating it; content that is none of the five
  formats is refused without handing it to OpenCV;
* empty, truncated, corrupt and non-image files raise :class:`ImageReadError` with a short
  reason that can be shown to a user.

Writing (:func:`write_image`) encodes straight into a temporary file next to the destination
(no encoded copy of the image in memory) and renames it over the destination
(:class:`ebsr_basicsr._files.AtomicFile`): a reader never sees a half-written file and an
existing file is left intact when anything fails. It refuses to replace a file listed in
``protect`` (the inputs of a batch).
"""
from __future__ import annotations

import logging
import os
import struct
import zlib
from pathlib import Path
from typing import Iterable, Optional, Tuple, Union

import cv2
import numpy as np

from .._files import AtomicFile

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
_WIDTH_TAG, _HEIGHT_TAG = 0x0100, 0x0101
#: default limit on the pixels of one input image (``max_pixels``)
DEFAULT_MAX_PIXELS = 200_000_000
#: rows converted at a time when 16-bit pixels are written as 8 bit (bounds the temporaries)
_ROWS_PER_CHUNK = 256


class ImageReadError(Exception):
    """An image file could not be read or decoded (the message is the reason)."""


class ImageTooLargeError(ImageReadError):
    """An image has more pixels than the limit it is read with."""


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
    if data[:4] in (b"II*\x00", b"MM\x00*", b"II+\x00", b"MM\x00+"):  # TIFF, BigTIFF
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
# size from the header
# --------------------------------------------------------------------------------------------
_JPEG_SOF = frozenset(range(0xC0, 0xD0)) - {0xC4, 0xC8, 0xCC}  # start-of-frame markers


def _tiff_size(data: bytes) -> Optional[Tuple[int, int]]:
    """Width and height of the first image of a TIFF or BigTIFF file, from its first IFD."""
    end = "<" if data[:2] == b"II" else ">"
    big = data[2:4] in (b"+\x00", b"\x00+")
    try:
        if big:
            (ifd,) = struct.unpack(end + "Q", data[8:16])
            (count,) = struct.unpack(end + "Q", data[ifd:ifd + 8])
            first, size, value_at = ifd + 8, 20, 12
        else:
            (ifd,) = struct.unpack(end + "I", data[4:8])
            (count,) = struct.unpack(end + "H", data[ifd:ifd + 2])
            first, size, value_at = ifd + 2, 12, 8
        found = {}
        for i in range(min(count, 4096)):
            entry = first + size * i
            tag, typ = struct.unpack(end + "HH", data[entry:entry + 4])
            if tag in (_WIDTH_TAG, _HEIGHT_TAG):
                code = {3: "H", 4: "I", 16: "Q"}.get(typ)
                if code is None:
                    return None
                n = struct.calcsize(code)
                (found[tag],) = struct.unpack(end + code, data[entry + value_at:entry + value_at + n])
                if len(found) == 2:
                    return found[_WIDTH_TAG], found[_HEIGHT_TAG]
    except struct.error:  # cut short: the decoder reports it
        return None
    return None


def image_size(data: bytes) -> Optional[Tuple[int, int]]:
    """``(width, height)`` of encoded PNG/JPEG/WebP/TIFF/BMP bytes read from the header alone
    (before decoding, which is what makes a pixel limit protect memory); None if the header
    does not say or cannot be read. Raises ImageReadError for a truncated JPEG header."""
    fmt = sniff_format(data)
    try:
        if fmt == "png":
            if data[12:16] == b"IHDR":
                return struct.unpack(">II", data[16:24])
        elif fmt == "jpg":
            for marker, start, length in _jpeg_segments(data):
                if marker in _JPEG_SOF and length >= 5:
                    height, width = struct.unpack(">HH", data[start + 1:start + 5])
                    return (width, height) if height else None  # 0: given after the scan (DNL)
        elif fmt == "webp":
            for fourcc, start, length in _riff_chunks(data):
                chunk = data[start:start + length]
                if fourcc == b"VP8X" and len(chunk) >= 10:
                    w = int.from_bytes(chunk[4:7], "little") + 1
                    return w, int.from_bytes(chunk[7:10], "little") + 1
                if fourcc == b"VP8 " and len(chunk) >= 10 and chunk[3:6] == b"\x9d\x01\x2a":
                    w, h = struct.unpack("<HH", chunk[6:10])
                    return w & 0x3FFF, h & 0x3FFF
                if fourcc == b"VP8L" and len(chunk) >= 5 and chunk[0] == 0x2F:
                    (bits,) = struct.unpack("<I", chunk[1:5])
                    return (bits & 0x3FFF) + 1, ((bits >> 14) & 0x3FFF) + 1
            return None
        elif fmt == "tif":
            return _tiff_size(data)
        elif fmt == "bmp":
            (header,) = struct.unpack("<I", data[14:18])
            if header == 12:  # OS/2 BITMAPCOREHEADER
                return struct.unpack("<HH", data[18:22])
            w, h = struct.unpack("<ii", data[18:26])
            return abs(w), abs(h)
    except struct.error:
        return None
    return None


def check_pixels(width: int, height: int, max_pixels: Optional[int]) -> None:
    """Raise ImageTooLargeError if a ``width`` x ``height`` image exceeds ``max_pixels`` (0/None: no limit)."""
    if max_pixels and width * height > max_pixels:
        raise ImageTooLargeError(
            f"image is {width}x{height} ({width * height / 1e6:.0f} megapixels), more than the limit of "
            f"{max_pixels / 1e6:g} megapixels (--max-pixels; 0 for no limit)")


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
def decode_image(data: bytes, *, apply_exif: bool = True,
                 max_pixels: Optional[int] = DEFAULT_MAX_PIXELS) -> np.ndarray:
    """Decode encoded image bytes, see :func:`read_image`."""
    if not data:
        raise ImageReadError("empty file")
    fmt = sniff_format(data)
    if fmt is None:
        raise ImageReadError("not an image file (unrecognised content)")
    if fmt == "png":
        for _ in _png_chunks(data):  # raises on truncation
            pass
    elif fmt == "jpg":
        for _ in _jpeg_segments(data):
            pass
    size = image_size(data)
    if size is not None:
        check_pixels(size[0], size[1], max_pixels)
    data, orientation = _reset_orientation(data, fmt)
    try:
        img = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_UNCHANGED)
    except cv2.error as exc:  # OpenCV raises for a few malformed headers, and above its own limit
        raise ImageReadError(f"cannot decode image ({_short_cv_error(exc)})") from None
    if img is None:
        raise ImageReadError(f"corrupt or unsupported {_FORMAT_NAMES[fmt]} data (cannot decode)")
    if img.size == 0:
        raise ImageReadError("image has no pixels")
    check_pixels(img.shape[1], img.shape[0], max_pixels)  # headers that did not say
    if apply_exif and orientation != 1:
        img = apply_orientation(img, orientation)
    return img


def max_file_bytes(max_pixels: Optional[int]) -> Optional[int]:
    """The largest file an image of at most ``max_pixels`` pixels can plausibly be (16-bit
    RGBA stored uncompressed, plus 64 MB of metadata); None without a pixel limit."""
    return max_pixels * 8 + (64 << 20) if max_pixels else None


def read_file(path: PathLike, max_bytes: Optional[int] = None) -> bytes:
    """The bytes of a file (at most ``max_bytes``: a larger file, or an endless device or
    pipe, is refused); ImageReadError with a one-line reason if it cannot be read."""
    try:
        with open(path, "rb") as f:
            data = f.read() if max_bytes is None else f.read(max_bytes + 1)
    except IsADirectoryError:
        raise ImageReadError("is a directory") from None
    except OSError as exc:
        raise ImageReadError(f"cannot read file ({exc.strerror or exc})") from None
    if max_bytes is not None and len(data) > max_bytes:
        raise ImageTooLargeError(f"file is larger than {max_bytes / 1e6:.0f} MB, more than any image within "
                                 f"the pixel limit (--max-pixels) can be")
    return data


def read_image(path: PathLike, *, apply_exif: bool = True,
               max_pixels: Optional[int] = DEFAULT_MAX_PIXELS) -> np.ndarray:
    """Read an image file as stored: uint8 or uint16, (H, W) gray, (H, W, 3) BGR or (H, W, 4) BGRA.

    The EXIF orientation is applied unless ``apply_exif`` is false. Raises ImageReadError
    with a one-line reason for unreadable, empty, truncated, corrupt and non-image files, and
    ImageTooLargeError for an image of more than ``max_pixels`` pixels (0 or None: no limit),
    found from the header before decoding whenever the header says."""
    data = read_file(path, max_file_bytes(max_pixels))
    return decode_image(data, apply_exif=apply_exif, max_pixels=max_pixels)


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
    """16-bit pixels to 8 bit (rounded), a band of rows at a time: no 32-bit copy of the image."""
    if img.dtype != np.uint16:
        return img
    out = np.empty(img.shape, np.uint8)
    for y in range(0, img.shape[0], _ROWS_PER_CHUNK):
        band = img[y:y + _ROWS_PER_CHUNK].astype(np.uint32)
        band += 128
        band //= 257
        out[y:y + _ROWS_PER_CHUNK] = band
    return out


def _prepare(img: np.ndarray, fmt: str, quality: int):
    """The pixels and OpenCV parameters to write ``img`` as ``fmt``: 16 bit becomes 8 bit for
    jpg/webp/bmp, alpha is dropped for jpg (with a warning)."""
    if not isinstance(img, np.ndarray) or img.dtype not in (np.uint8, np.uint16):
        raise ImageWriteError(f"cannot write {getattr(img, 'dtype', type(img).__name__)} pixels")
    if fmt not in _FORMAT_NAMES:
        raise ImageWriteError(f"unknown output format {fmt!r}")
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
    return np.ascontiguousarray(img), params


def encode_image(img: np.ndarray, fmt: str, *, quality: int = 95) -> bytes:
    """Encode an image for ``fmt`` (png/jpg/webp/tif/bmp) in memory, adapting what the format
    cannot hold: 16 bit becomes 8 bit for jpg/webp/bmp, alpha is dropped for jpg (with a warning)."""
    return _encode(*_prepare(img, fmt, quality), fmt).tobytes()


def _encode(img: np.ndarray, params: list, fmt: str) -> np.ndarray:
    try:
        ok, buf = cv2.imencode("." + fmt, img, params)
    except cv2.error as exc:
        raise ImageWriteError(f"cannot encode {fmt.upper()} ({_short_cv_error(exc)})") from None
    if not ok:
        raise ImageWriteError(f"cannot encode {fmt.upper()}")
    return buf


def cv2_path(path: PathLike) -> Optional[str]:
    """``path`` as a string OpenCV can take, or None: OpenCV's Python binding crashes the
    process on a name that is not valid UTF-8 (bytes that Python keeps as surrogates)."""
    name = os.fspath(path)
    try:
        name.encode("utf-8")
    except UnicodeEncodeError:
        return None
    return name


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


def write_image(path: PathLike, img: np.ndarray, *, fmt: Optional[str] = None, quality: int = 95,
                protect: Iterable[PathLike] = ()) -> Path:
    """Encode ``img`` (as returned by :func:`read_image`) and write it atomically to ``path``.

    ``fmt`` defaults to the format of the path's extension; ``quality`` is used by JPEG and
    WebP. The encoder writes straight into the temporary file (no encoded copy in memory).
    Raises ImageWriteError, leaving any existing file at ``path`` untouched, and refuses to
    replace any file in ``protect``."""
    path = Path(path)
    fmt = fmt or format_for_path(path)
    img, params = _prepare(img, fmt, quality)
    check_not_protected(path, protect)
    try:
        with AtomicFile(path, suffix=WRITE_FORMATS[fmt]) as tmp:
            name = cv2_path(tmp.path)
            if name is None:  # encode in memory, write with Python
                data = _encode(img, params, fmt)
                with open(tmp.path, "wb") as f:
                    f.write(memoryview(data))
            else:
                try:
                    ok = cv2.imwrite(name, img, params)
                except cv2.error as exc:
                    raise ImageWriteError(f"cannot write {path} ({_short_cv_error(exc)})") from None
                if not ok:
                    raise ImageWriteError(f"cannot write {path} (the {_FORMAT_NAMES[fmt]} encoder failed; "
                                          f"is the disk full?)")
    except OSError as exc:
        raise ImageWriteError(f"cannot write {path} ({exc.strerror or exc})") from None
    return path
