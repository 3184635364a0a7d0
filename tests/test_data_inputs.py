"""Inputs users pass that used to load silently wrong or fail without naming the problem: class
names that look like ids, unlabelled rows, array images, imbalanced validation splits."""

from __future__ import annotations

from collections import Counter

import numpy as np
import pytest
from datasets import ClassLabel, Dataset, DatasetDict, Features, Image, Value
from PIL import Image as PILImage

from hf_nc.data import load_image_dataset, proportional_indices, select_classes


def _save(tmp_path, splits: dict, name="d", features=None) -> str:
    path = tmp_path / name
    DatasetDict({k: Dataset.from_dict(v, features=features) for k, v in splits.items()}).save_to_disk(str(path))
    return str(path)


def _gray(values):  # one 4x4 image per value, the value as its pixels
    return [PILImage.fromarray(np.full((4, 4), v, dtype=np.uint8)) for v in values]


def test_class_names_that_look_like_ids_are_names():
    # class folders 1..10 sort as text: "1" is id 0, "10" id 1
    names = ["1", "10", "2"]
    ds = Dataset.from_dict({"image": _gray([0, 1, 2]), "label": [0, 1, 2]},
                           features=Features(image=Image(), label=ClassLabel(names=names)))
    assert select_classes(ds, ["1"]).features["label"].names == ["1"]
    assert select_classes(ds, ["10", "2"]).features["label"].names == ["10", "2"]
    assert select_classes(ds, [1]).features["label"].names == ["10"]  # a Python int is an id
    assert select_classes(ds, ["1"])["image"][0].getpixel((0, 0)) == 0  # the image of folder "1"
    with pytest.raises(ValueError, match="neither a class name nor a class id"):
        select_classes(ds, ["7"])


def test_unlabelled_rows_are_an_error_naming_the_split(tmp_path):
    feats = Features(image=Image(), label=ClassLabel(names=["a", "b", "c"]))
    path = _save(tmp_path, {"train": {"image": _gray(range(6)), "label": [0, 1, 2, 0, 1, 2]},
                            "test": {"image": _gray(range(6)), "label": [0, 1, 2, -1, -1, -1]}}, features=feats)
    for classes in (None, ["a", "c"]):  # with classes, -1 used to become the last kept class
        with pytest.raises(ValueError, match=r"3 of 6 rows of the test split have labels outside 0..2 \(e.g. -1"):
            load_image_dataset(path, classes=classes)


def test_missing_labels_and_label_columns_are_named(tmp_path):
    path = _save(tmp_path, {"train": {"image": _gray(range(4)), "label": ["a", None, "b", "a"]}}, "none")
    with pytest.raises(ValueError, match="1 of 4 rows of the train split have no label"):
        load_image_dataset(path)
    feats = Features(image=Image(), label=ClassLabel(names=["a", "b"]))
    path = tmp_path / "nolabel"
    DatasetDict(train=Dataset.from_dict({"image": _gray(range(4)), "label": [0, 1, 0, 1]}, features=feats),
                test=Dataset.from_dict({"image": _gray(range(2))}, features=Features(image=Image()))).save_to_disk(str(path))
    with pytest.raises(ValueError, match="the test split has no column 'label'"):
        load_image_dataset(str(path))


@pytest.mark.parametrize("dtype, values, want", [
    ("uint8", [0, 7, 200, 255], [0, 7, 200, 255]),
    ("int64", [0, 7, 200, 255], [0, 7, 200, 255]),  # nested Python lists
    ("uint16", [0, 257 * 7, 65535, 257 * 200], [0, 7, 255, 200]),
    ("float32", [0.0, 0.5, 1.0, 0.2], [0, 128, 255, 51]),
])
def test_array_images_keep_their_pixel_values(tmp_path, dtype, values, want):
    # datasets' Image() stores a grayscale array as 32-bit "I" (read as 16-bit: almost black)
    images = [np.full((3, 5), v, dtype=dtype) for v in values]
    path = _save(tmp_path, {"train": {"image": [a.tolist() if dtype == "int64" else a for a in images], "label": [0, 1, 0, 1]},
                            "test": {"image": images[:2] if dtype != "int64" else [a.tolist() for a in images[:2]], "label": [0, 1]}})
    data = load_image_dataset(path)
    got = [(im.mode, im.size, int(np.asarray(im)[0, 0])) for im in data["train"]["image"]]
    assert got == [("L", (5, 3), w) for w in want]


