"""Training speed on the CPU: the ways to run one training step of a network, side by side.

    python benchmarks/bench_training.py [--opt options/train/Shipped/train_SCALESNet_robust_x4.yml]
        [--variants eager,channels_last,bf16,compile] [--threads 2] [--steps 20] [--rounds 3]

One step is what BasicSR's ``SRModel.optimize_parameters`` does: forward, L1 loss, backward,
Adam step (EMA and data loading excluded; the loader runs in its own process and is timed
separately with ``--loader``). Each variant is built once and warmed up (``compile`` compiles
here), then the variants are timed in interleaved rounds so a noisy machine slows all of
them alike; the table gives the median step time and the speed-up over ``eager``. Prints the
CPU model. ``--check N`` also trains every variant N steps from the same weights and batches
and prints its loss and its PSNR on the option file's validation set (run from the folder
holding its datasets), so a variant that learns differently shows.

Variants: ``eager`` (float32, NCHW), ``channels_last``, ``bf16`` (``torch.autocast`` to
bfloat16 on the CPU), ``compile`` (``torch.compile`` of the network), and ``+``-joined mixes
such as ``compile+channels_last``.
"""
from __future__ import annotations

import argparse
import copy
import statistics
import sys
import time
from pathlib import Path

import torch
import yaml

from common import cpu_model


def build(opt: dict, variant: str, state: dict):
    from ebsr_basicsr.archs import build_arch

    parts = set(variant.split("+"))
    unknown = parts - {"eager", "channels_last", "bf16", "compile"}
    if unknown:
        raise SystemExit(f"unknown variant part(s): {', '.join(sorted(unknown))}")
    net = build_arch(opt["network_g"])
    net.load_state_dict(state)
    net.train()
    fmt = torch.channels_last if "channels_last" in parts else torch.contiguous_format
    net = net.to(memory_format=fmt)
    optim = torch.optim.Adam(net.parameters(), lr=opt["train"]["optim_g"]["lr"], betas=(0.9, 0.99))
    model = torch.compile(net) if "compile" in parts else net
    autocast = "bf16" in parts

    def step(lq, gt):
        lq = lq.contiguous(memory_format=fmt)
        optim.zero_grad(set_to_none=True)
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast):
            out = model(lq)
        loss = torch.nn.functional.l1_loss(out.float(), gt)
        loss.backward()
        optim.step()
        return float(loss)

    return step, net


def batches(opt: dict, n: int, seed: int = 0):
    """``n`` training batches drawn by the option file's own train dataset."""
    from basicsr.data import build_dataset

    from ebsr_basicsr.training.registration import register_with_basicsr

    register_with_basicsr()
    ds_opt = copy.deepcopy(opt["datasets"]["train"])
    ds_opt.update(phase="train", scale=opt["scale"])
    if ds_opt.get("type") == "MixedDegradationDataset":
        ds_opt["seed"] = seed
    dataset = build_dataset(ds_opt)
    bs = ds_opt["batch_size_per_gpu"]
    g = torch.Generator().manual_seed(seed)
    out = []
    for _ in range(n):
        idx = torch.randint(len(dataset), (bs,), generator=g).tolist()
        items = [dataset[i] for i in idx]
        out.append((torch.stack([it["lq"] for it in items]), torch.stack([it["gt"] for it in items])))
    return out, dataset


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--opt", default="options/train/Shipped/train_SCALESNet_robust_x4.yml")
    ap.add_argument("--variants", default="eager,channels_last,bf16,compile")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--steps", type=int, default=20, help="steps per variant per round")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--check", type=int, default=0, help="also train N steps per variant and print the loss")
    ap.add_argument("--loader", action="store_true", help="also time the dataset's items")
    args = ap.parse_args(argv)

    torch.set_num_threads(args.threads)
    opt = yaml.safe_load(Path(args.opt).read_text())
    print(f"CPU: {cpu_model()}; torch {torch.__version__}; {args.threads} thread(s); {args.opt}", flush=True)
    data, dataset = batches(opt, max(4, args.check))
    if args.loader:
        t0 = time.perf_counter()
        for i in range(200):
            dataset[i % len(dataset)]
        per_item = (time.perf_counter() - t0) / 200
        bs = opt["datasets"]["train"]["batch_size_per_gpu"]
        print(f"loader: {per_item * 1e3:.2f} ms per item, {per_item * bs * 1e3:.1f} ms per batch of {bs} "
              "(one worker process)", flush=True)

    from ebsr_basicsr.archs import build_arch

    torch.manual_seed(0)
    state = build_arch(opt["network_g"]).state_dict()
    variants = args.variants.split(",")
    steps = {}
    for v in variants:
        t0 = time.perf_counter()
        steps[v] = build(opt, v, state)[0]
        for lq, gt in data[:3]:
            steps[v](lq, gt)
        print(f"{v}: built and warmed up in {time.perf_counter() - t0:.1f} s", flush=True)
    times = {v: [] for v in variants}
    for r in range(args.rounds):
        for v in variants:
            lq, gt = data[0]
            t0 = time.perf_counter()
            for _ in range(args.steps):
                steps[v](lq, gt)
            times[v].append((time.perf_counter() - t0) / args.steps)
    base = statistics.median(times[variants[0]])
    print(f"\n| variant | ms per step | speed-up over {variants[0]} |\n|---|---|---|")
    for v in variants:
        t = statistics.median(times[v])
        print(f"| {v} | {t * 1e3:.1f} | {base / t:.2f}x |")
    if args.check:
        print(f"\nafter {args.check} steps from the same weights and batches (validation: the option file's "
              "val set, Y-PSNR):")
        for v in variants:
            step, net = build(opt, v, state)
            losses = [step(lq, gt) for lq, gt in data[:args.check]]
            print(f"  {v}: loss first {losses[0]:.5f}, mean of last 5 {statistics.mean(losses[-5:]):.5f}, "
                  f"validation {validation_psnr(opt, net):.3f} dB", flush=True)
    return 0


def validation_psnr(opt: dict, net) -> float:
    """Mean PSNR of ``net`` (float32 eval) on the option file's validation set, with its
    ``val.metrics.psnr`` settings (the number BasicSR's validation logs)."""
    from basicsr.data import build_dataset
    from basicsr.metrics import calculate_psnr
    from basicsr.utils import tensor2img

    ds_opt = copy.deepcopy(opt["datasets"]["val"])
    ds_opt.update(phase="val", scale=opt["scale"])
    metric = opt["val"]["metrics"]["psnr"]
    net = net.eval().to(memory_format=torch.contiguous_format)
    scores = []
    with torch.no_grad():
        for item in build_dataset(ds_opt):
            out = tensor2img(net(item["lq"][None]).float().cpu())
            scores.append(calculate_psnr(out, tensor2img(item["gt"][None]), metric.get("crop_border", 0),
                                         test_y_channel=metric.get("test_y_channel", False)))
    return float(statistics.mean(scores))


if __name__ == "__main__":
    sys.exit(main())
