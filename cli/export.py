"""``ebsr-export``: turn a trained BasicSR checkpoint into a runtime model file."""
from __future__ import annotations

import logging
import sys
from pathlib import Path

import click

EPILOG = """\b
Examples:
  ebsr-export experiments/EBSR_x4/models/net_g_latest.pth -opt options/ebsr_x4.yml -o ebsr_x4.ebsr
  ebsr-upscale photos/ --model ebsr_x4.ebsr

BasicSR checkpoints hold weights only, so the option file's network_g section rebuilds the
network. The checkpoint is read with torch.load(weights_only=True); params_ema is preferred
unless --param-key says otherwise.
"""


def read_network_options(option_file: Path) -> dict:
    """The ``network_g`` section of a BasicSR option YAML."""
    import yaml

    try:
        opt = yaml.safe_load(option_file.read_text())
    except (OSError, UnicodeDecodeError, yaml.YAMLError) as e:
        raise click.BadParameter(f"cannot read {option_file}: {e}", param_hint="-opt") from None
    network = opt.get("network_g") if isinstance(opt, dict) else None
    if not isinstance(network, dict) or "type" not in network:
        raise click.BadParameter(f"{option_file} has no network_g section with a type", param_hint="-opt")
    return network


@click.command(epilog=EPILOG, context_settings={"help_option_names": ["-h", "--help"]})
@click.argument("checkpoint", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option("-opt", "--opt", "option_file", required=True,
              type=click.Path(exists=True, dir_okay=False, path_type=Path),
              help="BasicSR option YAML whose network_g built the checkpoint.")
@click.option("-o", "--output", type=click.Path(dir_okay=False, path_type=Path),
              help="Model file to write. Default: CHECKPOINT with the .ebsr suffix.")
@click.option("--param-key", type=click.Choice(["params_ema", "params"]), default=None,
              help="Which weights of the checkpoint to export.  [default: params_ema if present, else params]")
@click.option("-q", "--quiet", is_flag=True, help="Print nothing but errors.")
def main(checkpoint: Path, option_file: Path, output: Path | None, param_key: str | None, quiet: bool) -> None:
    """Export CHECKPOINT (a BasicSR .pth) to a bit-packed runtime model file."""
    logging.basicConfig(level=logging.WARNING if quiet else logging.INFO, format="%(message)s")
    network = read_network_options(option_file)
    output = output or checkpoint.with_suffix(".ebsr")
    if output.resolve() == checkpoint.resolve():
        raise click.BadParameter("the output would overwrite the checkpoint", param_hint="-o")
    from ebsr_basicsr.training.export import ExportError, export_checkpoint

    try:
        report = export_checkpoint(checkpoint, network, output, param_key)
    except (ExportError, ValueError) as e:
        click.echo(f"error: {e}", err=True)
        sys.exit(1)
    if not quiet:
        kib = lambda n: f"{n / 1024:.1f} KiB"  # noqa: E731
        click.echo(f"{report['output']}: {report['arch']} x{report['scale']}, {kib(report['bytes'])}: "
                   f"{report['fp32_bytes'] / report['bytes']:.1f}x smaller than its FP32 weights "
                   f"({kib(report['fp32_bytes'])}; the checkpoint file is {kib(report['checkpoint_bytes'])})")
        for note in report["notes"]:
            click.echo(f"note: {note}")


if __name__ == "__main__":
    main()
