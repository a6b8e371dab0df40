#!/usr/bin/env python
"""Assemble a folder of frames (natural order: 2.png before 10.png) into an MP4 video.

    python scripts/assemble_frames.py frames_x4/ clip_x4.mp4 --fps 25 --audio-from clip.mp4

The audio track of --audio-from is copied when ffmpeg is on PATH; otherwise the video is silent.
"""
import sys
from pathlib import Path

import click

from ebsr_basicsr._files import printable
from ebsr_basicsr.upscale.video import VideoError, assemble_frames


@click.command(context_settings={"help_option_names": ["-h", "--help"]})
@click.argument("framedir", type=click.Path(exists=True, file_okay=False, path_type=Path))
@click.argument("output", type=click.Path(dir_okay=False, path_type=Path))
@click.option("--fps", type=click.FloatRange(min=0, min_open=True, max=1000), required=True,
              help="Frame rate (extract_frames.py prints the source's).")
@click.option("--audio-from", type=click.Path(exists=True, dir_okay=False, path_type=Path),
              help="Copy the audio track of this video (needs ffmpeg on PATH).")
def main(framedir, output, fps, audio_from):
    """Write the images in FRAMEDIR as the video OUTPUT (MP4)."""
    output.parent.mkdir(parents=True, exist_ok=True)
    try:
        res = assemble_frames(framedir, output, fps, audio_from=audio_from)
    except (VideoError, OSError) as exc:
        click.echo(printable(f"error: {exc}"), err=True)
        sys.exit(1)
    click.echo(f"{res.frames} frames at {fps:g} fps written to {output}")
    if audio_from is not None:
        click.echo(f"audio: {res.audio}", err=res.audio.startswith("not copied"))


if __name__ == "__main__":
    main()
