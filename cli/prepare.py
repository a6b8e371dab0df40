"""``ebsr-prepare``: make BasicSR training/validation data from a folder of HR images.

Examples::

    # DIV2K: 480x480 HR sub-images every 240 px + bicubic x2/x3/x4 LR sub-images
    ebsr-prepare datasets/DIV2K/DIV2K_train_HR --out datasets/DIV2K --workers 2

    # whole images for validation/testing (GTmod12 + LRbicx2/3/4, like BasicSR's Set5)
    ebsr-prepare path/to/Set5_HR --out datasets/Set5 --val
"""
import logging

import click


def _scales(ctx, param, value):
    try:
        scales = sorted({int(v) for v in value.replace(" ", "").split(",") if v})
    except ValueError:
        raise click.BadParameter("give integers separated by commas, e.g. 2,3,4")
    if not scales or min(scales) < 1:
        raise click.BadParameter("give at least one positive scale")
    return scales


@click.command(context_settings={"help_option_names": ["-h", "--help"]})
@click.argument("input_dir", type=click.Path(file_okay=False))
@click.option("--out", "out_dir", required=True, type=click.Path(file_okay=False),
              help="Output root, e.g. datasets/DIV2K (train) or datasets/Set5 (--val).")
@click.option("--name", default=None,
              help="Dataset name in the output folder names (train mode). Default: the input "
                   "folder's name without _train_HR/_HR/-train (DIV2K_train_HR -> DIV2K).")
@click.option("--scales", default="2,3,4", show_default=True, callback=_scales,
              help="LR scales to make, comma separated.")
@click.option("--val", is_flag=True,
              help="Keep whole images: <out>/GTmod<m>/ and <out>/LRbicx<s>/ (BasicSR's "
                   "benchmark layout) instead of sub-images.")
@click.option("--crop-size", default=480, show_default=True, help="HR sub-image size (train mode).")
@click.option("--step", default=240, show_default=True, help="Stride between HR sub-images.")
@click.option("--thresh-size", default=0, show_default=True,
              help="Add a last crop flush with the image border only if more than this many "
                   "pixels would be left over (basicsr's extract_subimages rule).")
@click.option("--mod", default=None, type=int,
              help="Crop HR sizes to a multiple of this. Default: the lcm of the scales (12 "
                   "for 2,3,4); with --val and one scale, --mod 12 keeps the GTmod12 name.")
@click.option("--min-std", default=0.0, show_default=True,
              help="Drop sub-images whose grey-level standard deviation (0..255) is below this "
                   "(flat sky, blurred backgrounds). 0 keeps all.")
@click.option("--min-grad", default=0.0, show_default=True,
              help="Drop sub-images whose mean absolute neighbour difference (0..255) is below "
                   "this: the better flatness test (a smooth gradient has a high std). 1 drops "
                   "blurred backgrounds and clear sky; 0 keeps all.")
@click.option("--lmdb", "make_lmdb", is_flag=True,
              help="Also write each folder as an LMDB (<folder>.lmdb with meta_info.txt).")
@click.option("--workers", default=1, show_default=True, help="Worker processes.")
@click.option("--overwrite", is_flag=True, help="Replace existing output folders.")
@click.option("--quiet", is_flag=True, help="No progress bar.")
def main(input_dir, out_dir, name, scales, val, crop_size, step, thresh_size, mod, min_std,
         min_grad, make_lmdb, workers, overwrite, quiet):
    """Make HR/LR pairs for BasicSR from the HR images in INPUT_DIR.

    Train mode writes <out>/<name>_train_HR_sub/ and
    <out>/<name>_train_LR_bicubic/X<s>_sub/ with sub-images named 0001_s001.png (as
    BasicSR's DIV2K scripts); LR images are MATLAB bicubic downsamplings of the
    mod-cropped HR image. An image that cannot be read is reported (error: NAME: reason)
    and the others are prepared; the exit status is then 1."""
    from ebsr_basicsr._files import printable
    from ebsr_basicsr.data.prepare import PrepareConfig, PrepareError, prepare

    logging.basicConfig(level=logging.WARNING, format="%(levelname)s: %(message)s")
    cfg = PrepareConfig(
        input_dir=input_dir, out_dir=out_dir, name=name, scales=scales, val=val,
        crop_size=crop_size, step=step, thresh_size=thresh_size, mod=mod, min_std=min_std,
        min_grad=min_grad, lmdb=make_lmdb, workers=workers, overwrite=overwrite,
    )
    try:
        report = prepare(cfg, progress=not quiet)
    except PrepareError as err:
        raise click.ClickException(printable(str(err)))
    except OSError as err:  # writing the output failed (disk full, permissions)
        raise click.ClickException(printable(f"{err.filename}: {err.strerror}" if err.strerror else str(err)))
    for name, reason in report.failed:
        click.echo(f"error: {printable(name)}: {reason}", err=True)

    what = "images" if val else "sub-images"
    click.echo(f"{report.images} input images -> {report.written} {what} per folder")
    if not val and (min_std > 0 or min_grad > 0):
        total = report.written + report.dropped_flat
        click.echo(f"dropped {report.dropped_flat} of {total} sub-images as flat "
                   f"(min-std {min_std}, min-grad {min_grad})")
    if report.skipped_small:
        click.echo(f"skipped {len(report.skipped_small)} images smaller than {crop_size} px: "
                   + ", ".join(report.skipped_small[:10]))
    click.echo(f"HR: {report.hr_dir}")
    for s, d in sorted(report.lr_dirs.items()):
        click.echo(f"LR x{s}: {d}")
    for p in report.lmdb_paths:
        click.echo(f"LMDB: {p}")
    if report.failed:
        click.echo(f"{len(report.failed)} of {report.images} images failed, {report.images - len(report.failed)} "
                   "prepared", err=True)
        raise SystemExit(1)


if __name__ == "__main__":
    main()
