"""One entry point for labelled image data: Hub names, local folders, built-in offline sets."""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

from datasets import ClassLabel, Dataset, DatasetDict, Image

from .builtin import BUILTIN_NAMES, load_digits_dataset, load_fashion_mnist
from .errors import DataNotFoundError, hub_offline, hub_unreachable_reason
from .subsets import quiet_datasets, sample_shots, select_classes

IMAGE_COLUMNS = ("image", "img", "images", "picture", "pixel_values")
LABEL_COLUMNS = ("label", "labels", "fine_label", "class", "target", "coarse_label")
TEST_SPLITS = ("test", "validation", "valid", "val")


def _detect(ds: Dataset, given: str | None, candidates: Sequence[str], kind: str, prefer) -> str:
    cols = list(ds.column_names)
    if given is not None:
        if given not in cols:
            raise ValueError(f"{kind} column '{given}' not in the dataset's columns {cols}")
        return given
    for c in candidates:
        if c in cols:
            return c
    typed = [c for c in cols if isinstance(ds.features[c], prefer)]
    if len(typed) == 1:
        return typed[0]
    raise ValueError(f"cannot tell which column holds the {kind}s among {cols}; pass {kind}_column=...")


def _standardise(ds: Dataset, image_column: str, label_column: str) -> Dataset:
    """Keep the image and label columns, renamed to ``image`` / ``label``; labels become a ClassLabel."""
    ds = ds.select_columns([image_column, label_column])
    ds = ds.rename_columns({k: v for k, v in ((image_column, "image"), (label_column, "label")) if k != v})
    if not isinstance(ds.features["image"], Image):
        ds = ds.cast_column("image", Image())
    return ds


def _encode_labels(train: Dataset, test: Dataset | None = None):
    """Give both splits the same ClassLabel (train's, or one built from the sorted values of both)."""
    if isinstance(train.features["label"], ClassLabel):
        if test is not None and test.features["label"] != train.features["label"]:
            if not isinstance(test.features["label"], ClassLabel) or test.features["label"].names != train.features["label"].names:
                raise ValueError("train and test splits have different label classes")
        return train, test
    values = sorted(set(train["label"]) | (set(test["label"]) if test is not None else set()))
    names = [str(v) for v in values]
    if len(set(names)) != len(names):
        raise ValueError(f"label values {values} do not have distinct string names")
    index = {v: i for i, v in enumerate(values)}
    feature = ClassLabel(names=names)

    def encode(ds):
        features = ds.features.copy()
        features["label"] = feature
        with quiet_datasets():
            return ds.map(lambda y: {"label": [index[v] for v in y]}, batched=True, input_columns=["label"], features=features)

    return encode(train), (encode(test) if test is not None else None)


def _is_saved_to_disk(path: Path) -> bool:
    return (path / "dataset_dict.json").is_file() or (path / "state.json").is_file()


