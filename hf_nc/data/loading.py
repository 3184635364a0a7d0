"""One entry point for labelled image data: Hub names, local folders, built-in offline sets.

Besides the data, :func:`load_image_dataset` records how each split was made (which source
split, which fraction, which seed, which classes and shots) in the split's
``info.description``; :func:`split_provenance` reads it back for logs and run summaries.
"""

from __future__ import annotations

import io
import logging
import math
import os
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Literal

import numpy as np
from datasets import ClassLabel, Dataset, DatasetDict, Image, Value

from .builtin import BUILTIN_NAMES, load_digits_dataset, load_fashion_mnist
from .errors import CorruptImageError, DataNotFoundError, hub_offline, hub_unreachable_reason
from .subsets import check_label_range, few_shot_indices, proportional_indices, quiet_datasets, select_classes

logger = logging.getLogger(__name__)

IMAGE_COLUMNS = ("image", "img", "images", "picture", "pixel_values")
LABEL_COLUMNS = ("label", "labels", "fine_label", "class", "target", "coarse_label")
TEST_SPLITS = ("test",)
VALIDATION_SPLITS = ("validation", "valid", "val")
PROVENANCE_PREFIX = "hf-nc split: "  # the line of info.description that split_provenance reads


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
    if kind == "label" and len(cols) == 1:
        raise ValueError(f"the data has no label column (its only column: {cols[0]!r}); an image folder with a single class "
                         "folder loads without labels: hf-nc needs at least 2 classes")
    raise ValueError(f"cannot tell which column holds the {kind}s among {cols}; pass {kind}_column=...")


def _array_dtype(feature) -> str | None:
    """The numeric dtype of an array-valued column (``List``/``Sequence`` of ``Value``, ``ArrayXD``), or None."""
    for _ in range(8):
        if isinstance(feature, Value):
            return feature.dtype
        if hasattr(feature, "dtype") and hasattr(feature, "shape"):  # Array2D / Array3D
            return feature.dtype
        feature = getattr(feature, "feature", None)
        if feature is None:
            return None
    return None


def _pixel_scale(ds: Dataset, column: str, dtype: str, split: str) -> float:
    """The factor that takes the column's pixel values to 0..255, from its dtype and, for plain
    integer and float columns, its range over the whole column (one rule for every image)."""
    if dtype == "uint8":
        return 1.0
    if dtype == "uint16":
        return 255.0 / 65535.0
    lo, hi = np.inf, -np.inf
    for batch in ds.iter(batch_size=1000):
        for x in batch[column]:
            a = np.asarray(x, dtype=np.float64)
            if a.size:
                lo, hi = min(lo, float(np.nanmin(a))), max(hi, float(np.nanmax(a)))
    if not np.isfinite(lo) or not np.isfinite(hi) or lo < 0:
        raise ValueError(f"the {split} split's image arrays ({dtype}) hold values in [{lo:g}, {hi:g}]: pixels must be finite "
                         "and >= 0 (0..1 or 0..255 for floats, 0..255 or 0..65535 for integers)")
    if dtype.startswith("float"):
        if hi <= 1.0:
            return 255.0
        if hi <= 255.0:
            logger.warning("the %s split's float image arrays go up to %g: read as 0..255 pixels", split, hi)
            return 1.0
    elif hi <= 255:
        return 1.0
    elif hi <= 65535:
        return 255.0 / 65535.0
    raise ValueError(f"the {split} split's image arrays ({dtype}) go up to {hi:g}: scale them to 0..255 (or floats to 0..1)")


