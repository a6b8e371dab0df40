"""Upscaling files with the bitwise runtime (NumPy + OpenCV, never torch or basicsr):
image reading and writing (``imageio``), tiling (``upscaler``), videos (``video``) and
batches of files (``batch``, behind ``ebsr-upscale``).
"""
