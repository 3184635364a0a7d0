"""hf_nc.data: every source, subsets, transforms, and fast clear errors for missing data."""

import time
from collections import Counter

import numpy as np
import pytest
import torch
from datasets import ClassLabel, Dataset, DatasetDict, Features, Image, Value
from PIL import Image as PILImage

from hf_nc.data import (
    DataNotFoundError,
    build_transforms,
    collate_fn,
    fashion_mnist_dir,
    few_shot_indices,
    load_image_dataset,
)
from hf_nc.data import builtin as builtin_mod


@pytest.fixture(scope="module")
def digits():
    return load_image_dataset("digits")


def _tiny_vit_config(channels=3, size=16):
    from transformers import ViTConfig

    return ViTConfig(image_size=size, patch_size=4, num_channels=channels, hidden_size=16,
                     num_hidden_layers=1, num_attention_heads=2, intermediate_size=32)


def _png_dataset(n_per_class, names, seed=0):
    rng = np.random.default_rng(seed)
    imgs, labels = [], []
    for k in range(len(names)):
        for _ in range(n_per_class):
            imgs.append(PILImage.fromarray(rng.integers(0, 256, (6, 6, 3), dtype=np.uint8)))
            labels.append(k)
    return imgs, labels


# ---------------------------------------------------------------- sources


def test_digits_builtin(digits):
    assert set(digits) == {"train", "test"}
    assert (len(digits["train"]), len(digits["test"])) == (1347, 450)
    assert list(digits["train"].features) == ["image", "label"]
    assert digits["train"].features["label"].names == [str(i) for i in range(10)]
    img = digits["train"][0]["image"]
    assert img.mode == "L" and img.size == (8, 8)
    # stratified: every class is about 25% test
    tr, te = Counter(digits["train"]["label"]), Counter(digits["test"]["label"])
    for k in range(10):
        assert abs(te[k] / (tr[k] + te[k]) - 0.25) < 0.02
    # fixed split: a second load gives the same rows
    again = load_image_dataset("digits", seed=123)
    assert again["test"]["label"] == digits["test"]["label"]
    assert np.array_equal(np.asarray(again["test"][7]["image"]), np.asarray(digits["test"][7]["image"]))


def test_saved_to_disk_hub_style_columns_and_stratified_test_split(tmp_path):
    names = ["apple", "pear", "plum"]
    imgs, labels = _png_dataset(20, names)
    ds = Dataset.from_dict(
        {"img": imgs, "fine_label": labels, "extra": list(range(len(labels)))},
        features=Features({"img": Image(), "fine_label": ClassLabel(names=names), "extra": Value("int64")}),
    )
    DatasetDict(train=ds).save_to_disk(str(tmp_path / "saved"))
    data = load_image_dataset(str(tmp_path / "saved"), test_size=0.25, split_seed=3)
    assert list(data["train"].features) == ["image", "label"]
    assert data["train"].features["label"].names == names
    assert len(data["test"]) == 15 and Counter(data["test"]["label"]) == {0: 5, 1: 5, 2: 5}
    again = load_image_dataset(str(tmp_path / "saved"), test_size=0.25, split_seed=3)
    assert np.array_equal(np.asarray(again["test"][0]["image"]), np.asarray(data["test"][0]["image"]))


def test_local_dataset_repo_folder_with_string_labels(tmp_path):
    """A folder laid out like a Hub dataset repo (parquet per split), labels given as strings."""
    repo = tmp_path / "repo" / "data"
    repo.mkdir(parents=True)
    names = ["cat", "dog"]
    for split, n in (("train", 6), ("test", 3)):
        imgs, labels = _png_dataset(n, names, seed=len(split))
        Dataset.from_dict({"picture": imgs, "target": [names[y] for y in labels]},
                          features=Features({"picture": Image(), "target": Value("string")})).to_parquet(
            str(repo / f"{split}-00000-of-00001.parquet"))
    data = load_image_dataset(str(tmp_path / "repo"), image_column="picture", label_column="target")
    assert data["train"].features["label"] == data["test"].features["label"] == ClassLabel(names=names)
    assert Counter(data["train"]["label"]) == {0: 6, 1: 6} and len(data["test"]) == 6
    assert isinstance(data["train"][0]["image"], PILImage.Image)


