"""Bad or unusual data, as a user brings it: each case ends in a clear error naming the problem,
or in the right pixels / the right splits checked against an independent expectation.

Add a case: write the file(s) the user would have into ``tmp_path``, load them through the
public API, and assert the exact outcome (a known pixel value, a named file, disjoint splits).
"""

import logging
import struct
import zlib
from collections import Counter

import numpy as np
import pytest
import torch
from datasets import ClassLabel, Dataset, DatasetDict, Features, Image
from PIL import Image as PILImage

from hf_nc.data import (
    CorruptImageError,
    build_transforms,
    load_image_dataset,
    split_provenance,
    stratified_subset,
    to_8bit,
)


def _config(channels=1, size=4):
    from transformers import ViTConfig

    return ViTConfig(image_size=size, patch_size=2, num_channels=channels, hidden_size=8,
                     num_hidden_layers=1, num_attention_heads=2, intermediate_size=16)


def _pixels(source, img, **kw):
    return build_transforms(source, train=False, **kw)({"image": [img]})["pixel_values"][0]


def _expected(value8: float, mean=0.5, std=0.5):
    return (value8 / 255.0 - mean) / std


# ---------------------------------------------------------------- high bit depth (issue 9, item 7)


def _png16_rgb(path, arr: np.ndarray):
    """A 16-bit-per-channel RGB PNG written by hand (PIL cannot write one)."""
    h, w, _ = arr.shape
    raw = b"".join(b"\x00" + arr[y].astype(">u2").tobytes() for y in range(h))

    def chunk(tag, data):
        return struct.pack(">I", len(data)) + tag + data + struct.pack(">I", zlib.crc32(tag + data) & 0xFFFFFFFF)

    header = struct.pack(">IIBBBBB", w, h, 16, 2, 0, 0, 0)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(raw)) + chunk(b"IEND", b""))


@pytest.mark.parametrize(
    "mode, fmt, value, want8",
    [
        ("I;16", "png", 32896, 128),  # 32896 = 128 * 257: mid grey, not white
        ("I;16", "png", 65535, 255),
        ("I;16", "png", 2570, 10),
        ("I", "tiff", 40000, 156),  # 40000 * 255 / 65535 = 155.6
        ("F", "tiff", 0.25, 64),  # float images: 0.0 black .. 1.0 white
    ],
)
def test_high_bit_depth_files_are_scaled_not_clipped(tmp_path, mode, fmt, value, want8):
    dtype = {"I;16": np.uint16, "I": np.int32, "F": np.float32}[mode]
    path = tmp_path / f"img.{fmt}"
    PILImage.fromarray(np.full((4, 4), value, dtype=dtype)).save(path)
    img = PILImage.open(path)
    assert img.mode == mode  # the file really is high-bit-depth when read back
    assert np.asarray(to_8bit(img)).tolist() == [[want8] * 4] * 4
    for channels in (1, 3):  # grayscale and RGB models, hand-written path
        got = _pixels(_config(channels), img)
        assert torch.allclose(got, torch.full((channels, 4, 4), _expected(want8)), atol=1e-6), (channels, got)
    # The image-processor path gives the same pixels.
    from transformers import ViTImageProcessorPil

    processor = ViTImageProcessorPil(size={"height": 4, "width": 4}, image_mean=[0.5] * 3, image_std=[0.5] * 3)
    assert torch.allclose(_pixels(processor, img), torch.full((3, 4, 4), _expected(want8)), atol=1e-6)


def test_16bit_rgb_png_and_16bit_image_folder(tmp_path):
    arr = np.zeros((4, 4, 3), dtype=np.uint16)
    arr[..., 0], arr[..., 1], arr[..., 2] = 65535, 32896, 2570
    _png16_rgb(tmp_path / "rgb16.png", arr)
    got = _pixels(_config(3), PILImage.open(tmp_path / "rgb16.png"))
    for c, v in enumerate((255, 128, 10)):
        assert torch.allclose(got[c], torch.full((4, 4), _expected(v)), atol=1e-6)
    # Through an image folder and the datasets Image feature, end to end.
    for split in ("train", "test"):
        for k, value in enumerate((8224, 49344)):  # 32 * 257, 192 * 257
            d = tmp_path / "folder" / split / f"c{k}"
            d.mkdir(parents=True)
            for i in range(2):
                PILImage.fromarray(np.full((4, 4), value, dtype=np.uint16)).save(d / f"{i}.png")
    data = load_image_dataset(str(tmp_path / "folder"), progress=False)
    batch = data["train"].with_transform(build_transforms(_config(1), train=False))[:]
    for x, y in zip(batch["pixel_values"], batch["labels"]):
        assert torch.allclose(x, torch.full((1, 4, 4), _expected((32, 192)[y])), atol=1e-6)