def _load_raw(name_or_path: str, **load_kwargs) -> DatasetDict:
    key = BUILTIN_NAMES.get(str(name_or_path).lower())
    if key == "digits":
        return load_digits_dataset()
    if key == "fashion_mnist":
        return load_fashion_mnist()
    from datasets import load_dataset, load_from_disk

    path = Path(os.path.expanduser(str(name_or_path)))
    if path.is_dir():
        if _is_saved_to_disk(path):  # Dataset/DatasetDict.save_to_disk output
            data = load_from_disk(str(path))
            return data if isinstance(data, DatasetDict) else DatasetDict(train=data)
        try:  # image folder (train/test subfolders of class folders) or a local dataset repo
            return load_dataset(str(path), **load_kwargs)
        except FileNotFoundError as e:
            raise DataNotFoundError(f"no loadable data under '{path}': {e}") from e
    looks_local = str(name_or_path).startswith((".", "/", "~")) or os.sep + os.sep in str(name_or_path)
    if looks_local or str(name_or_path).count("/") > 1:
        raise DataNotFoundError(f"'{name_or_path}' is not a local folder (and not a Hub dataset name)")
    offline = hub_offline()  # offline, load_dataset only looks in the local cache (and fails at once)
    reason = None if offline else hub_unreachable_reason()
    if reason:
        raise DataNotFoundError(
            f"'{name_or_path}' is not a built-in set or a local folder, and the Hub is unreachable ({reason}). "
            "Save the dataset locally (`save_to_disk`) and pass that folder, or set HF_HUB_OFFLINE=1 to use the cache."
        )
    try:
        data = load_dataset(str(name_or_path), **load_kwargs)
    except Exception as e:
        if offline:
            why = "the Hub is off (HF_HUB_OFFLINE/HF_DATASETS_OFFLINE is set) and it is not in the local cache"
        else:
            why = f"{type(e).__name__}: {e}"
        raise DataNotFoundError(
            f"could not load '{name_or_path}': not a built-in set ({', '.join(sorted(BUILTIN_NAMES))}), not a "
            f"local folder, and from the Hub: {why}. Save the dataset locally (`save_to_disk`) and pass that folder."
        ) from e
    return data if isinstance(data, DatasetDict) else DatasetDict(train=data)


def load_image_dataset(
    name_or_path: str,
    *,
    image_column: str | None = None,
    label_column: str | None = None,
    shots_per_class: int | None = None,
    classes: Sequence[int | str] | None = None,
    seed: int = 0,
    test_size: float | int = 0.2,
    split_seed: int = 0,
    **load_kwargs,
) -> DatasetDict:
    """Load labelled images as a ``DatasetDict`` with ``train`` and ``test`` splits.

    Every split has exactly two columns, ``image`` (``datasets.Image``) and ``label``
    (``ClassLabel``, names kept).

    ``name_or_path`` is one of
      - a built-in offline set: ``"digits"`` (scikit-learn's 8x8 digits, fixed stratified
        1347/450 split) or ``"fashion_mnist"`` (Debian IDX files, else the Hub);
      - a local folder: a ``save_to_disk`` output, an image folder (``train/<class>/*.png``,
        ``test/<class>/*.png``) or any local dataset repo ``datasets.load_dataset`` reads;
      - a Hub dataset name, passed to ``datasets.load_dataset(name, **load_kwargs)``.

    Columns are detected (``image``/``img``/..., ``label``/``labels``/``fine_label``/...) unless
    given. The test split is ``test``, else ``validation``, else a stratified split of ``train``
    (``test_size``, ``split_seed``). Then ``classes`` keeps those classes (ids or names) in every
    split and remaps them to ``0..k-1`` in the order given; ``shots_per_class`` draws a stratified,
    ``seed``-ed few-shot subset of ``train`` only.

    Raises :class:`DataNotFoundError` (fast, no Hub retries when offline) if the data is missing.
    """
    raw = _load_raw(name_or_path, **load_kwargs)
    if "train" not in raw:
        raise ValueError(f"'{name_or_path}' has no 'train' split (splits: {list(raw)})")
    train = raw["train"]
    icol = _detect(train, image_column, IMAGE_COLUMNS, "image", Image)
    lcol = _detect(train, label_column, LABEL_COLUMNS, "label", ClassLabel)
    train = _standardise(train, icol, lcol)
    test_name = next((s for s in TEST_SPLITS if s in raw), None)
    if test_name is not None:
        test = _standardise(raw[test_name], icol, lcol)
        train, test = _encode_labels(train, test)
    else:
        train, _ = _encode_labels(train)
        parts = train.train_test_split(test_size=test_size, seed=split_seed, stratify_by_column="label")
        train, test = parts["train"], parts["test"]
    data = DatasetDict(train=train, test=test)
    if classes is not None:
        data = select_classes(data, classes)
    if shots_per_class is not None:
        data["train"] = sample_shots(data["train"], shots_per_class, seed=seed)
    return data
