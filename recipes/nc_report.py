"""Per-layer neural-collapse report of a frozen model on a labelled image dataset.

    python recipes/nc_report.py                                   # built-in ViT on digits
    python recipes/nc_report.py --model_name_or_path facebook/dinov2-small --dataset cifar10
    python recipes/nc_report.py --model_name_or_path facebook/dinov2-small --dataset fashion_mnist --image_size 56
    torchrun --standalone --nproc_per_node 2 recipes/nc_report.py # same numbers, 2 processes

Prints the NC table (one row per block, then ``final``: the features entering the
classifier), writes ``nc_report.json`` and ``nc1_per_layer.png`` (log scale) to
``--output_dir``. Each process streams its own shard; the statistics are summed exactly (a
process whose shard is empty, e.g. fewer batches than processes, contributes zeros).
"""

from __future__ import annotations

import json
import sys
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Literal, Optional

import numpy as np
from accelerate.utils import DataLoaderConfiguration
from recipe_args import check_sample_count, int_arg, split_list
from torch.utils.data import DataLoader
from transformers import AutoModel, HfArgumentParser
from transformers.utils import logging as hf_logging

from hf_nc.accelerate_utils import build_accelerator
from hf_nc.checkpoints import resolve_builtin
from hf_nc.data import build_transforms, collate_fn, load_image_dataset, split_provenance, stratified_subset
from hf_nc.layer_nc import layer_nc
from hf_nc.metrics import json_safe
from hf_nc.metrics.validation import check_within_class
from hf_nc.plots import plot_layer_curve

COLUMNS = ("nc1", "nc2_etf", "nc2_equinorm", "nc2_equiangle", "ncc_acc", "cdnv")


@dataclass
class ReportArguments:
    model_name_or_path: Optional[str] = field(default=None, metadata={"help": "Local folder or Hub id; default: the built-in tiny ViT."})
    dataset: str = field(default="digits", metadata={"help": "Built-in set (digits, fashion_mnist), local folder or Hub dataset."})
    split: str = field(default="train", metadata={"help": "Split to measure (train, test, or validation when the dataset has one)."})
    shots_per_class: Optional[int] = field(default=None, metadata={"help": "Measure on a stratified few-shot subset."})
    max_samples: Optional[int] = field(default=None, metadata={"help": "Measure on a seeded, stratified subset of this many images of the split (every class kept)."})
    layers: str = field(default="all", metadata={"help": "'all' or comma-separated block indices (negative from the end)."})
    pooling: Optional[str] = field(default=None, metadata={"help": "cls or mean; default: the family's convention."})
    batch_size: int = field(default=128, metadata={"help": "Batch size per process."})
    ncc: bool = field(default=True, metadata={"help": "Also compute ncc_acc (a second pass over the data)."})
    output_dir: str = field(default="outputs/nc_report", metadata={"help": "Where the JSON and the plot go."})
    seed: int = field(default=0, metadata={"help": "Seed of the few-shot subset."})
    image_size: Optional[int] = field(
        default=None,
        metadata={"help": "Feed the model image_size px inputs instead of its own size (e.g. 56 for a 224 px model on 28 px images: ~16x faster); default: the model's."},
    )
    progress: bool = field(default=True, metadata={"help": "Progress bars over the feature passes (main process only)."})
    on_bad_image: Literal["raise", "skip"] = field(default="raise", metadata={"help": "A local image folder is verified up front: 'raise' stops naming each undecodable file, 'skip' drops them with a warning."})


def format_table(results: dict) -> str:
    """The per-layer metrics as a fixed-width text table."""
    lines = [f"{'layer':>6} " + " ".join(f"{c:>13}" for c in COLUMNS)]
    for key, metrics in results.items():
        lines.append(f"{key!s:>6} " + " ".join(f"{metrics.get(c, float('nan')):>13.4g}" for c in COLUMNS))
    return "\n".join(lines)


def check_every_class(data, num_classes: int, what: str) -> None:
    """Refuses a split without an image of some class before any forward pass: NCStats would refuse it
    only after the whole pass, naming no split."""
    empty = np.flatnonzero(np.bincount(np.asarray(data["label"], dtype=np.int64), minlength=num_classes) == 0).tolist()
    if empty:
        raise ValueError(f"{what} has no image of classes {empty[:20]} (of its label column's {num_classes}): NC needs every "
                         "class's mean; measure another --split, or a dataset whose labels are only the classes present")


