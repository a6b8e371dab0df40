"""``python -m ebsr_basicsr.train``: BasicSR's training pipeline with this plugin's networks.

Kept at this path for the command line; the code is :mod:`ebsr_basicsr.training.train`.
"""
from .training.train import main

if __name__ == "__main__":
    main()
