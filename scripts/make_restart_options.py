"""Write the option files of the robust models' later warm restarts and print how to run them.

    python scripts/make_restart_options.py OUT_DIR [--scale 2 3 4]

After its first polish, each robust default model went through rounds of a warm restart followed
by an MSE polish. The first round is committed (``options/train/Shipped/rewarm_`` and
``repolish_SCALESNet_robust_x<s>.yml``); every later round N is that round again with only what
:data:`ROUNDS` lists changed, so it is written from it rather than kept as a near-copy:

* ``rewarmN_SCALESNet_robust_x<s>.yml``: L1, 2e-4 -> 1e-6 (cosine, 100 warm-up iterations),
  ``rewarm`` iterations, the L1 phase's downscale mix (:data:`MIXES`); a round with
  ``rewarm=0`` has no such stage and polishes only;
* ``repolishN_SCALESNet_robust_x<s>.yml``: MSE, 1e-4 -> 1e-6, ``repolish`` iterations, the
  first polish's mix;
* both on HR patches of ``patch`` px in batches of ``batch``, cut from the HR crops ``crops``
  (:data:`CROPS`; patches over 240 px need larger crops than the usual ones), each starting from
  the previous stage's last EMA weights, or (``from_export``) from the previous stage exported
  to a model file and imported back (``ebsr_basicsr.training.import_model``: the same function,
  latent weights rebuilt from signs and scales), which is how a round resumes on a machine that
  has only the shipped model.

The script writes every round's files into OUT_DIR and prints, per scale and in order, the
commands that train them (run from the folder holding ``datasets/`` and ``experiments/``) and
the export of the last stage.
"""
from __future__ import annotations

import argparse
import re
import sys
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SHIPPED = ROOT / "options" / "train" / "Shipped"

# The downscale mixes of the L1 phase; the polish always keeps the first polish's mix.
MIXES = {
    "polish": "{matlab: 0.05, cubic: 0.65, area: 0.2, linear: 0.1}",  # the polish stages' own mix
    "cubic": "{matlab: 0.05, cubic: 0.8, area: 0.1, linear: 0.05}",  # more OpenCV cubic for the L1 phase
}

# HR crops other than the usual datasets/photos (240 px): name -> the ebsr-prepare options that make them.
CROPS = {
    "photos300": "--crop-size 300 --step 204 --min-grad 2",  # 300 px, so that a 240 px patch's position still varies
}
USUAL_CROPS = "photos"


@dataclass(frozen=True)
class Round:
    rewarm: int  # iterations of the L1 warm restart (0: none, the round is an MSE polish only)
    repolish: int  # iterations of the MSE polish
    mix: str  # key of MIXES for the L1 phase
    patch: int | None = None  # HR patch size (None: the first round's)
    batch: int | None = None  # batch size (None: the first round's)
    crops: str | None = None  # key of CROPS (None: the usual 240 px crops)
    from_export: bool = False  # start from the previous stage's exported file imported back


# Rounds 2, 3, ... of each scale, in the order they were trained.
ROUNDS: dict[int, list[Round]] = {
    2: [
        Round(6000, 1000, "polish"),
        Round(6000, 1000, "polish"),
        Round(4000, 1000, "polish"),
        Round(3000, 1000, "polish"),
        Round(3000, 1000, "polish"),
        Round(3000, 1000, "cubic"),
    ],
    3: [
        Round(4000, 1000, "polish"),
        Round(4000, 1000, "cubic", patch=144, batch=8),
        Round(3000, 1000, "cubic", patch=240, batch=8, crops="photos300", from_export=True),
        Round(0, 1000, "polish", patch=240, batch=8, crops="photos300", from_export=True),
    ],
    4: [
        Round(8000, 1500, "polish"),
        Round(8000, 1500, "polish", patch=192, batch=8),
        Round(6000, 1500, "cubic", patch=192, batch=8),
        Round(0, 1000, "polish", patch=192, batch=8, from_export=True),
    ],
}
RUN_LINE = "# Run from the folder holding datasets/ and experiments/:  basicsr train -opt <this file> --auto_resume\n"
ORDINALS = {2: "second", 3: "third", 4: "fourth", 5: "fifth", 6: "sixth", 7: "seventh", 8: "eighth", 9: "ninth",
            10: "tenth"}


