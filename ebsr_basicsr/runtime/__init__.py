"""The bitwise CPU runtime: loads an exported model file and upscales images with the
Numba XNOR/popcount kernels. Imports neither torch nor basicsr.

    from ebsr_basicsr.runtime import Engine
    engine = Engine.load("ebsr_x4.ebsr")
    sr = engine.upscale(cv2.imread("photo.png"))     # uint8 BGR in, uint8 BGR out
"""
from .engine import Engine
from .format import FORMAT_VERSION, ModelFileError, load_model, save_model

__all__ = ["Engine", "ModelFileError", "FORMAT_VERSION", "load_model", "save_model"]