def check_within_class_flags(data, num_classes: int, cause: str) -> None:
    """Refuses a split with one image in every class before any forward pass, naming ``cause`` (a flag).

    NCStats would refuse it only after the whole pass (NC1 and CDNV are 0 by construction there).
    """
    try:
        check_within_class(np.bincount(np.asarray(data["label"], dtype=np.int64), minlength=num_classes))
    except ValueError as e:
        raise ValueError(f"{cause}: {e}") from e


def main(argv: list[str] | None = None) -> dict:
    (args,) = HfArgumentParser(ReportArguments).parse_args_into_dataclasses(args=argv)
    if args.model_name_or_path is None:
        from hf_nc.checkpoints import DEFAULT_MODEL

        args.model_name_or_path = DEFAULT_MODEL
    hf_logging.set_verbosity_error()  # a classifier checkpoint loaded as a bare backbone warns about its head
    # Uneven last batches must not be padded with repeated samples: NC would count them twice.
    accelerator = build_accelerator(dataloader_config=DataLoaderConfiguration(even_batches=False))

    model = AutoModel.from_pretrained(resolve_builtin(args.model_name_or_path)).to(accelerator.device)
    splits = load_image_dataset(args.dataset, shots_per_class=args.shots_per_class, seed=args.seed, on_bad_image=args.on_bad_image, progress=args.progress)
    if args.split not in splits:
        raise ValueError(f"--split {args.split!r}: '{args.dataset}' has the splits {list(splits)}")
    data, provenance = splits[args.split], split_provenance(splits)[args.split]
    check_sample_count(args.max_samples, "--max_samples")
    num_classes = data.features["label"].num_classes
    check_every_class(data, num_classes, f"the {args.split!r} split of {args.dataset!r}")
    shots = args.shots_per_class is not None and args.split == "train"
    check_within_class_flags(data, num_classes, "--shots_per_class 1 (use --shots_per_class >= 2)" if shots
                             else f"the {args.split!r} split of {args.dataset!r}")
    if args.max_samples is not None and args.max_samples < len(data):
        if args.max_samples < num_classes:  # stratified_indices' own error names no flag
            raise ValueError(f"--max_samples {args.max_samples} cannot hold one image of each of the {num_classes} classes: "
                             f"use --max_samples >= {num_classes}")
        data = stratified_subset(data, args.max_samples, seed=args.seed)
        provenance += f", {len(data)} of them (stratified, seed {args.seed})"
    check_within_class_flags(data, num_classes, f"--max_samples {args.max_samples} (use --max_samples > {num_classes})")
    transform = build_transforms(model, train=False, image_size=args.image_size)
    loader = DataLoader(data.with_transform(transform), batch_size=args.batch_size, collate_fn=collate_fn)
    loader = accelerator.prepare_data_loader(loader)

    layers = "all" if args.layers.strip() == "all" else [int_arg(i, "--layers") for i in split_list(args.layers, "--layers")]
    results = layer_nc(model, loader, num_classes, layers=layers, pooling=args.pooling, ncc=args.ncc, progress=args.progress)
    results = {str(k): v for k, v in results.items()}

    if accelerator.is_main_process:
        out = Path(args.output_dir)
        out.mkdir(parents=True, exist_ok=True)
        size = "x".join(map(str, transform.image_transform.spec.size))
        print(f"\nNC of {args.model_name_or_path} on {args.dataset}/{args.split} ({len(data)} images, {num_classes} classes, {size} px)")
        print(f"split: {provenance}")
        print(format_table(results))
        record = {"args": asdict(args), "split": provenance, "image_size": list(transform.image_transform.spec.size), "layers": results}
        (out / "nc_report.json").write_text(json.dumps(json_safe(record), indent=2, allow_nan=False))  # undefined: null
        blocks = {k: v["nc1"] for k, v in results.items() if k != "final"}
        plot_layer_curve({args.split: blocks}, out / "nc1_per_layer.png", title=f"NC1 per block: {Path(args.model_name_or_path).name} on {args.dataset}")
        print(f"\nwrote {out / 'nc_report.json'} and {out / 'nc1_per_layer.png'}")
    return results


if __name__ == "__main__":
    main(sys.argv[1:])
