#!/usr/bin/env python
"""Save every frame of a video as PNG (000001.png, 000002.png, ...) and print its frame rate.

Frame workflow:
    python scripts/extract_frames.py clip.mp4 frames/
    ebsr-upscale frames/ -o frames_x4/
    python scripts/assemble_frames.py frames_x4/ clip_x4.mp4 --fps <fps> --audio-from clip.mp4
"""
import sys
from pathlib import Path

import click

from ebsr_basicsr._files import printable
from ebsr_basicsr.upscale.video import VideoError, extract_frames


@click.command(context_settings={"help_option_names": ["-h", "--help"]})
@click.argument("video", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.argument("outdir", type=click.Path(file_okay=False, path_type=Path))
def main(video, outdir):
    """Extract the frames of VIDEO into OUTDIR as PNG files."""
    try:
        info = extract_frames(video, outdir)
    except (VideoError, OSError) as exc:
        click.echo(printable(f"error: {video}: {exc}"), err=True)
        sys.exit(1)
    click.echo(f"{info.frame_count} frames ({info.width}x{info.height}) written to {outdir}")
    click.echo(f"fps: {info.fps:g}")
    click.echo(f"reassemble with: python {Path(__file__).with_name('assemble_frames.py')} DIR OUT.mp4 "
               f"--fps {info.fps:g} --audio-from {video}")


if __name__ == "__main__":
    main()
