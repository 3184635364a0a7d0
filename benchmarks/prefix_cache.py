"""Step and whole-run time with the frozen-prefix cache, side by side, as multiples of a full-FT step.

Run: .venv/bin/python benchmarks/prefix_cache.py [--quick] [--steps 20 --images 160 --epochs 10] [--family dinov2]

One ViT with 12 blocks (width 192, 3 heads, 96 px / 16 = 37 tokens, batch 16 by default). Every
method gets a fresh copy of the same base: full FT, and Layer FT / SCL FT (default delta skip) at
blocks 2, 6 and 10, each uncached (the model runs on images) and cached (the model runs from
``PrefixCache`` rows of the same batch). One training step = forward, cross-entropy, backward and
an AdamW step; steps are interleaved round-robin across all methods so that machine noise hits
them alike; the step time is the median.

Whole run (``--epochs`` epochs over ``--images`` images): uncached = epochs x steps/epoch x the
uncached step; cached, as the goal counts it ("first epoch uncached") = one uncached epoch +
(epochs - 1) cached epochs; and, as hf-nc actually runs it, the measured ``PrefixCache.build``
pre-pass + epochs cached epochs (the pre-pass is forward-only through the prefix, so it is cheaper
than an uncached epoch). The spread (max/min over the interleaved rounds of the full-FT step) is
printed so that noise on a shared machine is visible, and the ratios of each method's fastest step
("min:" columns), which other load disturbs least.

On a shared CPU the wall clock is noise (other processes steal the cores): use
``--threads 1 --clock cpu`` (this process's CPU time) there.

Goals (issue 13): cached Layer FT and SCL FT at block 10 <= 0.15x a full-FT step; a 10-epoch run
>= 2x faster than uncached at block 10, >= 1.3x at block 6. The blocks after the tuned one still
run forward and backward, so the cache cannot help much at early blocks.
"""

from __future__ import annotations

import argparse
import copy
import statistics
import time
import warnings

import torch
import transformers as tf
from peft import get_peft_model

import hf_nc
from hf_nc.backbones import resolve_backbone
from hf_nc.data import collate_fn
from hf_nc.prefix_cache import PrefixCache
from _common import train_step
from _results import add_json_argument, goal_row, info_row, record

warnings.filterwarnings("ignore")