def _array_to_image(x, scale: float, split: str):
    """One array image (H x W, H x W x C or C x H x W, C in 1/3/4) as an 8-bit PIL image."""
    from PIL import Image as PILImage

    a = np.asarray(x, dtype=np.float64)
    if a.ndim == 3 and a.shape[0] in (1, 3, 4) and a.shape[-1] not in (1, 3, 4):  # channel-first (torch layout)
        a = np.moveaxis(a, 0, -1)
    if a.ndim == 3 and a.shape[-1] == 1:
        a = a[..., 0]
    if not (a.ndim == 2 or (a.ndim == 3 and a.shape[-1] in (3, 4))):
        raise ValueError(f"an image array of the {split} split has shape {a.shape}: expected H x W, H x W x C or C x H x W "
                         "with C = 1, 3 or 4")
    a8 = np.clip(np.rint(a * scale), 0, 255).astype(np.uint8)
    return PILImage.fromarray(a8, mode="L" if a8.ndim == 2 else ("RGB" if a8.shape[-1] == 3 else "RGBA"))


def _standardise(ds: Dataset, image_column: str, label_column: str, split: str = "train") -> Dataset:
    """Keep the image and label columns, renamed to ``image`` / ``label``.

    Array-valued images (numpy arrays or nested lists) become 8-bit PIL images with one scale for
    the whole column (:func:`_pixel_scale`): ``datasets.Image()`` would store a grayscale uint8
    array as 32-bit mode ``"I"``, which reads as 16-bit (almost black). Labels that are missing
    (None) are an error naming the split."""
    missing = [c for c in (image_column, label_column) if c not in ds.column_names]
    if missing:
        raise ValueError(f"the {split} split has no column {missing[0]!r} (its columns: {ds.column_names}); every split needs "
                         "images and labels: an unlabelled split cannot be used for training or evaluation")
    ds = ds.select_columns([image_column, label_column])
    ds = ds.rename_columns({k: v for k, v in ((image_column, "image"), (label_column, "label")) if k != v})
    if not isinstance(ds.features["label"], ClassLabel):
        none = sum(v is None for v in ds["label"])
        if none:
            raise ValueError(f"{none} of {len(ds)} rows of the {split} split have no label (None): drop or label them")
    if not isinstance(ds.features["image"], Image):
        dtype = _array_dtype(ds.features["image"])
        if dtype is None:
            ds = ds.cast_column("image", Image())
        else:
            scale = _pixel_scale(ds, "image", dtype, split)
            features = ds.features.copy()
            features["image"] = Image()
            with quiet_datasets():
                ds = ds.map(lambda xs: {"image": [_array_to_image(x, scale, split) for x in xs]}, batched=True,
                            input_columns=["image"], features=features)
    return ds


def _check_label_range(splits: dict[str, Dataset]) -> None:
    """Every label of every split is a class id ``0..K-1`` (see :func:`check_label_range`)."""
    for name, ds in splits.items():
        check_label_range(np.asarray(ds["label"], dtype=np.int64), ds.features["label"].num_classes, f"the {name} split")


def _encode_labels(splits: dict[str, Dataset]) -> dict[str, Dataset]:
    """Give every split the same ClassLabel (train's, or one built from the sorted values of all)."""
    train = splits["train"]
    if isinstance(train.features["label"], ClassLabel):
        for name, ds in splits.items():
            feat = ds.features["label"]
            if feat != train.features["label"] and (not isinstance(feat, ClassLabel) or feat.names != train.features["label"].names):
                raise ValueError(f"train and {name} splits have different label classes")
        return splits
    values = sorted(set().union(*(set(ds["label"]) for ds in splits.values())))
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

    return {name: encode(ds) for name, ds in splits.items()}


def _is_saved_to_disk(path: Path) -> bool:
    return (path / "dataset_dict.json").is_file() or (path / "state.json").is_file()


def _load_raw(name_or_path: str, **load_kwargs) -> tuple[DatasetDict, str]:
    """The raw splits and the kind of source: "builtin", "disk" (save_to_disk), "folder" or "hub"."""
    key = BUILTIN_NAMES.get(str(name_or_path).lower())
    if key == "digits":
        return load_digits_dataset(), "builtin"
    if key == "fashion_mnist":
        return load_fashion_mnist(), "builtin"
    from datasets import load_dataset, load_from_disk

    path = Path(os.path.expanduser(str(name_or_path)))
    if path.is_dir():
        if _is_saved_to_disk(path):  # Dataset/DatasetDict.save_to_disk output
            data = load_from_disk(str(path))
            return (data if isinstance(data, DatasetDict) else DatasetDict(train=data)), "disk"
        try:  # image folder (train/test subfolders of class folders) or a local dataset repo
            data = load_dataset(str(path), **load_kwargs)
            return (data if isinstance(data, DatasetDict) else DatasetDict(train=data)), "folder"
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
    return (data if isinstance(data, DatasetDict) else DatasetDict(train=data)), "hub"