def test_imagefolder(tmp_path):
    rng = np.random.default_rng(0)
    for split, n in (("train", 4), ("test", 2)):
        for cls in ("cat", "dog"):
            d = tmp_path / "folder" / split / cls
            d.mkdir(parents=True)
            for i in range(n):
                PILImage.fromarray(rng.integers(0, 256, (5, 7, 3), dtype=np.uint8)).save(d / f"{i}.png")
    data = load_image_dataset(str(tmp_path / "folder"))
    assert data["train"].features["label"].names == ["cat", "dog"]
    assert Counter(data["train"]["label"]) == {0: 4, 1: 4}
    assert Counter(data["test"]["label"]) == {0: 2, 1: 2}
    assert data["train"][0]["image"].size == (7, 5)


@pytest.mark.skipif(fashion_mnist_dir() is None, reason="Fashion-MNIST IDX files absent (apt-get install dataset-fashion-mnist)")
def test_fashion_mnist_from_idx():
    data = load_image_dataset("fashion_mnist")
    assert (len(data["train"]), len(data["test"])) == (60000, 10000)
    assert data["train"].features["label"].names[:2] == ["T-shirt/top", "Trouser"]
    assert Counter(data["test"]["label"]) == {k: 1000 for k in range(10)}
    img = data["train"][0]["image"]
    assert img.mode == "L" and img.size == (28, 28)
    assert data["train"][0]["label"] == 9  # the first training image is an ankle boot
    src = load_image_dataset("fashion_mnist", classes=[5, 6, 7, 8, 9])
    assert src["train"].features["label"].names == ["Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot"]
    assert Counter(src["test"]["label"]) == {k: 1000 for k in range(5)}
    by_name = load_image_dataset("fashion_mnist", classes=["Bag", "Sandal"], shots_per_class=3)
    assert by_name["train"].features["label"].names == ["Bag", "Sandal"] and len(by_name["train"]) == 6


# ---------------------------------------------------------------- subsets


def test_few_shot_indices_stratified_and_reproducible():
    labels = np.repeat(np.arange(4), [10, 7, 9, 5])
    a = few_shot_indices(labels, 5, seed=0)
    assert np.array_equal(a, few_shot_indices(labels, 5, seed=0))
    assert not np.array_equal(a, few_shot_indices(labels, 5, seed=1))
    assert Counter(labels[a].tolist()) == {0: 5, 1: 5, 2: 5, 3: 5}
    assert len(set(a.tolist())) == 20
    with pytest.raises(ValueError, match="fewer"):
        few_shot_indices(labels, 6, seed=0)
    with pytest.raises(ValueError, match="fewer"):  # a listed class with no example at all
        few_shot_indices(labels, 1, num_classes=5)


def test_shots_per_class_on_dataset(digits):
    a = load_image_dataset("digits", shots_per_class=4, seed=7)
    b = load_image_dataset("digits", shots_per_class=4, seed=7)
    c = load_image_dataset("digits", shots_per_class=4, seed=8)
    assert Counter(a["train"]["label"]) == {k: 4 for k in range(10)}
    assert len(a["test"]) == 450  # only train is subsampled
    pix = lambda d: np.stack([np.asarray(im) for im in d["train"]["image"]])  # noqa: E731
    assert np.array_equal(pix(a), pix(b)) and not np.array_equal(pix(a), pix(c))
    with pytest.raises(ValueError, match="fewer"):
        load_image_dataset("digits", shots_per_class=1000)


