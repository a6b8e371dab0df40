"""``basicsr``: BasicSR's train and test pipelines with the ebsr-basicsr networks registered.

    basicsr train -opt options/ebsr_x4.yml [--auto_resume] [--debug] [--launcher ...]
    basicsr test  -opt options/test/EBSRNet/test_EBSRNet_x4.yml

Everything after the subcommand is handed unchanged to BasicSR's own argument parser
(``basicsr train --help`` shows its options).
"""
import sys

import click

_PASS_THROUGH = {"ignore_unknown_options": True, "allow_extra_args": True, "help_option_names": []}


def _forward(subcommand, args):
    # BasicSR's parse_options reads sys.argv itself; make its usage line say what was run.
    sys.argv = [f"basicsr {subcommand}", *args]
    if subcommand == "train":
        from ebsr_basicsr.training.train import main as run
    else:
        from ebsr_basicsr.training.test import main as run
    run()


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
def main():
    """Train or test BasicSR models, including the binary SR networks of ebsr-basicsr
    (EBSRNet, SCALESNet, SCALESSwinIR, E2FIFNet, BNNSR). Output goes to experiments/,
    tb_logger/ and results/ under the current directory."""


@main.command(context_settings=_PASS_THROUGH, add_help_option=False)
@click.argument("args", nargs=-1, type=click.UNPROCESSED)
def train(args):
    """Train: -opt OPTIONS.yml [--auto_resume] [--debug] [--launcher none|pytorch|slurm]
    [--force_yml KEY=VALUE ...]"""
    _forward("train", args)


@main.command(context_settings=_PASS_THROUGH, add_help_option=False)
@click.argument("args", nargs=-1, type=click.UNPROCESSED)
def test(args):
    """Test: -opt OPTIONS.yml"""
    _forward("test", args)


if __name__ == "__main__":
    main()
