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


@pytest.mark.parametrize("method", list(METHODS))
def test_pipeline_classifies_a_pil_image_like_the_recipe(method, tiny_vit, tmp_path):
    from transformers import pipeline

    import hf_nc

    summary = finetune_vit.main(["--model_name_or_path", tiny_vit, "--output_dir", str(tmp_path), "--method", method, *QUICK, *METHODS[method]])
    folder = tmp_path / "adapter"
    assert (folder / "preprocessor_config.json").is_file()
    if method == "full":
        classify = pipeline("image-classification", model=str(folder))
    else:
        model = hf_nc.AutoPeftModelForImageClassification.from_pretrained(str(folder))
        classify = pipeline("image-classification", model=model, image_processor=str(folder))
    image, test = digit_image()
    out = classify(image, top_k=10)
    names = [str(i) for i in range(10)]
    assert sorted(o["label"] for o in out) == names  # the task's class names, not LABEL_i
    # the same numbers as the trained model on the recipe's own evaluation transform
    from hf_nc.data import build_transforms

    model = classify.model.eval()
    transform = build_transforms(common.image_spec(model, classify.image_processor), train=False)
    pixels = test.select([0]).with_transform(transform)[0]["pixel_values"][None]
    with torch.no_grad():
        probs = torch.softmax(model(pixel_values=pixels).logits, -1)[0]
    expected = {names[i]: float(p) for i, p in enumerate(probs)}
    for o in out:
        assert o["score"] == pytest.approx(expected[o["label"]], abs=1e-5)
    # and the recipe's test accuracy (its Trainer evaluation) is the pipeline's on the same test images
    from hf_nc.data import stratified_subset

    images = stratified_subset(test, 20, seed=0)
    predicted = [classify(row["image"], top_k=1)[0]["label"] for row in images]
    accuracy = np.mean([p == names[y] for p, y in zip(predicted, images["label"])])
    assert accuracy == pytest.approx(summary["test_accuracy"])