def test_class_subset_remaps_labels_and_keeps_names(digits):
    sub = load_image_dataset("digits", classes=[7, 2, 9])
    assert sub["train"].features["label"].names == ["7", "2", "9"]
    for split in ("train", "test"):
        orig = digits[split]
        keep = [i for i, y in enumerate(orig["label"]) if y in (7, 2, 9)]
        assert len(sub[split]) == len(keep)
        assert sub[split]["label"] == [{7: 0, 2: 1, 9: 2}[orig["label"][i]] for i in keep]
        assert np.array_equal(np.asarray(sub[split][3]["image"]), np.asarray(orig[keep[3]]["image"]))
    few = load_image_dataset("digits", classes=[1, 3], shots_per_class=2)
    assert Counter(few["train"]["label"]) == {0: 2, 1: 2}
    with pytest.raises(ValueError):
        load_image_dataset("digits", classes=[1, 1])


# ---------------------------------------------------------------- transforms


def _manual(img, size, mode, mean, std):
    arr = np.asarray(img.convert(mode).resize((size, size), PILImage.BILINEAR), dtype=np.float32) / 255.0
    arr = arr[None] if arr.ndim == 2 else arr.transpose(2, 0, 1)
    return (torch.from_numpy(arr.copy()) - torch.tensor(mean).view(-1, 1, 1)) / torch.tensor(std).view(-1, 1, 1)


def test_transform_gray_to_rgb_from_config(digits):
    tf = build_transforms(_tiny_vit_config(channels=3, size=16), train=False)
    out = digits["train"].select(range(4)).with_transform(tf)
    batch = collate_fn([out[i] for i in range(4)])
    assert batch["pixel_values"].shape == (4, 3, 16, 16) and batch["pixel_values"].dtype == torch.float32
    assert batch["labels"].tolist() == digits["train"]["label"][:4]
    want = _manual(digits["train"][2]["image"], 16, "RGB", [0.5] * 3, [0.5] * 3)
    assert torch.allclose(batch["pixel_values"][2], want, atol=1e-6)


def test_transform_uses_saved_image_processor_and_rgb_to_gray(tmp_path):
    from transformers import ViTForImageClassification, ViTImageProcessorPil

    model = ViTForImageClassification(_tiny_vit_config(channels=1, size=12))
    model.save_pretrained(tmp_path / "m")
    ViTImageProcessorPil(size={"height": 12, "width": 12}, image_mean=[0.2], image_std=[0.3]).save_pretrained(tmp_path / "m")
    img = PILImage.fromarray(np.random.default_rng(0).integers(0, 256, (9, 5, 3), dtype=np.uint8))
    want = _manual(img, 12, "L", [0.2], [0.3])
    for source in (str(tmp_path / "m"), ViTForImageClassification.from_pretrained(tmp_path / "m")):
        got = build_transforms(source, train=False)({"image": [img], "label": [1]})
        assert got["pixel_values"][0].shape == (1, 12, 12) and got["labels"] == [1]
        assert torch.allclose(got["pixel_values"][0], want, atol=1e-6)


def test_augmentation_only_when_asked_and_seeded(digits):
    config = _tiny_vit_config(channels=1, size=16)
    img = digits["train"][0]["image"]
    plain = build_transforms(config, train=False)({"image": [img]})["pixel_values"][0]
    assert torch.equal(build_transforms(config, train=True)({"image": [img]})["pixel_values"][0], plain)
    assert torch.equal(build_transforms(config, train=False, augment=True)({"image": [img]})["pixel_values"][0], plain)
    aug = build_transforms(config, train=True, augment="crop,flip", crop_scale=(0.3, 0.6))
    torch.manual_seed(0)
    a = aug({"image": [img] * 8})["pixel_values"]
    torch.manual_seed(0)
    b = aug({"image": [img] * 8})["pixel_values"]
    assert a.__len__() == 8 and all(x.shape == (1, 16, 16) for x in a)
    assert all(torch.equal(x, y) for x, y in zip(a, b))
    assert any(not torch.equal(x, plain) for x in a)
    flip = build_transforms(config, train=True, augment=["flip"])({"image": [img] * 16})["pixel_values"]
    assert all(torch.equal(x, plain) or torch.equal(x, plain.flip(-1)) for x in flip)
    two = build_transforms(config, train=True, augment="crop", views=2)({"image": [img], "label": [0]})
    assert set(two) == {"pixel_values", "pixel_values_2", "labels"}
    with pytest.raises(ValueError, match="unknown augmentations"):
        build_transforms(config, train=True, augment="rotate")


