"""Test (evaluate) a trained model with BasicSR's own test pipeline.

    python -m ebsr_basicsr.test -opt options/test/EBSRNet/test_EBSRNet_x4.yml

(also available as ``basicsr test ...``). PSNR/SSIM are logged and ``results/<name>/``
is created under the current directory, once the option file's data and checkpoint have
been found.
"""
from .pipeline import run


def main(argv=None):
    """Run ``basicsr.test.test_pipeline``; ``argv`` (without the program name) replaces
    ``sys.argv[1:]`` when given."""
    run("test", argv)


if __name__ == "__main__":
    main()