def stage_name(kind: str, scale: int, n: int) -> str:
    """Experiment name of round ``n``'s ``kind`` ("rewarm" or "repolish") stage."""
    return f"SCALESNet_robust_x{scale}_{kind}{'' if n == 1 else n}"


def option_file_name(kind: str, scale: int, n: int) -> str:
    return f"{kind}{'' if n == 1 else n}_SCALESNet_robust_x{scale}.yml"


def _replace(text: str, key: str, value: str, current: str | None = None) -> str:
    """Set the value of the one line that starts with ``key`` (indent included, e.g. ``"  total_iter:"``),
    or, given ``current``, of the one line that reads ``key current``."""
    old = ".*" if current is None else re.escape(current)
    new, count = re.subn(rf"^{re.escape(key)} {old}$", lambda m: f"{key} {value}", text, flags=re.M)
    if count != 1:
        raise ValueError(f"expected one line starting with {key!r}{'' if current is None else ' ' + current}, "
                         f"found {count}")
    return new


def _body(path: Path) -> str:
    """An option file without its header comment."""
    lines = path.read_text().splitlines(keepends=True)
    return "".join(lines[next(i for i, line in enumerate(lines) if not line.startswith("#")):])


def _first_stage(scale: int) -> int:
    header = (SHIPPED / option_file_name("rewarm", scale, 1)).read_text()
    return int(re.match(r"# Stage (\d+) ", header).group(1))


def _last_checkpoint(name: str, iters: int) -> str:
    return f"experiments/{name}/models/net_g_{iters}.pth"


def _imported_checkpoint(name: str) -> str:
    return f"experiments/{name}/imported.pth"


def _iterations(scale: int, kind: str, n: int) -> int:
    if n == 1:
        text = (SHIPPED / option_file_name(kind, scale, 1)).read_text()
        return int(re.search(r"^  total_iter: (\d+)$", text, flags=re.M).group(1))
    return getattr(ROUNDS[scale][n - 2], kind)


def _wrap(text: str, width: int = 96) -> str:
    lines, line = [], "#"
    for word in text.split():
        if len(line) + 1 + len(word) > width:
            lines.append(line)
            line = "#"
        line += " " + word
    return "\n".join(lines + [line]) + "\n"


def _kinds(scale: int, n: int) -> tuple[str, ...]:
    """The stages of round ``n`` in order: ("rewarm", "repolish"), or ("repolish",) without a warm restart."""
    return ("repolish",) if n > 1 and ROUNDS[scale][n - 2].rewarm == 0 else ("rewarm", "repolish")


def round_files(scale: int, n: int) -> dict[str, str]:
    """The option files of round ``n >= 2`` at ``scale`` (two, or one without a warm restart): {file name: text}."""
    spec = ROUNDS[scale][n - 2]
    kinds = _kinds(scale, n)
    first = _first_stage(scale) + 2 + sum(len(_kinds(scale, m)) for m in range(2, n))  # the round's first stage
    prev_name = stage_name("repolish", scale, n - 1)
    patch = ""
    if spec.patch is not None:
        patch = f", on HR patches of {spec.patch} (batch {spec.batch})"
    if spec.crops is not None:
        patch += f" cut from the {spec.crops} crops"
    start = f"stage {first - 1}'s EMA weights"
    round_start = _last_checkpoint(prev_name, _iterations(scale, "repolish", n - 1))
    if spec.from_export:
        start = (f"stage {first - 1} exported to a model file and imported back ({_imported_checkpoint(prev_name)}: "
                 f"the same function, latent weights rebuilt from signs and scales)")
        round_start = _imported_checkpoint(prev_name)
    polish_about = (f"{spec.repolish:,} iterations of 1e-4 -> 1e-6 from {{}} with the MSE loss and the mix of "
                    f"polish_SCALESNet_robust_x{scale}.yml{patch}.")
    if "rewarm" in kinds:
        stages = {
            "rewarm": (round_start, spec.rewarm,
                       f"the {ORDINALS[n]} warm restart, {spec.rewarm:,} iterations of 2e-4 -> 1e-6 (cosine, 100 "
                       f"warm-up iterations) from {start} with the L1 loss and the mix {MIXES[spec.mix]}{patch}."),
            "repolish": (_last_checkpoint(stage_name("rewarm", scale, n), spec.rewarm), spec.repolish,
                         polish_about.format(f"stage {first}'s EMA weights")),
        }
    else:
        stages = {"repolish": (round_start, spec.repolish, f"round {n}, an MSE polish only: "
                               + polish_about.format(start))}
    files = {}
    for i, kind in enumerate(kinds):
        body_start, iters, about = stages[kind]
        this_stage = first + i
        prev_file = option_file_name(kinds[i - 1], scale, n) if i else option_file_name("repolish", scale, n - 1)
        header = _wrap(f"Stage {this_stage} of the robust x{scale} default model (stage {this_stage - 1}: "
                       f"{prev_file}): {about} Written by scripts/make_restart_options.py.")
        header += RUN_LINE
        text = _body(SHIPPED / option_file_name(kind, scale, 1))
        text = _replace(text, "name:", stage_name(kind, scale, n))
        text = _replace(text, "  pretrain_network_g:", body_start)
        text = _replace(text, "    periods:", f"[{iters}]")
        text = _replace(text, "  total_iter:", str(iters))
        if kind == "rewarm":
            text = _replace(text, "      downscale:", MIXES[spec.mix])
        if spec.patch is not None:
            text = _replace(text, "    gt_size:", str(spec.patch))
            text = _replace(text, "    batch_size_per_gpu:", str(spec.batch))
        if spec.crops is not None:
            text = _replace(text, "    dataroot_gt:", crops_folder(spec.crops), current=crops_folder(USUAL_CROPS))
        files[option_file_name(kind, scale, n)] = header + text
    return files


