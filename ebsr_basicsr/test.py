"""``python -m ebsr_basicsr.test``: BasicSR's test pipeline with this plugin's networks.

Kept at this path for the command line; the code is :mod:`ebsr_basicsr.training.test`.
"""
from .training.test import main

if __name__ == "__main__":
    main()