# ---------------------------------------------------------------- missing data


def _raises_fast(match, fn, *args, **kwargs):
    t = time.monotonic()
    with pytest.raises(DataNotFoundError, match=match):
        fn(*args, **kwargs)
    assert time.monotonic() - t < 3.0


def test_missing_hub_dataset_offline_fails_fast():
    _raises_fast("Hub is off", load_image_dataset, "no-such-user/no-such-dataset")


def test_missing_local_path_fails_fast(tmp_path):
    _raises_fast("not a local folder", load_image_dataset, str(tmp_path / "nope"))
    (tmp_path / "empty").mkdir()
    _raises_fast("no loadable data", load_image_dataset, str(tmp_path / "empty"))


def test_missing_fashion_mnist_says_what_to_install(monkeypatch, tmp_path):
    monkeypatch.setattr(builtin_mod, "FASHION_MNIST_DIRS", (str(tmp_path),))
    monkeypatch.delenv("HF_NC_FASHION_MNIST_DIR", raising=False)
    _raises_fast("apt-get install -y dataset-fashion-mnist", load_image_dataset, "fashion_mnist")


def test_unreachable_hub_fails_fast_without_retries(monkeypatch):
    """Hub allowed but unreachable (closed local port): a clear error at once, not ~20 s of retries."""
    import huggingface_hub.constants as hc

    monkeypatch.setenv("HF_HUB_OFFLINE", "0")
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "0")
    monkeypatch.setattr(hc, "HF_HUB_OFFLINE", False)
    monkeypatch.setenv("HF_ENDPOINT", "http://127.0.0.1:9")
    for var in ("HTTPS_PROXY", "https_proxy", "ALL_PROXY", "all_proxy"):
        monkeypatch.delenv(var, raising=False)
    _raises_fast("unreachable", load_image_dataset, "no-such-user/no-such-dataset")


# ---------------------------------------------------------------- evaluation = the model's image processor


def _processors():
    """Typical configs of the three processor families hf-nc backs (as on the Hub), built offline."""
    from transformers import BitImageProcessorPil, CLIPImageProcessorPil, ViTImageProcessorPil

    return {
        "vit": ViTImageProcessorPil(size={"height": 224, "width": 224}, image_mean=[0.5] * 3, image_std=[0.5] * 3),
        "clip": CLIPImageProcessorPil(
            size={"shortest_edge": 224}, crop_size={"height": 224, "width": 224}, do_center_crop=True, resample=3,
            image_mean=[0.48145466, 0.4578275, 0.40821073], image_std=[0.26862954, 0.26130258, 0.27577711],
        ),
        "dinov2": BitImageProcessorPil(
            size={"shortest_edge": 256}, crop_size={"height": 224, "width": 224}, do_center_crop=True, resample=3,
            image_mean=[0.485, 0.456, 0.406], image_std=[0.229, 0.224, 0.225], do_convert_rgb=True,
        ),
    }


def _odd_images():
    # 31 x 23: 224 * 31 / 23 = 301.9, where rounding and transformers' floor disagree by a pixel.
    rng = np.random.default_rng(1)
    return [PILImage.fromarray(rng.integers(0, 256, (23, 31, 3), dtype=np.uint8)),
            PILImage.fromarray(rng.integers(0, 256, (40, 17), dtype=np.uint8)),  # grayscale into an RGB model
            PILImage.fromarray(rng.integers(0, 256, (224, 224, 3), dtype=np.uint8))]


