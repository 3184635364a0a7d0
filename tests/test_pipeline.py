"""A recipe's output works in transformers' ``pipeline("image-classification")``, preprocessed as trained."""

import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from tiny_models import build_tiny_model

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "recipes"))
import common  # noqa: E402
import finetune_vit  # noqa: E402

QUICK = ["--max_steps", "2", "--shots_per_class", "3", "--validation_shots_per_class", "1", "--max_eval_samples", "20",
         "--nc_train_samples", "20", "--per_device_train_batch_size", "8", "--eval_strategy", "no"]
METHODS = {"full": [], "layer": ["--layers=-1"], "heads": ["--heads=-1:0,1"]}


@pytest.fixture(scope="module")
def tiny_vit(tmp_path_factory):
    path = tmp_path_factory.mktemp("tiny_vit")
    build_tiny_model("vit_cls").save_pretrained(path)  # no image processor: the recipe builds one
    return str(path)


def digit_image():
    from hf_nc.data import load_image_dataset

    test = load_image_dataset("digits")["test"]
    return test[0]["image"].convert("L"), test


def _pipeline_for(method: str, folder: Path):
    """The documented call: ``pipeline(model=folder)`` for ``full``; for adapters, the model loaded with
    ``hf_nc.AutoPeftModelForImageClassification`` and ``image_processor=folder``."""
    from transformers import pipeline

    import hf_nc

    assert (folder / "preprocessor_config.json").is_file()
    if method == "full":
        return pipeline("image-classification", model=str(folder))
    model = hf_nc.AutoPeftModelForImageClassification.from_pretrained(str(folder))
    return pipeline("image-classification", model=model, image_processor=str(folder))


def _assert_like_the_recipe(classify, test, summary, images) -> None:
    """Every image of ``images`` (PIL, any mode) scores as the trained model on the recipe's own evaluation
    transform of test image 0, and the pipeline's accuracy is the recipe's test accuracy."""
    from hf_nc.data import build_transforms, stratified_subset

    names = [str(i) for i in range(10)]
    model = classify.model.eval()
    transform = build_transforms(common.image_spec(model, classify.image_processor), train=False)
    pixels = test.select([0]).with_transform(transform)[0]["pixel_values"][None]
    with torch.no_grad():
        probs = torch.softmax(model(pixel_values=pixels).logits, -1)[0]
    expected = {names[i]: float(p) for i, p in enumerate(probs)}
    for image in images:
        out = classify(image, top_k=10)
        assert sorted(o["label"] for o in out) == names  # the task's class names, not LABEL_i
        for o in out:
            assert o["score"] == pytest.approx(expected[o["label"]], abs=1e-5), image.mode
    # and the recipe's test accuracy (its Trainer evaluation) is the pipeline's on the same test images
    subset = stratified_subset(test, 20, seed=0)
    predicted = [classify(row["image"], top_k=1)[0]["label"] for row in subset]
    accuracy = np.mean([p == names[y] for p, y in zip(predicted, subset["label"])])
    assert accuracy == pytest.approx(summary["test_accuracy"])


@pytest.mark.parametrize("method", list(METHODS))
def test_pipeline_classifies_a_pil_image_like_the_recipe(method, tiny_vit, tmp_path):
    summary = finetune_vit.main(["--model_name_or_path", tiny_vit, "--output_dir", str(tmp_path), "--method", method, *QUICK, *METHODS[method]])
    classify = _pipeline_for(method, tmp_path / "adapter")
    image, test = digit_image()
    _assert_like_the_recipe(classify, test, summary, [image])


@pytest.mark.parametrize("method", list(METHODS))
def test_pipeline_on_the_builtin_models_outputs_takes_rgb_and_gray_images(method, tmp_path):
    """The built-in checkpoint (1 channel, the recipes' default, ``make demo``) ships
    ``hf_nc.GrayscaleViTImageProcessor``; its outputs classify RGB and "L" PIL images (pipeline() makes both RGB)."""
    from hf_nc.processing import GrayscaleViTImageProcessor

    summary = finetune_vit.main(["--output_dir", str(tmp_path), "--method", method, *QUICK, *METHODS[method]])
    classify = _pipeline_for(method, tmp_path / "adapter")
    assert isinstance(classify.image_processor, GrayscaleViTImageProcessor)
    assert classify.model.config.num_channels == 1
    image, test = digit_image()
    _assert_like_the_recipe(classify, test, summary, [image, image.convert("RGB")])


def test_grayscale_checkpoint_without_processor_gets_the_grayscale_one(tmp_path):
    """A 1-channel checkpoint with no preprocessor_config.json: the recipe builds (and saves) the grayscale processor."""
    import shutil

    from hf_nc.checkpoints import DEFAULT_MODEL
    from hf_nc.processing import GrayscaleViTImageProcessor

    base = tmp_path / "base"
    shutil.copytree(DEFAULT_MODEL, base, ignore=shutil.ignore_patterns("preprocessor_config.json"))
    summary = finetune_vit.main(["--model_name_or_path", str(base), "--output_dir", str(tmp_path / "out"), "--method", "full", *QUICK])
    classify = _pipeline_for("full", tmp_path / "out" / "adapter")
    assert type(classify.image_processor) is GrayscaleViTImageProcessor
    image, test = digit_image()
    _assert_like_the_recipe(classify, test, summary, [image, image.convert("RGB")])
