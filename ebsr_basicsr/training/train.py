"""Train a model with BasicSR's own training pipeline and this plugin's networks.

    python -m ebsr_basicsr.train -opt options/ebsr_x4.yml [--auto_resume] [--debug]
        [--launcher none|pytorch|slurm] [--force_yml key:sub=value ...]

(also available as ``basicsr train ...``). The arguments are BasicSR's own: they are read
by ``basicsr.utils.options.parse_options``. ``experiments/`` and ``tb_logger/`` are
created under the current directory, once the option file's data has been found.
"""
from .pipeline import run


def main(argv=None):
    """Run ``basicsr.train.train_pipeline``; ``argv`` (without the program name) replaces
    ``sys.argv[1:]`` when given."""
    run("train", argv)


if __name__ == "__main__":
    main()