@pytest.mark.parametrize("family", ["vit", "clip", "dinov2"])
def test_eval_pixels_equal_the_model_image_processor(family, tmp_path):
    from transformers import CLIPVisionConfig, Dinov2Config

    processor = _processors()[family]
    config = {"vit": _tiny_vit_config(size=224), "clip": CLIPVisionConfig(image_size=224, patch_size=32, hidden_size=16, intermediate_size=32,
              num_hidden_layers=1, num_attention_heads=2), "dinov2": Dinov2Config(image_size=224, patch_size=14, hidden_size=16,
              num_hidden_layers=1, num_attention_heads=2)}[family]
    config.save_pretrained(tmp_path)
    processor.save_pretrained(tmp_path)
    images = _odd_images()
    # What pipeline("image-classification") feeds the model: load_image's RGB image through the processor.
    want = [processor(im.convert("RGB"), return_tensors="pt")["pixel_values"][0] for im in images]
    for source in (processor, str(tmp_path)):
        for train in (False, True):  # training without augmentation sees the same pixels
            got = build_transforms(source, train=train)({"image": images, "label": [0, 1, 2]})["pixel_values"]
            for g, w in zip(got, want):
                assert g.shape == w.shape == (3, 224, 224)
                assert torch.equal(g, w), (family, source, train)
    # Flip augmentation flips the processor's pixels; crop goes through the hand-written path.
    flipped = build_transforms(processor, train=True, augment="flip")({"image": images * 4})["pixel_values"]
    assert all(torch.equal(g, w) or torch.equal(g, w.flip(-1)) for g, w in zip(flipped, want * 4))
    assert any(torch.equal(g, w.flip(-1)) and not torch.equal(g, w) for g, w in zip(flipped, want * 4))
    cropped = build_transforms(processor, train=True, augment="crop")({"image": images})["pixel_values"]
    assert all(c.shape == (3, 224, 224) for c in cropped)


def test_the_old_hand_written_clip_resize_was_a_pixel_off():
    """The reason for the change: resize-then-crop by hand rounds where transformers floors."""
    from hf_nc.data.transforms import ImageTransform, spec_from_processor

    processor = _processors()["clip"]
    img = _odd_images()[0]
    spec = spec_from_processor(processor)
    hand = ImageTransform(spec)._hand_written(img)
    assert not torch.equal(hand, processor(img, return_tensors="pt")["pixel_values"][0])


@pytest.mark.parametrize("family, want_resize", [("vit", (56, 56)), ("clip", (56, 56)), ("dinov2", (64, 64))])
def test_image_size_override(family, want_resize):
    processor = _processors()[family]
    img = _odd_images()[2]  # square 224 px image
    got = build_transforms(processor, train=False, image_size=56)({"image": [img]})["pixel_values"][0]
    assert got.shape == (3, 56, 56)
    # Independent expectation: PIL resize to the scaled resize size, centre crop 56, normalise.
    resized = img.resize(want_resize, processor.resample)
    left = (want_resize[0] - 56) // 2
    arr = np.asarray(resized.crop((left, left, left + 56, left + 56)), dtype=np.float32) / 255.0
    want = (torch.from_numpy(arr).permute(2, 0, 1) - torch.tensor(processor.image_mean).view(3, 1, 1)) / torch.tensor(processor.image_std).view(3, 1, 1)
    assert torch.allclose(got, want, atol=1e-5)
    # The hand-written path (a bare config) takes the override too, also with augmentation.
    config = _tiny_vit_config(size=224)
    assert build_transforms(config, train=False, image_size=(32, 48))({"image": [img]})["pixel_values"][0].shape == (3, 32, 48)
    assert build_transforms(processor, train=True, augment="crop", image_size=56)({"image": [img]})["pixel_values"][0].shape == (3, 56, 56)
    with pytest.raises(ValueError, match="positive"):
        build_transforms(config, train=False, image_size=0)


def test_builtin_stable_name_resolves_to_its_processor():
    from hf_nc.checkpoints import DEFAULT_MODEL

    img = PILImage.fromarray(np.random.default_rng(0).integers(0, 256, (8, 8), dtype=np.uint8))
    want = build_transforms(DEFAULT_MODEL, train=False)({"image": [img]})["pixel_values"][0]
    got = build_transforms("hf-nc/tiny-vit-fmnist", train=False)({"image": [img]})["pixel_values"][0]
    assert got.shape == (1, 28, 28) and torch.equal(got, want)
