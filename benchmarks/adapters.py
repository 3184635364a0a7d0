"""Train-step time, memory and trainable share of full FT vs LoRA vs the hf-nc methods, side by side.

Run: .venv/bin/python benchmarks/adapters.py [--hidden 192 --image 96 --batch 16 --steps 6]
     .venv/bin/python benchmarks/adapters.py --shape vit-b16 --steps 3 --threads 1 --clock cpu --json

One ViT with 12 blocks, one training step = forward, cross-entropy, backward and an AdamW step.
``--shape small`` (default, CPU-friendly): width 192, 3 heads, 96 px, batch 16. ``--shape
vit-b16``: ViT-B/16 as users run it, 12 x 768, 12 heads, 224 px / 16 (197 tokens), batch 8,
random weights from the config (no download); ``--hidden/--heads/--image/--batch`` override either.

Methods: full FT, LoRA (peft, r=8 on q and v, with the head), Layer FT (block 11), SCL FT
(block 10, default delta skip) and head FT (all heads of block 11); the hf-nc methods also
*cached*: the model trains from ``hf_nc.PrefixCache`` rows of the same batch (the frozen prefix's
output, computed once), as a run with ``--cache_frozen_prefix`` does after its pre-pass. Every
method gets a fresh copy of the same base. Steps are interleaved round-robin across methods so
that machine noise hits all of them alike; the time is the median step (``--clock cpu``: this
process's CPU time, steadier on a shared CPU with ``--threads 1``; CUDA steps end with a
synchronize).

Memory is *training memory*, excluding the frozen weights (the same for every method):

* ``act``: bytes of the distinct tensor storages autograd saves for backward during the forward
  (``torch.autograd.graph.saved_tensors_hooks``), i.e. the activation memory backward keeps
  alive; exact and the same on every device;
* ``train mem``: ``act`` + gradients + AdamW state (2 tensors) of the trainable parameters,
  counted exactly from their sizes;
* ``CUDA peak`` (on a GPU only): ``torch.cuda.max_memory_allocated`` during the first step (it
  allocates the AdamW state) above the memory allocated before it, which also counts transient
  buffers and the frozen prefix's forward temporaries. On a CPU torch keeps no allocator
  statistics, so the exact counts above are what is reported.

All numbers are also reported as ratios to full fine-tuning. ``--json`` records them (and the
issue-3 goals: one block <= 10% of the parameters, Layer FT / SCL FT <= 0.5x the step time and
memory of full FT) in ``benchmarks/results/`` for ``benchmarks/performance_report.py``.
"""

from __future__ import annotations

import argparse
import copy
import statistics
import time
import warnings

import torch
import torch.nn.functional as F
import transformers as tf
from peft import LoraConfig, get_peft_model

import hf_nc.adapters as A
from hf_nc.data import collate_fn
from hf_nc.prefix_cache import PrefixCache
from _common import train_step
from _results import add_json_argument, goal_row, info_row, print_goals, record

warnings.filterwarnings("ignore")

#: name -> (peft config factory or None for full FT, can train from the frozen-prefix cache)
METHODS = {
    "full FT": (None, False),
    "LoRA r=8 q,v (+head)": (lambda: LoraConfig(r=8, target_modules=["q_proj", "v_proj"], modules_to_save=["classifier"]), False),
    "Layer FT (block 11)": (lambda: A.LayerFTConfig(layers=[-1]), True),
    "SCL FT (block 10)": (lambda: A.SCLConfig(layer=-2), True),
    "head FT (all heads, block 11)": (lambda: A.HeadFTConfig(heads={-1: "all"}), True),
}

SHAPES = {
    "small": dict(hidden=192, heads=3, image=96, batch=16),
    "vit-b16": dict(hidden=768, heads=12, image=224, batch=8),
}


