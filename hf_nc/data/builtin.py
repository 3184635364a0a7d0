"""Built-in offline image sets: scikit-learn's ``digits`` and Debian's Fashion-MNIST IDX files."""

from __future__ import annotations

import gzip
import hashlib
import math
import os
import shutil
import tempfile
import struct
import zlib
from pathlib import Path

import numpy as np
from datasets import ClassLabel, Dataset, DatasetDict, Features, Image, load_from_disk

from .subsets import quiet_datasets
from .errors import DataNotFoundError, hub_offline, hub_unreachable_reason

FASHION_MNIST_HUB = "zalando-datasets/fashion_mnist"
FASHION_MNIST_CLASSES = [
    "T-shirt/top", "Trouser", "Pullover", "Dress", "Coat",
    "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot",
]  # fmt: skip
FASHION_MNIST_DIRS = ("/usr/share/datasets/fashion-mnist",)
DIGITS_TEST_SIZE = 0.25  # fixed split: 1347 train / 450 test
DIGITS_SPLIT_SEED = 0

BUILTIN_NAMES = {"digits": "digits", "fashion_mnist": "fashion_mnist", "fashion-mnist": "fashion_mnist"}


def _features(names: list[str]) -> Features:
    return Features({"image": Image(), "label": ClassLabel(names=names)})


def _from_arrays(images: np.ndarray, labels: np.ndarray, names: list[str]) -> Dataset:
    from PIL import Image as PILImage

    pil = [PILImage.fromarray(a, mode="L") for a in images]
    return Dataset.from_dict({"image": pil, "label": labels.astype(int).tolist()}, features=_features(names))


def load_digits_dataset() -> DatasetDict:
    """scikit-learn's 1,797 8x8 digits as grayscale PIL images (0..16 rescaled to 0..255).

    The train/test split is fixed (stratified, ``DIGITS_TEST_SIZE``, seed ``DIGITS_SPLIT_SEED``)
    so that numbers reported on ``digits`` are comparable across runs.
    """
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    d = load_digits()
    images = np.round(d.images * (255.0 / 16.0)).clip(0, 255).astype(np.uint8)
    idx = np.arange(len(d.target))
    tr, te = train_test_split(idx, test_size=DIGITS_TEST_SIZE, random_state=DIGITS_SPLIT_SEED, stratify=d.target)
    names = [str(i) for i in range(10)]
    return DatasetDict(
        train=_from_arrays(images[np.sort(tr)], d.target[np.sort(tr)], names),
        test=_from_arrays(images[np.sort(te)], d.target[np.sort(te)], names),
    )


_REFETCH = "it is probably truncated or corrupt (an interrupted download or copy): fetch it again"


def _read_idx(path: Path) -> np.ndarray:
    """The array in an unsigned-byte IDX file (optionally gzipped); a ``ValueError`` naming the file if it is
    not one or is cut short (gzip's EOFError and NumPy's reshape error named none)."""
    opener = gzip.open if path.suffix == ".gz" else open
    try:
        with opener(path, "rb") as f:
            data = f.read()
    except (EOFError, gzip.BadGzipFile, zlib.error) as e:
        raise ValueError(f"{path}: unreadable ({type(e).__name__}: {e}); {_REFETCH}") from e
    if len(data) < 4:
        raise ValueError(f"{path}: {len(data)} bytes, not an IDX file; {_REFETCH}")
    zero, dtype, ndim = struct.unpack(">HBB", data[:4])
    if zero != 0 or dtype != 0x08 or len(data) < 4 + 4 * ndim:
        raise ValueError(f"{path}: not an unsigned-byte IDX file")
    shape = struct.unpack(">" + "I" * ndim, data[4 : 4 + 4 * ndim])
    if len(data) - 4 - 4 * ndim != math.prod(shape):
        raise ValueError(f"{path}: {len(data) - 4 - 4 * ndim} bytes of data for an array of shape {shape} "
                         f"({math.prod(shape)} bytes); {_REFETCH}")
    return np.frombuffer(data, dtype=np.uint8, offset=4 + 4 * ndim).reshape(shape)


def _find_idx(directory: Path, stem: str) -> Path | None:
    for name in (stem + ".gz", stem):
        if (directory / name).is_file():
            return directory / name
    return None


