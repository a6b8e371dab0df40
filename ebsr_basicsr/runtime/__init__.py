"""The bitwise CPU runtime: loads an exported model file and upscales images with the
Numba XNOR/popcount kernels. Imports neither torch nor basicsr.

    from ebsr_basicsr.runtime import Engine
    engine = Engine.load("ebsr_x4.ebsr")
    sr = engine.upscale(cv2.imread("photo.png"))     # uint8 BGR in, uint8 BGR out

``format`` (the model file) is NumPy only, and so is importing this package: ``Engine``
and the kernels are imported on first use, so that the exporter can write model files
without Numba.
"""
from .format import FORMAT_VERSION, ModelFileError, load_model, save_model

__all__ = ["Engine", "ModelFileError", "FORMAT_VERSION", "load_model", "save_model"]


def __getattr__(name):
    if name == "Engine":
        from .engine import Engine

        return Engine
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
