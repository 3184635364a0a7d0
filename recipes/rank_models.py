"""Rank candidate pre-trained models for a downstream task by neural collapse, and pick a block to tune.

    python recipes/rank_models.py                       # built-in ViT vs the same ViT randomly initialised, on digits
    python recipes/rank_models.py --linear_probe        # ... and check the ranking against linear probes
    python recipes/rank_models.py --linear_probe --scores logme,nc1,ncti,hscore_shrinkage --rank_by logme
    python recipes/rank_models.py --candidates facebook/dinov2-small,google/vit-base-patch16-224 --dataset cifar10 --shots_per_class 50
    torchrun --standalone --nproc_per_node 2 recipes/rank_models.py --linear_probe   # same numbers, 2 processes

Rule (Li et al., TMLR 2024): the frozen model whose final features are more collapsed (lower
NC1) on the downstream TRAINING data should linearly probe better. ``--scores`` adds any of
``hf_nc.selection.SCORES`` (LogME, NCTI, H-score, ...) from the same forward pass and
``--rank_by`` picks the one that orders the candidates; with ``--linear_probe`` every score's
Kendall / weighted tau and Spearman against the probes is printed. Prints the ranking table and
the block to tune (SCL FT or Layer FT) for the top model; writes ``ranking.json`` and
``nc1_per_layer.png`` (per-block NC1 of every candidate, log scale) to ``--output_dir``.
A candidate ``random:<path>`` is that checkpoint's architecture, randomly initialised.
"""

from __future__ import annotations

import json
import sys
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Optional

from transformers import HfArgumentParser
from transformers.utils import logging as hf_logging

from hf_nc.accelerate_utils import build_accelerator
from hf_nc.plots import plot_layer_curve
from hf_nc.selection import METHODS, choose_block, rank_models, tunable_blocks


@dataclass
class RankArguments:
    candidates: Optional[str] = field(default=None, metadata={"help": "Comma-separated local folders / Hub ids / random:<path>; default: the built-in ViT and random:<built-in ViT>."})
    dataset: str = field(default="digits", metadata={"help": "Built-in set (digits, fashion_mnist), local folder or Hub dataset."})
    shots_per_class: Optional[int] = field(default=None, metadata={"help": "Rank on a stratified few-shot training subset."})
    linear_probe: bool = field(default=False, metadata={"help": "Also linear-probe every candidate (test split) and report the rank correlation."})
    layers: str = field(default="all", metadata={"help": "'all' (per-block NC and a suggested block) or 'final'."})
    scores: Optional[str] = field(default=None, metadata={"help": "Comma-separated scores of hf_nc.selection.SCORES (default: nc1)."})
    rank_by: Optional[str] = field(default=None, metadata={"help": "The score that orders the candidates (default: the first of --scores)."})
    method: str = field(default="scl", metadata={"help": "Fine-tuning method to suggest a block for: scl or layer."})
    tolerance: float = field(default=0.1, metadata={"help": "SCL knee: share of the log-NC1 range above the minimum that counts as reached."})
    batch_size: int = field(default=128, metadata={"help": "Batch size per process."})
    seed: int = field(default=0, metadata={"help": "Seed of the few-shot subset and of random: candidates."})
    output_dir: str = field(default="outputs/rank_models", metadata={"help": "Where ranking.json and nc1_per_layer.png go."})


def main(argv: list[str] | None = None) -> dict:
    (args,) = HfArgumentParser(RankArguments).parse_args_into_dataclasses(args=argv)
    if args.candidates is None:
        from hf_nc.checkpoints import DEFAULT_MODEL

        args.candidates = f"{DEFAULT_MODEL},random:{DEFAULT_MODEL}"
    if args.layers not in ("all", "final"):
        raise ValueError(f"--layers must be 'all' or 'final', got {args.layers!r}")
    if args.method not in METHODS:  # checked before the ranking's passes, not after them
        raise ValueError(f"--method must be one of {METHODS}, got {args.method!r}")
    if not 0 <= args.tolerance <= 1:  # choose_block refused it only after every candidate's pass
        raise ValueError(f"--tolerance must be in [0, 1] (0: the NC1 minimum itself, 1: block 0), got {args.tolerance}")
    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()
    accelerator = build_accelerator()  # one process per rank; rank_models shards the data itself

    candidates = [c.strip() for c in args.candidates.split(",") if c.strip()]
    scores = [x.strip() for x in args.scores.split(",") if x.strip()] if args.scores else None
    ranking = rank_models(candidates, args.dataset, layers=args.layers, linear_probe=args.linear_probe, shots_per_class=args.shots_per_class,
                          batch_size=args.batch_size, device=accelerator.device, seed=args.seed, scores=scores, rank_by=args.rank_by)
    suggestion = None
    if args.layers == "all":
        curve = ranking.best.nc1_per_layer
        n = tunable_blocks(len(curve), args.method)  # SCL: never the last block
        suggestion = choose_block({b: v for b, v in curve.items() if b < n}, args.method, tolerance=args.tolerance)
        suggestion.nc1_per_layer = [curve[b] for b in sorted(curve)]
        suggestion.model = ranking.best.name

    out = {"args": asdict(args), "ranking": ranking.to_dict(), "suggestion": suggestion.to_dict() if suggestion else None}
    if accelerator.is_main_process:
        path = Path(args.output_dir)
        path.mkdir(parents=True, exist_ok=True)
        print(f"\nRanking on {args.dataset} (train: {ranking.num_train} images, {ranking.num_classes} classes"
              + (f"; probe test: {ranking.num_test}" if ranking.num_test else "") + ")")
        print(ranking.table())
        if suggestion:
            print(f"\nTop model {ranking.labels()[ranking.best.name]}: {suggestion}\n  rule ({args.method}): {suggestion.rule}")
        (path / "ranking.json").write_text(json.dumps(out, indent=2, allow_nan=False))
        written = [path / "ranking.json"]
        if args.layers == "all":
            labels = ranking.labels()  # distinct: two folders named alike would share one curve
            curves = {labels[c.name]: {k: v for k, v in c.nc1_per_layer.items() if v == v} for c in ranking.candidates}
            written.append(plot_layer_curve({k: v for k, v in curves.items() if v}, path / "nc1_per_layer.png",
                                            title=f"NC1 per block on {args.dataset} (train), frozen candidates"))
        print("\nwrote " + " and ".join(map(str, written)))
    accelerator.wait_for_everyone()
    return out


if __name__ == "__main__":
    main(sys.argv[1:])
