"""Train-step time, memory and trainable share of full FT vs LoRA vs the hf-nc methods, side by side.

Run: .venv/bin/python benchmarks/adapters.py [--hidden 192 --image 96 --batch 16 --steps 6]

One ViT with 12 blocks (width --hidden, CPU-friendly by default), one training step = forward,
cross-entropy, backward and an AdamW step. Every method gets a fresh copy of the same base.
Steps are interleaved round-robin across methods so that machine noise hits all of them alike;
the time is the median step. Memory is *training memory* measured exactly, not sampled:

* saved activations: bytes of the distinct tensor storages autograd saves for backward during
  the forward (torch.autograd.graph.saved_tensors_hooks), i.e. the activation memory that
  backward keeps alive;
* plus gradients and AdamW state (2 tensors) of the trainable parameters;
* (the frozen weights are the same for every method and are not counted).

All numbers are also reported as ratios to full fine-tuning.
"""

from __future__ import annotations

import argparse
import copy
import statistics
import warnings

import torch
import torch.nn.functional as F
import transformers as tf
from peft import LoraConfig, get_peft_model

import hf_nc.adapters as A
from _common import train_step

warnings.filterwarnings("ignore")

METHODS = {
    "full FT": None,
    "LoRA r=8 q,v (+head)": lambda: LoraConfig(r=8, target_modules=["q_proj", "v_proj"], modules_to_save=["classifier"]),
    "Layer FT (block 11)": lambda: A.LayerFTConfig(layers=[-1]),
    "SCL FT (block 10)": lambda: A.SCLConfig(layer=-2),
    "head FT (all heads, block 11)": lambda: A.HeadFTConfig(heads={-1: "all"}),
}


def build(args):
    config = tf.ViTConfig(hidden_size=args.hidden, num_hidden_layers=12, num_attention_heads=args.heads,
                          intermediate_size=4 * args.hidden, image_size=args.image, patch_size=16,
                          num_labels=args.labels, attn_implementation="sdpa")
    torch.manual_seed(0)
    return tf.ViTForImageClassification(config)


def training_memory(model, optimizer, x, y) -> tuple[int, int]:
    """(saved-activation bytes, grads + AdamW state bytes) of one step."""
    storages = {}

    def pack(t):
        s = t.untyped_storage()
        storages[s.data_ptr()] = s.nbytes()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        loss = F.cross_entropy(model(pixel_values=x).logits, y)
    loss.backward()
    optimizer.step()
    optimizer.zero_grad(set_to_none=False)
    state = sum(t.numel() * t.element_size() for s in optimizer.state.values() for t in s.values()
                if torch.is_tensor(t) and t.dim() > 0)
    grads = sum(p.numel() * p.element_size() for p in model.parameters() if p.requires_grad)
    return sum(storages.values()), grads + state


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--hidden", type=int, default=192)
    parser.add_argument("--heads", type=int, default=3)
    parser.add_argument("--image", type=int, default=96)
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--labels", type=int, default=10)
    parser.add_argument("--steps", type=int, default=6, help="timed steps per method (after 1 warm-up)")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--threads", type=int, default=0, help="torch threads on CPU (0: leave as is)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    base = build(args)
    g = torch.Generator().manual_seed(0)
    x = torch.randn(args.batch, 3, args.image, args.image, generator=g).to(device)
    y = torch.randint(0, args.labels, (args.batch,), generator=g).to(device)

    runs = {}
    for name, make in METHODS.items():
        model = copy.deepcopy(base)
        if make is not None:
            model = get_peft_model(model, make())
        model.to(device).train()
        params = [p for p in model.parameters() if p.requires_grad]
        optimizer = torch.optim.AdamW(params, lr=1e-4)
        total = sum(p.numel() for p in base.parameters())
        act, state = training_memory(model, optimizer, x, y)  # also the warm-up step
        runs[name] = dict(model=model, opt=optimizer, times=[], share=sum(p.numel() for p in params) / total,
                          act=act, mem=act + state)
    for _ in range(args.steps):
        for run in runs.values():
            run["times"].append(train_step(run["model"], run["opt"], x, y))

    ref = runs["full FT"]
    t_ref, a_ref, m_ref = statistics.median(ref["times"]), ref["act"], ref["mem"]
    print(f"ViT: 12 blocks, width {args.hidden}, {args.heads} heads, {args.image}px/16 "
          f"({(args.image // 16) ** 2 + 1} tokens), batch {args.batch}, {args.device}, "
          f"{torch.get_num_threads()} threads, median of {args.steps} steps")
    print(f"{'method':<32}{'trainable':>11}{'step ms':>9}{'x full':>8}{'act MiB':>9}{'x full':>8}"
          f"{'train mem MiB':>15}{'x full':>8}")
    for name, run in runs.items():
        t = statistics.median(run["times"])
        print(f"{name:<32}{100 * run['share']:>10.2f}%{1000 * t:>9.1f}{t / t_ref:>8.2f}"
              f"{run['act'] / 2**20:>9.1f}{run['act'] / a_ref:>8.2f}{run['mem'] / 2**20:>15.1f}{run['mem'] / m_ref:>8.2f}")
    print("act = saved-activation bytes (saved_tensors_hooks, distinct storages); "
          "train mem = act + grads + AdamW state of trainable params")


if __name__ == "__main__":
    main()
