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


# Fake Hub, side 1: the recipe pushes `heads` (adapter + card + image processor: push_adapter, one commit) and `full`
# runs of the built-in model, and records the scores the trained models give on the recipe's own transform.
HUB_PUSH = r"""
import json, sys, torch
sys.path.insert(0, sys.argv[2])
import common, finetune_vit
from hf_nc.data import build_transforms, load_image_dataset

out = sys.argv[1]
quick = json.loads(sys.argv[3])
test = load_image_dataset("digits")["test"]
expected = {}
for method, extra in [("heads", ["--heads=-1:0,1"]), ("full", [])]:
    summary = finetune_vit.main(["--output_dir", f"{out}/{method}", "--method", method, "--push_to_hub",
                                 "--hub_model_id", f"user/fmnist-{method}", *quick, *extra])
    assert "hub_error" not in summary, summary["hub_error"]
    import hf_nc, transformers as tf
    folder = f"{out}/{method}/adapter"
    model = (hf_nc.AutoPeftModelForImageClassification.from_pretrained(folder) if method != "full"
             else tf.AutoModelForImageClassification.from_pretrained(folder)).eval()
    processor = tf.AutoImageProcessor.from_pretrained(folder)
    pixels = test.select([0]).with_transform(build_transforms(common.image_spec(model, processor), train=False))[0]["pixel_values"]
    with torch.no_grad():
        probs = model(pixel_values=pixels[None]).logits.softmax(-1)[0]
    expected[method] = {model.config.id2label[i]: float(p) for i, p in enumerate(probs)}
print(json.dumps(expected))
"""

# Side 2, a fresh process with an empty cache: only the repo ids; the documented calls, on PIL RGB and L images.
HUB_LOAD = r"""
import json, sys
import hf_nc
from transformers import pipeline
from hf_nc.data import load_image_dataset

image = load_image_dataset("digits")["test"][0]["image"].convert("L")
pipes = {"heads": pipeline("image-classification", image_processor="user/fmnist-heads",
                           model=hf_nc.AutoPeftModelForImageClassification.from_pretrained("user/fmnist-heads")),
         "full": pipeline("image-classification", model="user/fmnist-full")}
print(json.dumps({m: {mode: {o["label"]: o["score"] for o in p(image.convert(mode), top_k=10)} for mode in ("L", "RGB")}
                  for m, p in pipes.items()}))
"""


@pytest.mark.slow
def test_pushed_builtin_runs_classify_pil_images_from_the_fake_hub(tmp_path):
    import json
    import os
    import subprocess
    import textwrap

    from hub_server import FakeHub

    def run(script, env, name, *args):
        (tmp_path / f"{name}.py").write_text(textwrap.dedent(script))
        proc = subprocess.run([sys.executable, str(tmp_path / f"{name}.py"), *args], env=env, cwd=tmp_path,
                              capture_output=True, text=True, timeout=400)
        assert proc.returncode == 0, proc.stderr[-4000:]
        return json.loads(proc.stdout.strip().splitlines()[-1])

    base_env = {k: v for k, v in os.environ.items() if k != "HF_HUB_OFFLINE"}
    with FakeHub() as hub:
        expected = run(HUB_PUSH, hub.client_env(tmp_path / "home_push", {**base_env, "OMP_NUM_THREADS": "1"}), "push",
                       str(tmp_path), str(ROOT / "recipes"), json.dumps(QUICK))
        # the adapter, its card and the image processor in ONE commit after the repo's initial one
        assert len(hub.repos[("model", "user/fmnist-heads")].commits) == 2
        files = hub.files("user/fmnist-heads")
        assert {"adapter_config.json", "adapter_model.safetensors", "README.md", "preprocessor_config.json"} <= set(files)
        assert json.loads(files["preprocessor_config.json"])["image_processor_type"] == "GrayscaleViTImageProcessor"
        assert "preprocessor_config.json" in hub.files("user/fmnist-full")
        loaded = run(HUB_LOAD, hub.client_env(tmp_path / "home_load", {**base_env, "OMP_NUM_THREADS": "1"}), "load")
    for method in ("heads", "full"):
        for mode in ("L", "RGB"):
            got = loaded[method][mode]
            assert set(got) == set(expected[method]) == {str(i) for i in range(10)}
            for label, score in got.items():
                assert score == pytest.approx(expected[method][label], abs=1e-5), (method, mode, label)
