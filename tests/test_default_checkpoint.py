"""The shipped default checkpoint: loads offline, is small, classifies images."""

from pathlib import Path

import pytest
import torch

from hf_nc.checkpoints import DEFAULT_MODEL
from hf_nc.data import build_transforms, collate_fn, fashion_mnist_dir, load_image_dataset

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def model():
    from transformers import ViTForImageClassification

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield ViTForImageClassification.from_pretrained(DEFAULT_MODEL, local_files_only=True).eval()
    torch.set_num_threads(threads)


def _batch(dataset, n):
    return collate_fn([dataset.with_transform(build_transforms(DEFAULT_MODEL, train=False))[i] for i in range(n)])


def test_files_small_fp32_and_card_in_sync(model):
    folder = Path(DEFAULT_MODEL)
    for name in ("config.json", "model.safetensors", "preprocessor_config.json", "README.md"):
        assert (folder / name).is_file(), name
    assert sum(p.stat().st_size for p in folder.iterdir()) < 5_000_000
    assert all(p.dtype == torch.float32 for p in model.parameters())
    assert model.config.num_hidden_layers == 12 and model.config.num_channels == 1
    assert model.config.id2label[0] == "T-shirt/top" and model.config.num_labels == 10
    assert (folder / "README.md").read_text() == (ROOT / "model_cards" / "hf-nc-tiny-vit-fmnist.md").read_text()


def test_classifies_digits_images_shapes(model):
    batch = _batch(load_image_dataset("digits")["test"], 8)
    assert batch["pixel_values"].shape == (8, 1, 28, 28)
    with torch.no_grad():
        logits = model(pixel_values=batch["pixel_values"]).logits
    assert logits.shape == (8, 10) and torch.isfinite(logits).all()


@pytest.mark.skipif(fashion_mnist_dir() is None, reason="Fashion-MNIST IDX files absent (apt-get install dataset-fashion-mnist)")
def test_fashion_mnist_test_accuracy(model):
    test = load_image_dataset("fashion_mnist")["test"].select(range(500))
    batch = _batch(test, 500)
    with torch.no_grad():
        preds = model(pixel_values=batch["pixel_values"]).logits.argmax(-1)
    assert (preds == batch["labels"]).float().mean().item() > 0.75  # chance is 0.10; card: 0.855 on all 10k


def test_linear_probe_on_digits_beats_random_init():
    from hf_nc.probe import linear_probe, load_model

    data = load_image_dataset("digits")
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        pre = linear_probe(load_model(DEFAULT_MODEL), data)
        rnd = linear_probe(load_model(DEFAULT_MODEL, random_init=True, seed=0), data)
    finally:
        torch.set_num_threads(threads)
    assert pre["num_train"] == 1347 and pre["num_test"] == 450 and pre["dim"] == 64
    assert pre["test_accuracy"] == pytest.approx(0.9044, abs=0.02)  # the model card's number
    assert pre["test_accuracy"] > rnd["test_accuracy"] + 0.02