def _progress_allowed() -> bool:
    """Progress bars only on the main process (torchrun sets RANK before torch.distributed is up)."""
    from ..metrics.distributed import is_main_process

    return os.environ.get("RANK", "0") == "0" and is_main_process()


def _check_image(entry: dict) -> str | None:
    """Why an image (``{"bytes", "path"}`` of a ``datasets.Image`` column) cannot be decoded, or None."""
    from PIL import Image as PILImage

    data, path = entry.get("bytes"), entry.get("path")
    try:
        with PILImage.open(io.BytesIO(data) if data is not None else path) as img:
            img.load()  # a full decode: verify() alone misses truncated JPEGs
    except Exception as e:  # noqa: BLE001 - every reason an image cannot be used counts
        return f"{type(e).__name__}: {e}"
    return None


def verify_images(
    ds: Dataset,
    split: str = "train",
    on_bad_image: Literal["raise", "skip"] = "raise",
    progress: bool = True,
    image_column: str = "image",
    batch_size: int = 1000,
) -> Dataset:
    """Decodes every image of ``ds`` once, up front, so a corrupt file fails now and by name.

    A truncated or corrupt image otherwise surfaces as a bare ``OSError: image file is
    truncated`` at the first evaluation, after hours of training, without the file name.

    Args:
        ds: a dataset with a ``datasets.Image`` column.
        split: the split's name, for messages.
        on_bad_image: ``"raise"`` (default): a :class:`CorruptImageError` naming every bad file;
            ``"skip"``: drop those rows and log a warning naming them.
        progress: show a progress bar (main process only).
        image_column: the image column.
        batch_size: rows read at a time (bounds memory for datasets holding image bytes).

    Returns:
        ``ds``, or ``ds`` without the bad rows with ``"skip"``.

    Raises:
        CorruptImageError: a bad image with ``on_bad_image="raise"``.
    """
    if on_bad_image not in ("raise", "skip"):
        raise ValueError(f"on_bad_image must be 'raise' or 'skip', got {on_bad_image!r}")
    from tqdm.auto import tqdm

    raw = ds.cast_column(image_column, Image(decode=False))  # paths / bytes, nothing decoded
    bad: list[tuple[int, str, str]] = []
    workers = max(1, min(8, os.cpu_count() or 1))
    bar = tqdm(total=len(raw), desc=f"verifying {split} images", unit="img", disable=not (progress and _progress_allowed()))
    with ThreadPoolExecutor(max_workers=workers) as pool:
        for start in range(0, len(raw), batch_size):
            entries = raw[start : start + batch_size][image_column]
            for j, reason in enumerate(pool.map(_check_image, entries)):
                if reason is not None:
                    bad.append((start + j, entries[j].get("path") or f"row {start + j} of the {split} split", reason))
            bar.update(len(entries))
    bar.close()
    if not bad:
        return ds
    listing = "; ".join(f"{where} ({reason})" for _, where, reason in bad[:20]) + (f"; ... {len(bad) - 20} more" if len(bad) > 20 else "")
    if on_bad_image == "raise":
        raise CorruptImageError(
            f"{len(bad)} image(s) of the {split} split cannot be decoded: {listing}. Fix or remove them, or pass "
            "on_bad_image='skip' to drop them with a warning (recipes: --on_bad_image skip)."
        )
    logger.warning("skipping %d image(s) of the %s split that cannot be decoded: %s", len(bad), split, listing)
    drop = {i for i, _, _ in bad}
    return ds.select([i for i in range(len(ds)) if i not in drop])