def crops_folder(crops: str) -> str:
    return f"datasets/{crops}/photos_train_HR_sub"


def all_files(scales=(2, 3, 4)) -> dict[str, str]:
    files = {}
    for s in scales:
        for n in range(2, len(ROUNDS[s]) + 2):
            files.update(round_files(s, n))
    return files


def commands(out_dir: str, scale: int) -> list[str]:
    """The shell commands that train rounds 2... at ``scale`` in order and export the last stage."""
    lines = []
    for crops in dict.fromkeys(r.crops for r in ROUNDS[scale] if r.crops is not None):
        lines.append(f"ebsr-prepare photos-train/ --out datasets/{crops} --name photos {CROPS[crops]}")
    for n in range(2, len(ROUNDS[scale]) + 2):
        spec = ROUNDS[scale][n - 2]
        if spec.from_export:
            prev = stage_name("repolish", scale, n - 1)
            prev_opt = f"{out_dir}/{option_file_name('repolish', scale, n - 1)}" if n > 2 else \
                f"options/train/Shipped/{option_file_name('repolish', scale, 1)}"
            lines.append(f"ebsr-export {_last_checkpoint(prev, _iterations(scale, 'repolish', n - 1))} -opt {prev_opt} "
                         f"-o experiments/{prev}/model.ebsr")
            lines.append(f"python -m ebsr_basicsr.training.import_model experiments/{prev}/model.ebsr "
                         f"{_imported_checkpoint(prev)}")
        for kind in _kinds(scale, n):
            lines.append(f"basicsr train -opt {out_dir}/{option_file_name(kind, scale, n)} --auto_resume")
    last = len(ROUNDS[scale]) + 1
    ckpt = _last_checkpoint(stage_name("repolish", scale, last), ROUNDS[scale][-1].repolish)
    lines.append(f"ebsr-export {ckpt} -opt {out_dir}/{option_file_name('repolish', scale, last)} "
                 f"-o ebsr_basicsr/weights/robust_x{scale}.ebsr")
    return lines


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("out_dir", help="folder to write the option files into (created if missing)")
    parser.add_argument("--scale", type=int, nargs="+", choices=sorted(ROUNDS), default=sorted(ROUNDS),
                        help="scales to write (default: all)")
    args = parser.parse_args(argv)
    out = Path(args.out_dir)
    out.mkdir(parents=True, exist_ok=True)
    files = all_files(args.scale)
    for name, text in files.items():
        (out / name).write_text(text)
    print(f"# {len(files)} option files written to {out}/; then, per scale, in order:")
    for s in args.scale:
        print(f"# x{s}")
        print("\n".join(commands(args.out_dir.rstrip("/"), s)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