def build(args):
    torch.manual_seed(0)
    if args.family == "dinov2":  # DINOv2-S/14 (random weights) at the transfer study's 56 px
        config = tf.Dinov2Config(hidden_size=384, num_hidden_layers=12, num_attention_heads=6, mlp_ratio=4,
                                 image_size=args.image, patch_size=14, num_labels=args.labels, attn_implementation="sdpa")
        return tf.Dinov2ForImageClassification(config)
    config = tf.ViTConfig(hidden_size=args.hidden, num_hidden_layers=12, num_attention_heads=args.heads,
                          intermediate_size=4 * args.hidden, image_size=args.image, patch_size=16,
                          num_labels=args.labels, attn_implementation="sdpa")
    return tf.ViTForImageClassification(config)


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--family", choices=("vit", "dinov2"), default="vit",
                        help="vit: 12 x --hidden ViT at --image px; dinov2: DINOv2-S/14 (12 x 384) at 56 px")
    parser.add_argument("--hidden", type=int, default=192)
    parser.add_argument("--heads", type=int, default=3)
    parser.add_argument("--image", type=int, default=None, help="image size (default 96 for vit, 56 for dinov2)")
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--labels", type=int, default=10)
    parser.add_argument("--blocks", default=None, help="tuned blocks to compare (default 2,6,10)")
    parser.add_argument("--steps", type=int, default=None, help="timed interleaved steps per method after 1 warm-up (default 20)")
    parser.add_argument("--images", type=int, default=None, help="training images of the whole-run estimate (default 160)")
    parser.add_argument("--epochs", type=int, default=10)
    parser.add_argument("--quick", action="store_true", help="defaults of 5 steps, 32 images, blocks 6,10: a smoke run")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--threads", type=int, default=0, help="torch threads on CPU (0: leave as is)")
    parser.add_argument("--clock", choices=("wall", "cpu"), default="wall",
                        help="wall: time.perf_counter; cpu: this process's CPU time (time.process_time), which other "
                             "processes on a shared CPU disturb less (use with --threads 1; CPU device only)")
    add_json_argument(parser)
    args = parser.parse_args()
    args.image = args.image or (56 if args.family == "dinov2" else 96)
    quick = dict(steps=5, images=32, blocks="6,10") if args.quick else dict(steps=20, images=160, blocks="2,6,10")
    for key, value in quick.items():
        if getattr(args, key) is None:
            setattr(args, key, value)
    if args.threads:
        torch.set_num_threads(args.threads)
    clock = time.process_time if args.clock == "cpu" else time.perf_counter
    device = torch.device(args.device)
    blocks = [int(b) for b in args.blocks.split(",")]
    base = build(args)
    g = torch.Generator().manual_seed(0)
    images = torch.randn(args.images, 3, args.image, args.image, generator=g)
    labels = torch.randint(0, args.labels, (args.images,), generator=g)
    dataset = [{"pixel_values": images[i], "labels": int(labels[i])} for i in range(args.images)]
    x, y = images[: args.batch].to(device), labels[: args.batch].to(device)

    configs = {"full FT": None}
    for b in blocks:
        configs[f"Layer FT @{b}"] = lambda b=b: hf_nc.LayerFTConfig(layers=[b])
        configs[f"SCL FT @{b}"] = lambda b=b: hf_nc.SCLConfig(layer=b)

    runs = {}
    for name, make in configs.items():
        for cached in ((False,) if make is None else (False, True)):
            model = copy.deepcopy(base)
            if make is not None:
                model = get_peft_model(model, make())
            model.to(device)
            run = dict(model=model, times=[], build_s=0.0, inp=x)
            if cached:
                start = clock()
                cache = PrefixCache.build(model, dataset, collate_fn, batch_size=64, device=device, progress=False)
                run["build_s"] = clock() - start
                cache.attach(model)
                run["inp"] = torch.stack([cache[i]["pixel_values"] for i in range(args.batch)]).to(device)
                run["bytes"] = cache.nbytes
            model.train()
            run["opt"] = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-4)
            train_step(model, run["opt"], run["inp"], y, clock)  # warm-up
            runs[(name, cached)] = run
    for _ in range(args.steps):
        for run in runs.values():
            run["times"].append(train_step(run["model"], run["opt"], run["inp"], y, clock))

    med = {k: statistics.median(r["times"]) for k, r in runs.items()}
    best = {k: min(r["times"]) for k, r in runs.items()}  # least disturbed step: steadier on a shared machine
    t_full, b_full = med[("full FT", False)], best[("full FT", False)]
    full_times = runs[("full FT", False)]["times"]
    steps_per_epoch = -(-args.images // args.batch)
    E = args.epochs
    cfg = resolve_backbone(base).config
    patch = cfg.patch_size
    print(f"{type(base).__name__}: 12 blocks, width {cfg.hidden_size}, {cfg.num_attention_heads} heads, "
          f"{args.image}px/{patch} ({(args.image // patch) ** 2 + 1} tokens), batch {args.batch}, {args.device}, {torch.get_num_threads()} threads, {args.clock} clock, median of {args.steps} "
          f"interleaved steps; whole run: {E} epochs x {steps_per_epoch} steps ({args.images} images)")
    print(f"full-FT step {1000 * t_full:.1f} ms (spread over rounds: min {1000 * min(full_times):.1f}, "
          f"max {1000 * max(full_times):.1f} ms)")
    head = (f"{'method':<15}{'uncached':>10}{'cached':>9}{'step gain':>10}{'pre-pass s':>11}"
            f"{'run gain (1st epoch uncached)':>31}{'run gain (pre-pass)':>21}{'cache MiB':>11}"
            f"{'min: uncached':>15}{'cached':>8}")
    print("step times as multiples of a full-FT step (median; 'min:' columns use each method's fastest step, "
          "less sensitive to other load); run gain = uncached run time / cached run time (medians)")
    print(head)
    print(f"{'full FT':<15}{1.0:>10.2f}{'-':>9}")
    verdicts = []
    rows = [info_row("full-FT step", 1000 * t_full, "ms")]
    for name in configs:
        if name == "full FT":
            continue
        u, c = med[(name, False)], med[(name, True)]
        build_s = runs[(name, True)]["build_s"]
        run_u = E * steps_per_epoch * u
        run_first = steps_per_epoch * u + (E - 1) * steps_per_epoch * c
        run_pre = build_s + E * steps_per_epoch * c
        print(f"{name:<15}{u / t_full:>10.2f}{c / t_full:>9.2f}{u / c:>9.2f}x{build_s:>11.2f}"
              f"{run_u / run_first:>30.2f}x{run_u / run_pre:>20.2f}x{runs[(name, True)]['bytes'] / 2**20:>11.1f}"
              f"{best[(name, False)] / b_full:>15.2f}{best[(name, True)] / b_full:>8.2f}")
        block = int(name.split("@")[1])
        kind = "layer" if name.startswith("Layer") else "scl"
        rows.append(info_row(f"{name}: uncached step", u / t_full, "x full-FT step"))
        if block == 10:
            rows.append(goal_row(f"cache_{kind}_step10", c / t_full, f"{name}: cached step", "x full-FT step"))
        else:
            rows.append(info_row(f"{name}: cached step", c / t_full, "x full-FT step"))
        run_what = f"{name}: {E}-epoch run gain, cached (1st epoch uncached)"
        if block in (6, 10) and E == 10:
            rows.append(goal_row(f"cache_{kind}_run{block}", run_u / run_first, run_what, "x faster"))
        else:
            rows.append(info_row(run_what, run_u / run_first, "x faster"))
        rows.append(info_row(f"{name}: {E}-epoch run gain, measured pre-pass + cached epochs", run_u / run_pre, "x faster"))
        if block == 10:
            verdicts.append((f"{name} cached step <= 0.15x full FT", c / t_full, c / t_full <= 0.15))
            verdicts.append((f"{name} {E}-epoch run >= 2x faster (1st epoch uncached)", run_u / run_first, run_u / run_first >= 2))
        if block == 6:
            verdicts.append((f"{name} {E}-epoch run >= 1.3x faster (1st epoch uncached)", run_u / run_first, run_u / run_first >= 1.3))
    if verdicts:
        print("goals:")
        for what, value, ok in verdicts:
            print(f"  {'MET ' if ok else 'MISS'} {what}: {value:.2f}")
    print("The blocks after the tuned one still run forward and backward: at early blocks the cache saves little.")
    if args.json is not None:
        setting = f"{'dinov2-s' if args.family == 'dinov2' else f'vit-12x{args.hidden}'} {args.image}px b{args.batch}"
        record("prefix_cache", setting, args.device, rows, args.json, notes=[
            f"{type(base).__name__}, 12 blocks, width {cfg.hidden_size}, {args.image}px/{patch}, batch {args.batch}",
            f"{args.clock} clock, {torch.get_num_threads()} threads, median of {args.steps} interleaved steps; "
            f"whole run: {E} epochs of {args.images} images"])


if __name__ == "__main__":
    main()
