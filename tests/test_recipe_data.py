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