# ---------------------------------------------------------------- corrupt files (issue 9, item 8)


def _folder(root, n_per_class=4, classes=("cat", "dog"), splits=("train", "test"), fmt="png"):
    rng = np.random.default_rng(0)
    for split in splits:
        for cls in classes:
            d = root / split / cls
            d.mkdir(parents=True)
            for i in range(n_per_class):
                PILImage.fromarray(rng.integers(0, 256, (16, 16, 3), dtype=np.uint8)).save(d / f"{i}.{fmt}")
    return root


@pytest.mark.parametrize("fmt", ["jpg", "png"])
def test_truncated_image_stops_at_load_time_naming_the_file(tmp_path, fmt, caplog):
    root = _folder(tmp_path / "data", fmt=fmt)
    bad = root / "train" / "dog" / f"2.{fmt}"
    bad.write_bytes(bad.read_bytes()[: len(bad.read_bytes()) // 2])
    with pytest.raises(CorruptImageError, match=rf"1 image\(s\) of the train split.*dog[/\\]2\.{fmt}.*on_bad_image='skip'"):
        load_image_dataset(str(root), progress=False)
    with caplog.at_level(logging.WARNING, logger="hf_nc.data.loading"):
        data = load_image_dataset(str(root), on_bad_image="skip", progress=False)
    assert f"2.{fmt}" in caplog.text and "skipping 1 image" in caplog.text
    assert Counter(data["train"]["label"]) == {0: 4, 1: 3} and len(data["test"]) == 8
    for i in range(len(data["train"])):  # every remaining image decodes
        data["train"][i]["image"].load()
    # Without verification the load succeeds and the bad file fails only when decoded.
    lazy = load_image_dataset(str(root), verify=False)
    assert len(lazy["train"]) == 8
    with pytest.raises(OSError):
        [lazy["train"][i]["image"].load() for i in range(8)]
    with pytest.raises(ValueError, match="on_bad_image"):
        load_image_dataset(str(root), on_bad_image="ignore", progress=False)


def test_corrupt_bytes_in_a_saved_dataset_are_found_with_verify_true(tmp_path):
    good = PILImage.fromarray(np.zeros((4, 4), dtype=np.uint8))
    ds = Dataset.from_dict({"image": [good] * 4, "label": [0, 1, 0, 1]}, features=Features({"image": Image(), "label": ClassLabel(names=["a", "b"])}))
    ds = ds.cast_column("image", Image(decode=False))
    rows = ds.to_dict()
    rows["image"][3] = {"bytes": b"\x89PNG\r\n\x1a\nnot really", "path": None}
    broken = Dataset.from_dict(rows, features=ds.features).cast_column("image", Image())
    DatasetDict(train=broken, test=broken.select([0, 1])).save_to_disk(str(tmp_path / "saved"))
    assert len(load_image_dataset(str(tmp_path / "saved"))["train"]) == 4  # not verified by default (no files)
    with pytest.raises(CorruptImageError, match="row 3 of the train split"):
        load_image_dataset(str(tmp_path / "saved"), verify=True, progress=False)


# ---------------------------------------------------------------- splits: provenance, validation (issue 9 item 25, issue 10 §1)


def _id_folder(root, n_per_class=15, k=4, splits=("train",)):
    """Every image carries its own id in pixel (0, 0): (id // 256, id % 256, class)."""
    i = 0
    for split in splits:
        for c in range(k):
            d = root / split / f"class{c}"
            d.mkdir(parents=True)
            for _ in range(n_per_class):
                a = np.zeros((4, 4, 3), dtype=np.uint8)
                a[0, 0] = (i // 256, i % 256, c)
                PILImage.fromarray(a).save(d / f"{i}.png")
                i += 1
    return root


def _ids(ds):
    return [int(np.asarray(im)[0, 0, 0]) * 256 + int(np.asarray(im)[0, 0, 1]) for im in ds["image"]]


def test_train_only_folder_split_is_logged_and_recorded(tmp_path, caplog):
    root = _id_folder(tmp_path / "pets")
    with caplog.at_level(logging.WARNING, logger="hf_nc.data.loading"):
        data = load_image_dataset(str(root / "train"), progress=False)
    assert "has no test split" in caplog.text and str(root / "train") in caplog.text and "20%" in caplog.text
    assert (len(data["train"]), len(data["test"])) == (48, 12)
    prov = split_provenance(data)
    assert set(prov) == {"train", "test"}
    assert prov["test"] == f"20% stratified split of {root / 'train'} 'train' (split_seed 0; the dataset has no test split)"
    assert "minus the 20% split off as test" in prov["train"]
    # The record survives what recipes do to the splits.
    assert split_provenance({"test": data["test"].with_transform(lambda b: b).select(range(3))})["test"] == prov["test"]
    assert split_provenance(load_image_dataset("digits", shots_per_class=2)) == {
        "train": "digits 'train' split, 2 shots per class (seed 0)", "test": "digits 'test' split"}
    assert split_provenance({"x": Dataset.from_dict({"a": [1]})}) == {"x": "unknown"}


@pytest.mark.parametrize("classes", [None, ["class2", "class0", "class3"]])
@pytest.mark.parametrize("shots", [None, 4])
@pytest.mark.parametrize("size", [{"validation_shots_per_class": 3}, {"validation_split": 0.25}])
def test_validation_split_is_disjoint_and_keeps_the_few_shot_subset(tmp_path_factory, classes, shots, size):
    root = tmp_path_factory.getbasetemp() / "ids"
    if not root.exists():
        _id_folder(root, splits=("train", "test"))
    kw = dict(classes=classes, shots_per_class=shots, seed=3, progress=False)
    plain = load_image_dataset(str(root), **kw)
    data = load_image_dataset(str(root), **kw, **size)
    assert list(data) == ["train", "validation", "test"]
    tr, va, te = (set(_ids(data[s])) for s in ("train", "validation", "test"))
    assert len(tr) == len(data["train"]) and len(va) == len(data["validation"])
    assert not (tr & va) and not (tr & te) and not (va & te)
    k = 3 if classes else 4
    counts = Counter(data["validation"]["label"])
    assert set(counts) == set(range(k))  # stratified: every class
    if "validation_shots_per_class" in size:
        assert counts == {c: 3 for c in range(k)}
    else:
        assert len(data["validation"]) == round(0.25 * 15 * k)
    assert _ids(data["test"]) == _ids(plain["test"])  # the test split does not move
    if shots:
        # The few-shot subset is the same images with and without a validation split.
        assert _ids(data["train"]) == _ids(plain["train"]) and Counter(data["train"]["label"]) == {c: 4 for c in range(k)}
        assert "outside the few-shot subset" in split_provenance(data)["validation"]
    else:
        assert tr | va == set(_ids(plain["train"]))  # train = the rest
    again = load_image_dataset(str(root), **kw, **size)
    assert _ids(again["validation"]) == _ids(data["validation"])  # seeded


def test_validation_split_sizes_are_checked(tmp_path):
    root = _id_folder(tmp_path / "d", n_per_class=6)
    with pytest.raises(ValueError, match="not both"):
        load_image_dataset(str(root), validation_split=0.1, validation_shots_per_class=1)
    with pytest.raises(ValueError, match="fraction"):
        load_image_dataset(str(root), validation_split=1.5)
    with pytest.raises(ValueError, match="validation_shots_per_class=3: too few training images outside the few-shot subset"):
        load_image_dataset(str(root), shots_per_class=3, validation_shots_per_class=3, progress=False)  # 6 * 0.8 - 3 < 3


def _saved(tmp_path, splits):
    names = ["a", "b"]
    feats = Features({"image": Image(), "label": ClassLabel(names=names)})
    dd = {}
    for s, n in splits.items():
        imgs = [PILImage.fromarray(np.full((4, 4), 10 * i + len(s), dtype=np.uint8)) for i in range(n)]
        dd[s] = Dataset.from_dict({"image": imgs, "label": [i % 2 for i in range(n)]}, features=feats)
    path = tmp_path / "_".join(splits)
    DatasetDict(dd).save_to_disk(str(path))
    return str(path)


def test_own_validation_split_is_kept_and_validation_only_stays_the_test_split(tmp_path):
    both = load_image_dataset(_saved(tmp_path, {"train": 10, "validation": 6, "test": 4}))
    assert {s: len(d) for s, d in both.items()} == {"train": 10, "validation": 6, "test": 4}
    assert split_provenance(both)["validation"].endswith("'validation' split")
    sub = load_image_dataset(_saved(tmp_path, {"train": 10, "validation": 6, "test": 4}), validation_shots_per_class=2)
    assert Counter(sub["validation"]["label"]) == {0: 2, 1: 2}
    only = load_image_dataset(_saved(tmp_path, {"train": 10, "val": 6}))
    assert {s: len(d) for s, d in only.items()} == {"train": 10, "test": 6}
    assert "no 'test' split" in split_provenance(only)["test"]
    asked = load_image_dataset(_saved(tmp_path, {"train": 10, "val": 6}), validation_shots_per_class=1)
    assert {s: len(d) for s, d in asked.items()} == {"train": 8, "validation": 2, "test": 6}


def test_stratified_subset_replaces_first_n(tmp_path):
    data = load_image_dataset(str(_id_folder(tmp_path / "d", splits=("train", "test"))), progress=False)
    test = data["test"]  # sorted by class: the first 8 rows are all class 0
    assert set(test.select(range(8))["label"]) == {0}
    sub = stratified_subset(test, 8, seed=0)
    assert Counter(sub["label"]) == {c: 2 for c in range(4)}
    assert _ids(stratified_subset(test, 8, seed=0)) == _ids(sub) and stratified_subset(test, None) is test


def _fashion_mnist_idx(folder, n=(20, 10), labels=None, gz=True):
    """The four Fashion-MNIST IDX files (random images) as a user's HF_NC_FASHION_MNIST_DIR holds them."""
    import gzip

    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    for stem, count in zip(("train", "t10k"), n):
        images = rng.integers(0, 256, (count, 28, 28), dtype=np.uint8)
        for kind, arr in (("images", images), ("labels", np.arange(labels or count, dtype=np.uint8) % 10)):
            data = struct.pack(">HBB", 0, 8, arr.ndim) + struct.pack(">" + "I" * arr.ndim, *arr.shape) + arr.tobytes()
            name = folder / f"{stem}-{kind}-idx{arr.ndim}-ubyte"
            if gz:
                with gzip.open(f"{name}.gz", "wb") as f:
                    f.write(data)
            else:
                name.write_bytes(data)
    return folder


@pytest.mark.parametrize("damage, match", [
    ("cut data", r"train-images-idx3-ubyte\.gz: 3984 bytes of data for an array of shape \(20, 28, 28\)"),
    ("cut gzip", r"train-images-idx3-ubyte\.gz: unreadable \(EOFError"),
    ("few labels", r"20 train images but 15 labels"),
], ids=["cut-data", "cut-gzip", "few-labels"])
def test_a_damaged_fashion_mnist_idx_file_is_named(tmp_path, monkeypatch, damage, match):
    # a truncated download in HF_NC_FASHION_MNIST_DIR used to end in NumPy's "cannot reshape array of size
    # 3984 into shape (20,28,28)", gzip's "Compressed file ended ..." or an ArrowInvalid, naming no file
    import gzip

    folder = _fashion_mnist_idx(tmp_path / "fmnist", labels=15 if damage == "few labels" else None)
    images = folder / "train-images-idx3-ubyte.gz"
    if damage == "cut data":
        images.write_bytes(gzip.compress(gzip.decompress(images.read_bytes())[:4000]))
    elif damage == "cut gzip":
        images.write_bytes(images.read_bytes()[:-200])
    monkeypatch.setenv("HF_NC_FASHION_MNIST_DIR", str(folder))
    monkeypatch.setenv("HF_NC_CACHE", str(tmp_path / "cache"))
    with pytest.raises(ValueError, match=match):
        load_image_dataset("fashion_mnist", progress=False)
    monkeypatch.setenv("HF_NC_FASHION_MNIST_DIR", str(_fashion_mnist_idx(tmp_path / "good")))
    assert len(load_image_dataset("fashion_mnist", progress=False)["train"]) == 20
