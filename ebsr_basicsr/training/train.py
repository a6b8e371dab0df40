"""Train a model with BasicSR's own training pipeline and this plugin's networks.

    python -m ebsr_basicsr.train -opt options/ebsr_x4.yml [--auto_resume] [--debug]
        [--launcher none|pytorch|slurm] [--force_yml key:sub=value ...]

(also available as ``basicsr train ...``). The arguments are BasicSR's own: they are read
by ``basicsr.utils.options.parse_options``. ``experiments/`` and ``tb_logger/`` are
created under the current directory.
"""
import os
import sys


def main(argv=None):
    """Run ``basicsr.train.train_pipeline``; ``argv`` (without the program name) replaces
    ``sys.argv[1:]`` when given."""
    from . import _basicsr_compat

    if argv is not None:
        sys.argv = [sys.argv[0], *argv]
    _basicsr_compat.check_option_file(sys.argv[1:])
    _basicsr_compat.setup()  # register our archs, make resuming etc. work without CUDA
    from basicsr.train import train_pipeline

    train_pipeline(os.getcwd())


if __name__ == "__main__":
    main()
