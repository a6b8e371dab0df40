"""Helpers shared by several test modules (imported as ``helpers``; not a test module)."""
import struct
from pathlib import Path

import numpy as np


def photo(h=40, w=48, name="chelsea"):
    """A small real photo (BGR uint8): a crop of one of scikit-image's sample images."""
    from skimage import data
    img = getattr(data, name)()[..., ::-1]
    y, x = img.shape[0] // 3, img.shape[1] // 3
    return np.ascontiguousarray(img[y:y + h, x:x + w, :3])


def exif_block(orientation, endian="<"):
    """A minimal EXIF payload (TIFF header + IFD0 with only the orientation tag)."""
    e = endian
    head = (b"II*\x00" if e == "<" else b"MM\x00*") + struct.pack(e + "I", 8)
    ifd = struct.pack(e + "H", 1) + struct.pack(e + "HHI", 0x0112, 3, 1) + struct.pack(e + "HH", orientation, 0) \
        + struct.pack(e + "I", 0)
    return head + ifd


def jpeg_with_orientation(jpeg: bytes, orientation: int, endian="<") -> bytes:
    """Insert an APP1 Exif segment after the JFIF APP0 segment of a JPEG."""
    payload = b"Exif\x00\x00" + exif_block(orientation, endian)
    app1 = b"\xff\xe1" + struct.pack(">H", len(payload) + 2) + payload
    pos = 2
    if jpeg[2:4] == b"\xff\xe0":
        pos = 4 + struct.unpack(">H", jpeg[4:6])[0]
    return jpeg[:pos] + app1 + jpeg[pos:]


def export_tiny_model(path: Path, network_opt: dict, seed: int = 0) -> Path:
    """``network_opt``'s network with freshly initialised weights (seeded), exported to a
    runtime model file at ``path``. Its pictures mean nothing: for exercising files,
    commands and the loader. Needs torch (the caller skips without it)."""
    import torch

    from ebsr_basicsr.archs import build_arch
    from ebsr_basicsr.runtime import save_model
    from ebsr_basicsr.training.export import export_network
    torch.manual_seed(seed)
    header, tensors = export_network(build_arch(dict(network_opt)), dict(network_opt))
    save_model(path, header, tensors)
    return path