def build(args):
    config = tf.ViTConfig(hidden_size=args.hidden, num_hidden_layers=12, num_attention_heads=args.heads,
                          intermediate_size=4 * args.hidden, image_size=args.image, patch_size=16,
                          num_labels=args.labels, attn_implementation="sdpa")
    torch.manual_seed(0)
    return tf.ViTForImageClassification(config)


def training_memory(model, optimizer, x, y) -> tuple[int, int, int]:
    """(saved-activation bytes, grads + AdamW state bytes, CUDA peak bytes or 0) of one step."""
    storages = {}

    def pack(t):
        s = t.untyped_storage()
        storages[s.data_ptr()] = s.nbytes()
        return t

    cuda = x.is_cuda
    if cuda:
        torch.cuda.synchronize(x.device)
        torch.cuda.reset_peak_memory_stats(x.device)
        start = torch.cuda.memory_allocated(x.device)
    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        loss = F.cross_entropy(model(pixel_values=x).logits, y)
    loss.backward()
    optimizer.step()
    peak = 0
    if cuda:
        torch.cuda.synchronize(x.device)
        peak = torch.cuda.max_memory_allocated(x.device) - start
    optimizer.zero_grad(set_to_none=False)
    state = sum(t.numel() * t.element_size() for s in optimizer.state.values() for t in s.values()
                if torch.is_tensor(t) and t.dim() > 0)
    grads = sum(p.numel() * p.element_size() for p in model.parameters() if p.requires_grad)
    optimizer.zero_grad(set_to_none=True)
    return sum(storages.values()), grads + state, peak


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--shape", choices=tuple(SHAPES), default="small",
                        help="small: 12 x 192 at 96 px, batch 16; vit-b16: 12 x 768 at 224 px, batch 8")
    parser.add_argument("--hidden", type=int, default=None)
    parser.add_argument("--heads", type=int, default=None)
    parser.add_argument("--image", type=int, default=None)
    parser.add_argument("--batch", type=int, default=None)
    parser.add_argument("--labels", type=int, default=10)
    parser.add_argument("--steps", type=int, default=6, help="timed steps per method (after 1 warm-up)")
    parser.add_argument("--no_cache", action="store_true", help="leave out the cached variants")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--threads", type=int, default=0, help="torch threads on CPU (0: leave as is)")
    parser.add_argument("--clock", choices=("wall", "cpu"), default="wall",
                        help="wall: time.perf_counter; cpu: this process's CPU time (time.process_time; CPU only)")
    add_json_argument(parser)
    args = parser.parse_args()
    for key, value in SHAPES[args.shape].items():
        if getattr(args, key) is None:
            setattr(args, key, value)
    if args.threads:
        torch.set_num_threads(args.threads)
    clock = time.process_time if args.clock == "cpu" else time.perf_counter
    device = torch.device(args.device)
    base = build(args)
    g = torch.Generator().manual_seed(0)
    x = torch.randn(args.batch, 3, args.image, args.image, generator=g)
    y = torch.randint(0, args.labels, (args.batch,), generator=g)
    dataset = [{"pixel_values": x[i], "labels": int(y[i])} for i in range(args.batch)]
    x, y = x.to(device), y.to(device)

    total = sum(p.numel() for p in base.parameters())
    runs = {}
    for name, (make, cacheable) in METHODS.items():
        for cached in (False, True) if cacheable and not args.no_cache else (False,):
            model = copy.deepcopy(base)
            if make is not None:
                model = get_peft_model(model, make())
            model.to(device)
            inp = x
            if cached:  # the frozen prefix's output of the same batch, computed once (eval mode, no grad)
                cache = PrefixCache.build(model, dataset, collate_fn, batch_size=args.batch, device=device,
                                          progress=False)
                cache.attach(model)
                inp = torch.stack([cache[i]["pixel_values"] for i in range(args.batch)]).to(device)
            model.train()
            params = [p for p in model.parameters() if p.requires_grad]
            optimizer = torch.optim.AdamW(params, lr=1e-4)
            act, state, peak = training_memory(model, optimizer, inp, y)  # also the warm-up step
            runs[name + (", cached" if cached else "")] = dict(
                model=model, opt=optimizer, inp=inp, times=[], share=sum(p.numel() for p in params) / total,
                act=act, mem=act + state, peak=peak)
    for _ in range(args.steps):
        for run in runs.values():
            run["times"].append(train_step(run["model"], run["opt"], run["inp"], y, clock))

    ref = runs["full FT"]
    t_ref, a_ref, m_ref, p_ref = statistics.median(ref["times"]), ref["act"], ref["mem"], ref["peak"]
    cuda = device.type == "cuda"
    setting = (f"ViT 12x{args.hidden}, {args.heads} heads, {args.image}px/16 ({(args.image // 16) ** 2 + 1} tokens), "
               f"batch {args.batch}")
    print(f"{setting}, {args.device}, {torch.get_num_threads()} threads, {args.clock} clock, "
          f"median of {args.steps} interleaved steps")
    print(f"{'method':<40}{'trainable':>11}{'step ms':>10}{'x full':>8}{'act MiB':>9}{'x full':>8}"
          f"{'train mem MiB':>15}{'x full':>8}" + (f"{'CUDA peak MiB':>15}{'x full':>8}" if cuda else ""))
    rows = []
    for name, run in runs.items():
        t = statistics.median(run["times"])
        line = (f"{name:<40}{100 * run['share']:>10.2f}%{1000 * t:>10.1f}{t / t_ref:>8.2f}"
                f"{run['act'] / 2**20:>9.1f}{run['act'] / a_ref:>8.2f}{run['mem'] / 2**20:>15.1f}{run['mem'] / m_ref:>8.2f}")
        if cuda:
            line += f"{run['peak'] / 2**20:>15.1f}{run['peak'] / p_ref:>8.2f}"
        print(line)
        if name == "full FT":
            rows.append(info_row("full FT step time", 1000 * t, "ms"))
            continue
        mem_ratio = (run["peak"] / p_ref) if cuda else run["mem"] / m_ref
        goal = {"Layer FT (block 11)": "layer_ft", "SCL FT (block 10)": "scl_ft"}.get(name)
        if goal:
            rows.append(goal_row(f"{goal}_step", t / t_ref, f"{name}: step time", "x full FT"))
            rows.append(goal_row(f"{goal}_memory", mem_ratio, f"{name}: training memory"
                                 + (" (CUDA peak)" if cuda else " (act + grads + AdamW state)"), "x full FT"))
        else:
            rows.append(info_row(f"{name}: step time", t / t_ref, "x full FT"))
            rows.append(info_row(f"{name}: training memory" + (" (CUDA peak)" if cuda else " (act + grads + AdamW state)"),
                                 mem_ratio, "x full FT"))
        rows.append(info_row(f"{name}: saved activations", run["act"] / a_ref, "x full FT"))
        if name == "Layer FT (block 11)":  # one block of 12
            rows.append(goal_row("block_params", run["share"], f"{name}: trainable share", "of all"))
        else:
            rows.append(info_row(f"{name}: trainable share", run["share"], "of all"))
    print("act = saved-activation bytes (saved_tensors_hooks, distinct storages); "
          "train mem = act + grads + AdamW state of trainable params"
          + ("; CUDA peak = max_memory_allocated of the first step above the memory before it" if cuda else ""))
    print_goals(rows)
    if args.json is not None:
        notes = [f"{args.clock} clock, {torch.get_num_threads()} threads, median of {args.steps} interleaved steps",
                 "memory: " + ("CUDA max_memory_allocated of the first step" if cuda else
                               "saved activations (saved_tensors_hooks) + grads + AdamW state, exact")]
        record("adapters", f"{args.shape} {args.hidden}x{args.image}px b{args.batch}", args.device, rows, args.json,
               notes=[setting] + notes)


if __name__ == "__main__":
    main()