def test_channel_first_and_colour_arrays(tmp_path):
    rgb = np.zeros((4, 6, 3), np.uint8)
    rgb[..., 0], rgb[..., 2] = 10, 250
    path = _save(tmp_path, {"train": {"image": [np.moveaxis(rgb, -1, 0), rgb], "label": [0, 1]},
                            "test": {"image": [rgb, rgb], "label": [0, 1]}})
    chw, hwc = load_image_dataset(path, test_size=1)["train"]["image"]
    assert chw.mode == hwc.mode == "RGB" and chw.size == hwc.size == (6, 4)
    assert np.array_equal(np.asarray(chw), rgb) and np.array_equal(np.asarray(hwc), rgb)
    bad = _save(tmp_path, {"train": {"image": [np.zeros((2, 3, 4, 5), np.uint8)] * 2, "label": [0, 1]}}, "bad")
    with pytest.raises(ValueError, match=r"has shape \(2, 3, 4, 5\)"):
        load_image_dataset(bad)


def test_fraction_validation_split_is_proportional_per_class(tmp_path):
    labels = [0] * 200 + [1] * 20
    path = _save(tmp_path, {"train": {"image": _gray([i % 250 for i in range(220)]), "label": labels},
                            "test": {"image": _gray([0, 1]), "label": [0, 1]}})
    data = load_image_dataset(path, validation_split=0.15)
    assert Counter(data["validation"]["label"]) == {0: 30, 1: 3}  # was 16 / 17: the rare class drained
    assert Counter(data["train"]["label"]) == {0: 170, 1: 17}


def test_proportional_indices_by_hand():
    labels = np.array([0] * 7 + [1] * 3 + [2] * 2)
    idx = proportional_indices(labels, 0.25, seed=3)
    # exact shares 1.75 / 0.75 / 0.5 -> floors 1/0/0, total round(3) = 3: the two largest remainders get one
    # more (1.75 -> 2, 0.75 -> 1); class 2 still gets its minimum of 1 and keeps one outside
    assert Counter(labels[idx].tolist()) == {0: 2, 1: 1, 2: 1}
    assert np.array_equal(idx, proportional_indices(labels, 0.25, seed=3))
    with pytest.raises(ValueError, match=r"class\(es\) \[1\] have a single image"):
        proportional_indices(np.array([0, 0, 1]), 0.5)


def test_validation_fraction_that_leaves_a_class_empty_is_an_error(tmp_path):
    labels = [0] * 8 + [1] * 8 + [2] * 5
    path = _save(tmp_path, {"train": {"image": _gray(range(21)), "label": labels}, "test": {"image": _gray([0, 1, 2]), "label": [0, 1, 2]}})
    with pytest.raises(ValueError, match=r"validation_split=0.2 \(recipes: --train_val_split\): class\(es\) \[2\] have no images left"):
        load_image_dataset(path, shots_per_class=5, validation_split=0.2)


def test_train_only_data_too_small_for_a_test_split(tmp_path):
    path = _save(tmp_path, {"train": {"image": _gray(range(5)), "label": [0, 0, 1, 1, 2]}})
    with pytest.raises(ValueError, match=r"has no test split, so one is drawn .* class\(es\) \[2\] have fewer than 2 images"):
        load_image_dataset(path)


def test_single_class_image_folder_is_named(tmp_path):
    d = tmp_path / "one" / "train" / "cat"
    d.mkdir(parents=True)
    for i in range(3):
        PILImage.fromarray(np.full((4, 4), i, np.uint8)).save(d / f"{i}.png")
    with pytest.raises(ValueError, match="single class folder loads without labels"):
        load_image_dataset(str(tmp_path / "one"))


@pytest.mark.parametrize("mode", ["La", "LAB"])
@pytest.mark.parametrize("channels", [1, 3])
def test_modes_pil_cannot_convert_directly(mode, channels):
    # "conversion from La to L not supported" used to stop the first batch
    from transformers import ViTConfig

    from hf_nc.data import build_transforms

    tf = build_transforms(ViTConfig(image_size=4, patch_size=2, num_channels=channels, hidden_size=8, num_hidden_layers=1,
                                    num_attention_heads=2, intermediate_size=8), train=False)
    img = PILImage.new(mode, (4, 4))
    out = tf({"image": [img], "label": [0]})["pixel_values"][0]
    assert tuple(out.shape) == (channels, 4, 4) and bool(np.isfinite(out.numpy()).all())


@pytest.mark.parametrize("classes", [[], (), "12", 3], ids=["empty-list", "empty-tuple", "string", "int"])
def test_classes_must_be_a_non_empty_list(classes):
    # [] used to give empty splits that still listed all 10 class names; a string was read per character
    # ("12" silently kept classes 1 and 2 of Fashion-MNIST, not class 12 or "12"); an int was a bare TypeError
    with pytest.raises(ValueError, match=r"classes must be a non-empty list of class ids or names .*got "):
        load_image_dataset("digits", classes=classes, progress=False)