def _describe(ds: Dataset, provenance: str) -> Dataset:
    """Records how the split was made as the last line of its ``info.description``."""
    lines = [ln for ln in (ds.info.description or "").splitlines() if not ln.startswith(PROVENANCE_PREFIX)]
    ds.info.description = "\n".join([*lines, PROVENANCE_PREFIX + provenance])
    return ds


def split_provenance(data: DatasetDict | dict) -> dict[str, str]:
    """How each split of a :func:`load_image_dataset` result was made, e.g.
    ``{"train": "digits 'train' split, 10 shots per class (seed 0)", "test": "digits 'test' split"}``.

    Read from each split's ``info.description`` (kept through ``select``, ``map`` and
    ``with_transform``); a split not made by :func:`load_image_dataset` reads ``"unknown"``.
    """
    out = {}
    for name, ds in data.items():
        lines = [ln for ln in (getattr(ds.info, "description", None) or "").splitlines() if ln.startswith(PROVENANCE_PREFIX)]
        out[name] = lines[-1][len(PROVENANCE_PREFIX) :] if lines else "unknown"
    return out


def _complement(n: int, taken: np.ndarray) -> np.ndarray:
    mask = np.ones(n, dtype=bool)
    mask[taken] = False
    return np.flatnonzero(mask)


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
    validation_split: float | None = None,
    validation_shots_per_class: int | None = None,
    verify: bool | None = None,
    on_bad_image: Literal["raise", "skip"] = "raise",
    progress: bool = True,
    **load_kwargs,
) -> DatasetDict:
    """Load labelled images as a ``DatasetDict`` with ``train``, ``test`` and maybe ``validation``.

    Every split has exactly two columns, ``image`` (``datasets.Image``) and ``label``
    (``ClassLabel``, names kept), and records how it was made (:func:`split_provenance`).

    ``name_or_path`` is one of
      - a built-in offline set: ``"digits"`` (scikit-learn's 8x8 digits, fixed stratified
        1347/450 split) or ``"fashion_mnist"`` (Debian IDX files, else the Hub);
      - a local folder: a ``save_to_disk`` output, an image folder (``train/<class>/*.png``,
        ``test/<class>/*.png``) or any local dataset repo ``datasets.load_dataset`` reads;
      - a Hub dataset name, passed to ``datasets.load_dataset(name, **load_kwargs)``.

    Splits:
      - ``test``: the dataset's ``test`` split; else, when it has only a ``validation`` (or
        ``valid``/``val``) split besides ``train``, that one (many datasets publish their
        held-out set under that name; it stays the test split, so results stay comparable);
        else a stratified ``test_size`` split of ``train`` (``split_seed``), with a warning.
      - ``validation`` (for model selection: never select on ``test``): the dataset's own
        ``validation`` split when it has one besides ``test`` (subsampled to
        ``validation_shots_per_class`` per class when that is given); else, only when
        ``validation_split`` or ``validation_shots_per_class`` is given, a seeded (``seed``)
        stratified draw from the training images **outside** the few-shot subset: the
        few-shot ``train`` subset is the same with and without a validation split.
      - ``train``: the rest of the training images; with ``shots_per_class`` a stratified,
        ``seed``-ed few-shot subset of them (the test/validation splits are not subsampled).
    ``classes`` keeps those classes (ids or names) in every split and remaps them to
    ``0..k-1`` in the order given, before the few-shot and validation draws.

    Args:
        name_or_path: see above.
        image_column: the image column (detected: ``image``/``img``/... when None).
        label_column: the label column (detected: ``label``/``labels``/``fine_label``/...).
        shots_per_class: few-shot training subset size per class.
        classes: class ids or names to keep.
        seed: seed of the few-shot subset and of a validation split drawn from train.
        test_size: fraction (or number) of ``train`` split off as ``test`` when there is no test split.
        split_seed: seed of that test split (fixed by default, so runs share one test set).
        validation_split: fraction of the (class-filtered) training images drawn as
            ``validation`` (from outside the few-shot subset), in (0, 1).
        validation_shots_per_class: ``validation`` images per class (instead of a fraction).
        verify: decode every image once before returning (see :func:`verify_images`), so a
            corrupt file fails now, by name, not mid-run; None (default): only for local image
            folders / local dataset repos (files on disk); True: any source; False: never.
        on_bad_image: ``"raise"`` (default: stop, naming every bad file) or ``"skip"`` (drop
            them with a warning) when ``verify`` finds undecodable images.
        progress: progress bar for the verification (main process only).
        **load_kwargs: passed to ``datasets.load_dataset``.

    Raises:
        DataNotFoundError: the data is missing (fast, no Hub retries when offline).
        CorruptImageError: ``verify`` found undecodable images (``on_bad_image="raise"``).
        ValueError: inconsistent options, or too few images for the shots / validation asked.
    """
    if validation_split is not None and validation_shots_per_class is not None:
        raise ValueError("pass validation_split or validation_shots_per_class, not both")
    if validation_split is not None and not 0.0 < float(validation_split) < 1.0:
        raise ValueError(f"validation_split must be a fraction in (0, 1), got {validation_split!r}")
    if validation_shots_per_class is not None and validation_shots_per_class < 1:
        raise ValueError(f"validation_shots_per_class must be >= 1, got {validation_shots_per_class!r}")
    raw, kind = _load_raw(name_or_path, **load_kwargs)
    if "train" not in raw:
        raise ValueError(f"'{name_or_path}' has no 'train' split (splits: {list(raw)})")
    source = str(name_or_path)
    icol = _detect(raw["train"], image_column, IMAGE_COLUMNS, "image", Image)
    lcol = _detect(raw["train"], label_column, LABEL_COLUMNS, "label", ClassLabel)
    test_name = next((s for s in TEST_SPLITS if s in raw), None)
    val_name = next((s for s in VALIDATION_SPLITS if s in raw), None)
    if test_name is None and val_name is not None:  # train + validation only: validation is the held-out set
        test_name, val_name = val_name, None
    names = {"train": "train", **({"test": test_name} if test_name else {}), **({"validation": val_name} if val_name else {})}
    splits = {key: _standardise(raw[name], icol, lcol, key) for key, name in names.items()}
    if verify or (verify is None and kind == "folder"):
        splits = {key: verify_images(ds, key, on_bad_image, progress) for key, ds in splits.items()}
    splits = _encode_labels(splits)
    _check_label_range(splits)
    provenance = {key: f"{source} '{name}' split" for key, name in names.items()}
    if test_name is None:
        train = splits["train"]
        counts = np.bincount(np.asarray(train["label"], dtype=np.int64), minlength=train.features["label"].num_classes)
        n_test = test_size if isinstance(test_size, int) else math.ceil(test_size * len(train))  # as datasets counts it
        why = None
        if (counts < 2).any():
            why = f"class(es) {np.flatnonzero(counts < 2).tolist()} have fewer than 2 images"
        elif n_test < len(counts):
            why = f"test_size={test_size} is {n_test} images, fewer than the {len(counts)} classes"
        elif len(train) - n_test < len(counts):
            why = f"test_size={test_size} leaves {len(train) - n_test} training images for {len(counts)} classes"
        if why:
            raise ValueError(f"'{source}' has no test split, so one is drawn (stratified) from its training images, but {why}. "
                             "Give it a test split (a test/ folder beside train/), more images per class, or another test_size.")
        parts = train.train_test_split(test_size=test_size, seed=split_seed, stratify_by_column="label")
        splits["train"], splits["test"] = parts["train"], parts["test"]
        share = f"{test_size:.0%}" if isinstance(test_size, float) else f"{test_size} images"
        provenance["train"] = f"{source} 'train' split minus the {share} split off as test"
        provenance["test"] = f"{share} stratified split of {source} 'train' (split_seed {split_seed}; the dataset has no test split)"
        logger.warning(
            "'%s' has no test split: %s of its training images (%d of %d, stratified, split_seed=%d) are the test split; "
            "the rest (%d) is the training data. Give it a test/ folder (or a 'test' split) to choose the test images.",
            source, share, len(splits["test"]), len(train), split_seed, len(splits["train"]),
        )
    elif names["test"] != "test":
        provenance["test"] += " (the dataset has no 'test' split)"
    data = DatasetDict(splits)
    if classes is not None:
        data = select_classes(data, classes)
        kept = data["train"].features["label"].names
        provenance = {k: f"{v}, classes {kept}" for k, v in provenance.items()}
    train = data["train"]
    k = train.features["label"].num_classes
    labels = np.asarray(train["label"], dtype=np.int64)
    # The few-shot subset is drawn first, from all training images, exactly as without a
    # validation split: the same (data, shots, seed) trains on the same images either way.
    keep = few_shot_indices(labels, shots_per_class, seed, num_classes=k) if shots_per_class is not None else np.arange(len(labels))
    if "validation" in data:
        if validation_shots_per_class is not None:
            own = np.asarray(data["validation"]["label"], dtype=np.int64)
            try:
                picked = few_shot_indices(own, validation_shots_per_class, seed, num_classes=k, option="validation_shots_per_class")
            except ValueError as e:
                raise ValueError(f"the dataset's own validation split is too small: {e}") from e
            data["validation"] = data["validation"].select(picked)
            provenance["validation"] += f", {validation_shots_per_class} per class (seed {seed})"
        elif validation_split is not None:
            logger.info("'%s' has its own validation split: validation_split=%s is not used", source, validation_split)
    elif validation_split is not None or validation_shots_per_class is not None:
        pool = _complement(len(labels), keep) if shots_per_class is not None else np.arange(len(labels))
        outside = "outside the few-shot subset" if shots_per_class is not None else ""
        if validation_shots_per_class is not None:
            try:
                picked = few_shot_indices(labels[pool], validation_shots_per_class, seed, num_classes=k,
                                          option="validation_shots_per_class")
            except ValueError as e:
                raise ValueError(f"validation_shots_per_class={validation_shots_per_class}: too few training images "
                                 f"{outside or 'per class'}: {e}") from e
            size = f"{validation_shots_per_class} per class"
        else:
            # each class in proportion (an imbalanced dataset stays so), at least one image per class
            # on both sides; from the images outside the few-shot subset, at the fraction of all of them
            fraction = float(validation_split) * len(labels) / max(1, len(pool))
            where = f"the training images {outside}" if outside else "the training images"
            absent = sorted(set(range(k)) - set(np.unique(labels[pool]).tolist()))
            if fraction >= 1.0 or absent:
                short = f"class(es) {absent} have no images left" if absent else f"only {len(pool)} images are left"
                raise ValueError(f"validation_split={validation_split} (recipes: --train_val_split): {short} in {where}; "
                                 "use fewer shots, a smaller split, or validation_shots_per_class")
            try:
                picked = proportional_indices(labels[pool], fraction, seed, num_classes=k,
                                              option=f"validation_split={validation_split} (recipes: --train_val_split)",
                                              keep_rest=shots_per_class is None)
            except ValueError as e:
                raise ValueError(f"{e} (in {where})") from e
            size = f"{validation_split:.0%} of the training images, each class in proportion"
        validation = np.sort(pool[picked])
        data["validation"] = train.select(validation)
        provenance["validation"] = f"{len(validation)} images ({size}) drawn stratified (seed {seed}) from the training images of {provenance['train']}" + (
            f", {outside}" if outside else "")
        if shots_per_class is None:
            keep = _complement(len(labels), validation)
            provenance["train"] += f", minus the {len(validation)} validation images"
    if shots_per_class is not None:
        data["train"] = train.select(keep)
        provenance["train"] += f", {shots_per_class} shots per class (seed {seed})"
    elif len(keep) != len(labels):
        data["train"] = train.select(keep)
    for key in data:
        _describe(data[key], provenance[key])
    order = [s for s in ("train", "validation", "test") if s in data]
    return DatasetDict({s: data[s] for s in order})