def fashion_mnist_dir() -> Path | None:
    """The folder holding Fashion-MNIST's IDX files: ``$HF_NC_FASHION_MNIST_DIR`` or Debian's location."""
    env = os.environ.get("HF_NC_FASHION_MNIST_DIR")
    for d in ([env] if env else []) + list(FASHION_MNIST_DIRS):
        p = Path(d)
        if all(_find_idx(p, f"{s}-{k}-idx{n}-ubyte") for s in ("train", "t10k") for k, n in (("images", 3), ("labels", 1))):
            return p
    return None


def _fashion_mnist_from_idx(d: Path) -> DatasetDict:
    splits = {}
    for split, stem in (("train", "train"), ("test", "t10k")):
        x = _read_idx(_find_idx(d, f"{stem}-images-idx3-ubyte"))
        y = _read_idx(_find_idx(d, f"{stem}-labels-idx1-ubyte"))
        if len(x) != len(y):
            raise ValueError(f"{d}: {len(x)} {stem} images but {len(y)} labels: the IDX files do not belong together")
        splits[split] = _from_arrays(x, y, FASHION_MNIST_CLASSES)
    return DatasetDict(splits)


def _cached(source: Path, build) -> DatasetDict:
    """``build()`` once, then memory-map the Arrow copy kept under ``$HF_NC_CACHE`` (~/.cache/hf_nc).

    The cache key is the source files' names, sizes and mtimes; set ``HF_NC_CACHE=0`` to disable.
    """
    root = os.environ.get("HF_NC_CACHE", os.path.join(os.path.expanduser("~"), ".cache", "hf_nc"))
    if root in ("0", ""):
        return build()
    stat = sorted((p.name, p.stat().st_size, int(p.stat().st_mtime)) for p in source.iterdir() if p.is_file())
    key = hashlib.sha1(repr((str(source.resolve()), stat)).encode()).hexdigest()[:16]
    target = Path(root) / "datasets" / f"{source.name}-{key}"
    if (target / "dataset_dict.json").is_file():
        try:
            return load_from_disk(str(target))
        except Exception:
            shutil.rmtree(target, ignore_errors=True)
    data = build()
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(dir=target.parent, prefix=".tmp-"))
        with quiet_datasets():
            data.save_to_disk(str(tmp))
        os.replace(tmp, target)  # atomic; another process may have won the race: fine
        return load_from_disk(str(target))
    except OSError:
        shutil.rmtree(locals().get("tmp", target.parent / ".none"), ignore_errors=True)
        return data


def load_fashion_mnist() -> DatasetDict:
    """Fashion-MNIST (60k train / 10k test, 28x28 grayscale).

    From the IDX files of Debian's ``dataset-fashion-mnist`` (or ``$HF_NC_FASHION_MNIST_DIR``)
    when present, else from the Hub (``zalando-datasets/fashion_mnist``) unless the Hub is off.
    """
    d = fashion_mnist_dir()
    if d is not None:
        return _cached(d, lambda: _fashion_mnist_from_idx(d))
    hint = (
        "Fashion-MNIST not found: install Debian's IDX files (`apt-get install -y dataset-fashion-mnist`, "
        f"files under {FASHION_MNIST_DIRS[0]}), point HF_NC_FASHION_MNIST_DIR at a folder with the four "
        f"*-ubyte(.gz) files, or allow Hub access to load '{FASHION_MNIST_HUB}'"
    )
    offline = hub_offline()  # offline, load_dataset only looks in the local cache (and fails at once)
    reason = None if offline else hub_unreachable_reason()
    if reason:
        raise DataNotFoundError(f"{hint} (the Hub is unreachable: {reason}).")
    from datasets import load_dataset

    try:
        return load_dataset(FASHION_MNIST_HUB)
    except Exception as e:  # not cached while offline, network down, dataset gone, ...
        why = "the Hub is off (HF_HUB_OFFLINE/HF_DATASETS_OFFLINE) and it is not cached" if offline else f"{type(e).__name__}: {e}"
        raise DataNotFoundError(f"{hint}. Loading from the Hub failed: {why}.") from e
