"""The recipes' data and model set-up: the classifier head, subsets, where the test split came from."""

import json
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "recipes"))
import common  # noqa: E402
import finetune_vit  # noqa: E402

from hf_nc.checkpoints import DEFAULT_MODEL  # noqa: E402
from hf_nc.data import FASHION_MNIST_CLASSES  # noqa: E402


def checkpoint_classifier() -> dict:
    from safetensors.torch import load_file

    weights = load_file(str(Path(DEFAULT_MODEL) / "model.safetensors"))
    return {k: v for k, v in weights.items() if k.startswith("classifier.")}


@pytest.mark.parametrize("names, kept", [
    (FASHION_MNIST_CLASSES, True),                    # the checkpoint's own task: its head is the trained one
    ([str(i) for i in range(10)], False),             # digits: 10 classes too, other names: a new head
    (list(reversed(FASHION_MNIST_CLASSES)), False),   # same names in another order: the rows would be wrong
])
def test_head_is_reset_when_the_data_labels_differ_from_the_checkpoint(names, kept):
    torch.manual_seed(0)
    model, _ = common.load_classifier(DEFAULT_MODEL, list(names), common.ModelArguments())
    expected = checkpoint_classifier()
    same = all(torch.equal(model.state_dict()[k], v) for k, v in expected.items())
    assert same is kept
    assert [model.config.id2label[i] for i in range(10)] == list(names)  # the saved model names the data's classes
    if not kept:
        assert torch.count_nonzero(model.classifier.bias) == 0  # freshly initialised


def test_reset_head_flag_overrides_the_comparison():
    model, _ = common.load_classifier(DEFAULT_MODEL, list(FASHION_MNIST_CLASSES), common.ModelArguments(reset_head=True))
    assert not torch.equal(model.classifier.weight, checkpoint_classifier()["classifier.weight"])
    model, _ = common.load_classifier(DEFAULT_MODEL, [str(i) for i in range(10)], common.ModelArguments(reset_head=False))
    assert torch.equal(model.classifier.weight, checkpoint_classifier()["classifier.weight"])


@pytest.fixture(scope="module")
def sorted_by_class(tmp_path_factory):
    """A saved DatasetDict whose splits are sorted by class, like an image folder: 10 classes, 12 + 8 images each."""
    from datasets import ClassLabel, Dataset, DatasetDict, Features, Image
    from PIL import Image as PIL

    rng = np.random.default_rng(0)
    names = [f"class_{c}" for c in range(10)]

    def split(per_class):
        labels = [c for c in range(10) for _ in range(per_class)]
        images = [PIL.fromarray(rng.integers(0, 255, (8, 8), dtype=np.uint8)) for _ in labels]
        return Dataset.from_dict({"image": images, "label": labels}, features=Features(image=Image(), label=ClassLabel(names=names)))

    path = tmp_path_factory.mktemp("sorted") / "data"
    DatasetDict(train=split(12), test=split(8)).save_to_disk(str(path))
    return str(path)


def test_max_samples_take_stratified_seeded_subsets(sorted_by_class):
    dargs = common.DataArguments(dataset=sorted_by_class, max_train_samples=30, max_eval_samples=20)
    data = common.load_data(dargs, seed=0)
    assert np.bincount(data.test["label"], minlength=10).tolist() == [2] * 10  # the first 20 would be 2 classes
    assert np.bincount(data.train["label"], minlength=10).tolist() == [3] * 10
    again = common.load_data(dargs, seed=0)
    assert again.test["label"] == data.test["label"] and again.train["image"] == data.train["image"]
    other = common.load_data(dargs, seed=1)
    assert other.train["image"] != data.train["image"]  # the seed picks which images


def test_classes_flag_takes_spaces_and_a_trailing_comma():
    data = common.load_data(common.DataArguments(dataset="digits", classes=" 3, 7,", shots_per_class=2), seed=0)
    assert data.train.features["label"].names == ["3", "7"] and sorted(set(data.train["label"])) == [0, 1]
    with pytest.raises(ValueError, match="--classes needs at least one"):
        common.load_data(common.DataArguments(dataset="digits", classes=" , "), seed=0)


@pytest.mark.parametrize("flag", ["max_train_samples", "max_eval_samples"])
@pytest.mark.parametrize("n", [0, -3])
def test_max_samples_zero_or_negative_is_an_error_not_every_image(flag, n):
    with pytest.raises(ValueError, match=f"--{flag} must be >= 1"):
        common.load_data(common.DataArguments(dataset="digits", **{flag: n}), seed=0)


def test_zero_validation_shots_is_an_error_not_the_default_split():
    with pytest.raises(ValueError, match="--validation_shots_per_class must be >= 1 .*--train_val_split 0"):
        common.load_data(common.DataArguments(dataset="digits", shots_per_class=5, validation_shots_per_class=0), seed=0)
    none = common.load_data(common.DataArguments(dataset="digits", shots_per_class=5, train_val_split=0.0), seed=0)
    assert none.validation is None


def test_max_eval_samples_below_the_number_of_classes_is_an_error(sorted_by_class):
    with pytest.raises(ValueError, match="--max_eval_samples 5"):
        common.load_data(common.DataArguments(dataset=sorted_by_class, max_eval_samples=5), seed=0)


def test_train_only_folder_split_is_reported_in_the_summary(tmp_path, capsys):
    """A folder with only train/ is split into train and test: the log, the printed lines and summary.json say so."""
    from PIL import Image as PIL

    rng = np.random.default_rng(0)
    for c in ("cat", "dog"):
        (tmp_path / "data" / "train" / c).mkdir(parents=True)
        for i in range(10):
            PIL.fromarray(rng.integers(0, 255, (8, 8, 3), dtype=np.uint8)).save(tmp_path / "data" / "train" / c / f"{i}.png")
    summary = finetune_vit.main(["--dataset", str(tmp_path / "data"), "--output_dir", str(tmp_path / "out"), "--method", "linear_probe",
                                 "--max_steps", "1", "--eval_strategy", "no", "--nc_train_samples", "-1", "--train_val_split", "0"])
    saved = json.loads((tmp_path / "out" / "summary.json").read_text())
    assert saved["splits"] == summary["splits"] and "train" in saved["splits"]["test"]
    assert summary["num_images"]["test"] + summary["num_images"]["train"] == 20
    printed = capsys.readouterr().out
    assert f"test: {saved['splits']['test']}" in printed
    assert summary["head_reset"] is True  # the built-in model's Fashion-MNIST head is not kept for cat/dog


def test_validation_comes_from_training_images_outside_the_few_shot_subset(sorted_by_class):
    def pixels(ds):
        return {np.asarray(img).tobytes() for img in ds["image"]}

    with_val = common.load_data(common.DataArguments(dataset=sorted_by_class, shots_per_class=3, validation_shots_per_class=2), seed=0)
    without = common.load_data(common.DataArguments(dataset=sorted_by_class, shots_per_class=3, train_val_split=0), seed=0)
    assert np.bincount(with_val.validation["label"]).tolist() == [2] * 10 and without.validation is None
    assert not pixels(with_val.validation) & pixels(with_val.train)  # disjoint from the few-shot training images
    assert pixels(with_val.train) == pixels(without.train)  # the same few-shot subset either way
    assert not pixels(with_val.validation) & pixels(with_val.test)
