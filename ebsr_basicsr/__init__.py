"""Binary neural networks for image super-resolution.

Importing this package is cheap: it imports neither torch nor basicsr. The torch
architectures are registered in BasicSR's ``ARCH_REGISTRY`` as soon as basicsr's
registry module is loaded (or right away if it already is), so that
``import ebsr_basicsr`` followed by any basicsr entry point finds ``EBSRNet`` & co.
The bitwise runtime (``ebsr_basicsr.runtime``) never touches torch.
"""
__version__ = "0.1.0"
