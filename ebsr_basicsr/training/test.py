"""Test (evaluate) a trained model with BasicSR's own test pipeline.

    python -m ebsr_basicsr.test -opt options/test/EBSRNet/test_EBSRNet_x4.yml

(also available as ``basicsr test ...``). PSNR/SSIM are logged and ``results/<name>/``
is created under the current directory.
"""
import os
import sys


def main(argv=None):
    """Run ``basicsr.test.test_pipeline``; ``argv`` (without the program name) replaces
    ``sys.argv[1:]`` when given."""
    from . import _basicsr_compat

    if argv is not None:
        sys.argv = [sys.argv[0], *argv]
    _basicsr_compat.check_option_file(sys.argv[1:])
    _basicsr_compat.setup()
    from basicsr.test import test_pipeline

    test_pipeline(os.getcwd())


if __name__ == "__main__":
    main()
