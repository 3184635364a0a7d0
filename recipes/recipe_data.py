"""The recipes' data: the splits of ``--dataset`` (validation drawn outside the few-shot subset) and their origin."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Optional

from datasets import Dataset
from recipe_args import DataArguments, check_sample_count, split_list

from hf_nc.data import load_image_dataset


@dataclass
class RecipeData:
    """The recipe's splits, their class names, and how each split was made (for the log and summary)."""

    train: Dataset
    test: Dataset
    names: list[str]
    validation: Optional[Dataset] = None
    provenance: dict[str, str] = field(default_factory=dict)


def subset(ds: Dataset, n: Optional[int], seed: int, flag: str) -> Dataset:
    """``hf_nc.data.stratified_subset`` (seeded, stratified ``n`` of ``ds``), errors naming ``flag``."""
    from hf_nc.data import stratified_subset

    check_sample_count(n, flag)  # 0 used to mean "every image" silently; leaving the flag out says that
    try:
        return stratified_subset(ds, n, seed=seed)
    except ValueError as e:
        raise ValueError(f"{flag} {n}: {e}") from e


def load_data(dargs: DataArguments, seed: int) -> RecipeData:
    """The splits of ``--dataset`` after ``--classes``, ``--shots_per_class``, the validation draw and ``--max_*_samples``.

    The validation split is the dataset's own, else (``--train_val_split`` /
    ``--validation_shots_per_class``) a seeded, stratified draw of training images outside the
    few-shot subset. ``--max_train_samples`` / ``--max_eval_samples`` take seeded, stratified
    subsets (an image folder is sorted by class: its first N images are one or two classes).
    """
    from hf_nc.data import split_provenance

    classes = split_list(dargs.classes, "--classes") if dargs.classes else None
    if dargs.train_val_split and not 0.0 <= dargs.train_val_split < 1.0:
        raise ValueError(f"--train_val_split must be in [0, 1), got {dargs.train_val_split}")
    validation = {}
    if dargs.validation_shots_per_class is not None:  # 0 used to fall back to --train_val_split silently
        if dargs.validation_shots_per_class < 1:
            raise ValueError(f"--validation_shots_per_class must be >= 1 (no validation split: --train_val_split 0), "
                             f"got {dargs.validation_shots_per_class}")
        validation["validation_shots_per_class"] = dargs.validation_shots_per_class
    elif dargs.train_val_split:
        validation["validation_split"] = dargs.train_val_split
    data = load_image_dataset(dargs.dataset, image_column=dargs.image_column, label_column=dargs.label_column,
                              shots_per_class=dargs.shots_per_class, classes=classes, seed=seed, **validation)
    provenance = dict(split_provenance(data))
    splits = {}
    for split, flag, n in (("train", "--max_train_samples", dargs.max_train_samples), ("validation", "--max_eval_samples", dargs.max_eval_samples),
                           ("test", "--max_eval_samples", dargs.max_eval_samples)):
        if split in data:
            splits[split] = subset(data[split], n, seed, flag)
            if len(splits[split]) < len(data[split]):
                provenance[split] = f"{provenance.get(split, split)}; {flag} {n}: seeded (seed {seed}) stratified subset"
    train, test, val = splits["train"], splits["test"], splits.get("validation")
    # a train-only folder split off into test is logged by load_image_dataset; every split's origin is in the summary
    return RecipeData(train=train, test=test, names=list(train.features["label"].names), validation=val, provenance=provenance)
