#!/usr/bin/env python
"""Wall time of NCTrainer (NC at every evaluation) vs plain transformers.Trainer, side by side.

The same short fine-tuning run (the built-in ViT, SCL FT on digits, evaluation every epoch) is
timed with ``Trainer``, with ``NCTrainer`` (train-subset NC + eval-data NC from hooks; the frozen
prefix of the train subset runs once, ``nc_prefix_cache``) and with ``NCTrainer`` without that
prefix cache, in alternating order, ``--repeats`` times; the median of each is reported and the
ratios printed. Goal: ratio <= 1.10 (issue 13: <= 1.05).

    python benchmarks/trainer.py                       # defaults: 3 epochs, 2 repeats
    python benchmarks/trainer.py --epochs 2 --repeats 1 --nc_train_samples 512 --nc_layers
    OMP_NUM_THREADS=1 python benchmarks/trainer.py      # steadier on a busy machine
    OMP_NUM_THREADS=1 python benchmarks/trainer.py --repeats 3 --clock cpu --json  # record for docs/PERFORMANCE.md

The run uses CUDA when available (``--device cpu`` forces the CPU); ``--clock cpu`` times this
process's CPU time instead of the wall clock (steadier on a shared CPU; not meaningful on a GPU).
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from typing import Callable

import torch
from peft import get_peft_model
from transformers import AutoModelForImageClassification, Trainer, TrainingArguments, set_seed
from transformers.utils import logging as hf_logging

import hf_nc
from hf_nc.checkpoints import resolve_builtin
from hf_nc.data import build_transforms, collate_fn, load_image_dataset
from hf_nc.trainer import NCTrainer
from _results import add_json_argument, goal_row, info_row, print_goals, record


def run(cls, args, data, prefix_cache: bool = True, clock: Callable[[], float] = time.perf_counter) -> float:
    train, test = data
    set_seed(0)
    names = train.features["label"].names
    model = AutoModelForImageClassification.from_pretrained(  # a built-in's stable name is its folder, not a Hub id
        resolve_builtin(args.model), id2label=dict(enumerate(names)), label2id={n: i for i, n in enumerate(names)}, ignore_mismatched_sizes=True)
    model = get_peft_model(model, hf_nc.SCLConfig(layer=args.layer))
    transform = build_transforms(model, train=False)
    with tempfile.TemporaryDirectory() as out:
        targs = TrainingArguments(
            output_dir=out, num_train_epochs=args.epochs, per_device_train_batch_size=64, per_device_eval_batch_size=256,
            learning_rate=3e-3, eval_strategy="epoch", save_strategy="no", logging_strategy="epoch", report_to="none",
            remove_unused_columns=False, disable_tqdm=True, use_cpu=args.device == "cpu",
            dataloader_pin_memory=args.device != "cpu", seed=0)
        kwargs = dict(model=model, args=targs, train_dataset=train.with_transform(transform),
                      eval_dataset=test.with_transform(transform), data_collator=collate_fn)
        if cls is NCTrainer:
            kwargs.update(nc_train_samples=args.nc_train_samples, nc_layers=args.nc_layers, nc_plots=args.plots,
                          nc_prefix_cache=prefix_cache)
        trainer = cls(**kwargs)
        start = clock()
        trainer.train()
        if args.device != "cpu":
            torch.cuda.synchronize()
        return clock() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default=hf_nc.DEFAULT_MODEL)
    parser.add_argument("--dataset", default="digits")
    parser.add_argument("--layer", type=int, default=-6)
    parser.add_argument("--epochs", type=float, default=3)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--nc_train_samples", type=int, default=512)
    parser.add_argument("--nc_layers", action="store_true")
    parser.add_argument("--plots", action="store_true", help="also draw the PNGs at the end (a one-off ~0.5 s, timed separately otherwise)")
    parser.add_argument("--skip_uncached", action="store_true", help="do not time NCTrainer without its train-subset prefix cache")
    parser.add_argument("--device", choices=("cpu", "cuda"), default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--clock", choices=("wall", "cpu"), default="wall",
                        help="wall: time.perf_counter; cpu: this process's CPU time (time.process_time; CPU only)")
    add_json_argument(parser)
    args = parser.parse_args()
    clock = time.process_time if args.clock == "cpu" else time.perf_counter
    hf_logging.set_verbosity_error()
    data = load_image_dataset(args.dataset)
    data = (data["train"], data["test"])
    variants = [("Trainer", Trainer, True), ("NCTrainer", NCTrainer, True)]
    if not args.skip_uncached:
        variants.append(("NCTrainer, no prefix cache", NCTrainer, False))
    times = {name: [] for name, _, _ in variants}
    for _ in range(args.repeats):
        for name, cls, cached in variants:
            times[name].append(run(cls, args, data, prefix_cache=cached, clock=clock))
            print(f"{name:>26}: {times[name][-1]:.2f} s", flush=True)
    plain, nc = statistics.median(times["Trainer"]), statistics.median(times["NCTrainer"])
    print(f"\n{args.epochs:g} epochs of SCL FT on {args.dataset} ({len(data[0])} train / {len(data[1])} test), eval every epoch, "
          f"{args.nc_train_samples} train images for NC{', per-block NC1' if args.nc_layers else ''}; {torch.get_num_threads()} threads")
    if not args.plots:
        from hf_nc.trainer import plot_history

        records = [{"step": s, "train": {"nc1": 1.0 / s, "blocks": {"0": 1.0}}, "eval": {"nc1": 2.0 / s}} for s in (1, 2, 3)]
        with tempfile.TemporaryDirectory() as out:
            start = time.perf_counter()
            plot_history(records, out)
            print(f"drawing the two PNGs at the end of training (not in the timings): {time.perf_counter() - start:.2f} s")
    spread = {name: f"{min(t):.2f}-{max(t):.2f}" for name, t in times.items()}
    print(f"Trainer {plain:.2f} s | NCTrainer {nc:.2f} s | ratio {nc / plain:.3f} (goal <= 1.10; issue 13: <= 1.05)")
    if "NCTrainer, no prefix cache" in times:
        uncached = statistics.median(times["NCTrainer, no prefix cache"])
        print(f"NCTrainer without the train-subset prefix cache {uncached:.2f} s | ratio {uncached / plain:.3f}")
    print("min-max of the repeats (s): " + ", ".join(f"{k} {v}" for k, v in spread.items()))
    what = f"NCTrainer / Trainer{' (with --nc_layers)' if args.nc_layers else ''}"
    rows = [info_row("Trainer run", plain, "s"), goal_row("trainer_overhead", nc / plain, what),
            goal_row("trainer_overhead_13", nc / plain, what)]
    if "NCTrainer, no prefix cache" in times:
        rows.append(info_row("NCTrainer without the train-subset prefix cache / Trainer", uncached / plain))
    print_goals(rows)
    if args.json is not None:
        setting = f"{args.dataset} {args.epochs:g}ep nc{args.nc_train_samples}{' nc_layers' if args.nc_layers else ''}"
        record("trainer", setting, args.device, rows, args.json, notes=[
            f"SCL FT (layer {args.layer}) of {args.model} on {args.dataset}, {args.epochs:g} epochs, eval every epoch, "
            f"{args.nc_train_samples} train images for NC; median of {args.repeats} alternating repeats, "
            f"{args.clock} clock, {torch.get_num_threads()} threads",
            f"min-max of the repeats (s): " + ", ".join(f"{k} {v}" for k, v in spread.items())])


if __name__ == "__main__":
    main()
