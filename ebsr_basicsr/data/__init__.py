"""Data preparation for training with BasicSR (``prepare``: HR folder -> HR/LR pairs).

Nothing here is imported by the runtime; basicsr is imported lazily inside the functions
that need it.
"""
