"""What works with hf-nc adapters through transformers' own adapter API, and what raises (issue 10 section 5).

transformers' ``PreTrainedModel.load_adapter`` / ``AutoModel*.from_pretrained(adapter_dir)`` drive PEFT
through ``inject_adapter_in_model``. With the pinned peft 0.21, transformers refuses its adapter-switching
calls ("use peft >= 0.22"). This file pins that contract down so a change of either library shows up here;
docs steer users to the PEFT path (``PeftModel.from_pretrained``) or ``hf_nc.AutoPeftModelForImageClassification``.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import peft
import pytest
import torch
import transformers as tf
from packaging.version import Version
from peft import PeftModel, get_peft_model

import hf_nc  # noqa: F401  (registers the methods)
from tiny_models import build_tiny_model, tiny_pixels

sys.path.insert(0, str(Path(__file__).parent / "scripts"))
from adapter_cases import METHOD_CONFIGS, METHODS, first_output, perturb_trainables  # noqa: E402

OLD_PEFT = Version(peft.__version__) < Version("0.22")


def _saved(path: Path, method: str, model_name: str = "vit_cls", seed: int = 123) -> torch.Tensor:
    peft_model = get_peft_model(build_tiny_model(model_name), METHOD_CONFIGS[method]())
    perturb_trainables(peft_model, seed=seed)
    peft_model.save_pretrained(path)
    with torch.no_grad():
        return first_output(peft_model(pixel_values=tiny_pixels()))


def _logits(model) -> torch.Tensor:
    with torch.no_grad():
        return first_output(model(pixel_values=tiny_pixels()))


@pytest.mark.parametrize("model_name", ["vit_cls", "dinov2_cls", "clip_cls"])
@pytest.mark.parametrize("method", METHODS)
def test_one_load_adapter_works_exactly(method, model_name, tmp_path):
    want = _saved(tmp_path, method, model_name)
    model = build_tiny_model(model_name)
    info = model.load_adapter(str(tmp_path))
    assert not info.missing_keys and not info.unexpected_keys
    assert (_logits(model) - want).abs().max() < 1e-6
    # under another adapter name too
    named = build_tiny_model(model_name)
    named.load_adapter(str(tmp_path), adapter_name="task")
    assert (_logits(named) - want).abs().max() < 1e-6


@pytest.mark.skipif(not OLD_PEFT, reason="transformers' adapter switching needs peft >= 0.22; pinned: < 0.22")
@pytest.mark.parametrize("call", ["set_adapter", "enable_adapters", "disable_adapters", "active_adapters",
                                  "get_adapter_state_dict", "add_adapter"])
def test_transformers_adapter_switching_raises_with_peft_021(call, tmp_path):
    _saved(tmp_path, "scl")
    model = build_tiny_model("vit_cls")
    model.load_adapter(str(tmp_path))
    args = {"set_adapter": ("default",), "add_adapter": (METHOD_CONFIGS["scl"](),)}.get(call, ())
    with pytest.raises(ValueError, match=r"0\.22"):
        getattr(model, call)(*args)


@pytest.mark.parametrize("second", ["scl", "head_ft"])
def test_a_second_load_adapter_is_refused_and_the_first_keeps_working(second, tmp_path):
    """It used to load 'fine' and then run with the first adapter's (or an untrained) head: wrong logits."""
    want = _saved(tmp_path / "first", "scl")
    _saved(tmp_path / "second", second, seed=7)
    model = build_tiny_model("vit_cls")
    model.load_adapter(str(tmp_path / "first"))
    with pytest.raises(ValueError, match="PeftModel.from_pretrained") as info:
        model.load_adapter(str(tmp_path / "second"), adapter_name="second")
    assert "transformers" in str(info.value) and "peft < 0.22" in str(info.value)
    assert (_logits(model) - want).abs().max() < 1e-6


def test_the_peft_path_does_what_transformers_cannot(tmp_path):
    """Two adapters, switching and disabling, through PEFT (what the docs recommend)."""
    first = _saved(tmp_path / "first", "scl")
    second = _saved(tmp_path / "second", "scl", seed=7)
    base = build_tiny_model("vit_cls")
    plain = _logits(base)
    model = PeftModel.from_pretrained(base, tmp_path / "first")
    model.load_adapter(tmp_path / "second", adapter_name="second")
    assert (_logits(model) - first).abs().max() < 1e-6
    model.set_adapter("second")
    assert (_logits(model) - second).abs().max() < 1e-6
    with model.disable_adapter():
        assert (_logits(model) - plain).abs().max() < 1e-6


def test_transformers_load_adapter_reports_a_partial_file_instead_of_raising(tmp_path):
    """transformers' loader does not refuse a file without the classifier tensors: it returns them as
    missing keys (and logs a MISSING report). PEFT's path raises (tests/test_adapters_attacks.py)."""
    from safetensors.torch import load_file, save_file

    _saved(tmp_path, "scl")
    weights = tmp_path / "adapter_model.safetensors"
    save_file({k: v for k, v in load_file(weights).items() if "classifier" not in k}, weights)
    info = build_tiny_model("vit_cls").load_adapter(str(tmp_path))
    assert {k for k in info.missing_keys if "classifier" in k} == {
        "classifier.modules_to_save.default.weight", "classifier.modules_to_save.default.bias"}
    with pytest.raises(ValueError, match="refusing a partial load"):
        PeftModel.from_pretrained(build_tiny_model("vit_cls"), tmp_path)


def test_automodel_from_an_adapter_folder(tmp_path):
    """``AutoModelForImageClassification.from_pretrained(adapter_dir)`` loads the recorded base (a path or a
    Hub id) and the adapter; for the built-in model's stable name transformers knows no such repo, so use
    hf_nc.AutoPeftModelForImageClassification."""
    base = build_tiny_model("vit_cls")
    base.save_pretrained(tmp_path / "base")
    base = tf.ViTForImageClassification.from_pretrained(tmp_path / "base").eval()
    peft_model = get_peft_model(base, METHOD_CONFIGS["head_ft"]())
    perturb_trainables(peft_model)
    peft_model.save_pretrained(tmp_path / "adapter")
    want = _logits(peft_model)
    assert json.loads((tmp_path / "adapter" / "adapter_config.json").read_text())["base_model_name_or_path"] == str(
        tmp_path / "base")
    model = tf.AutoModelForImageClassification.from_pretrained(tmp_path / "adapter").eval()
    assert (_logits(model) - want).abs().max() < 1e-6

    builtin = tf.ViTForImageClassification.from_pretrained(hf_nc.DEFAULT_MODEL).eval()
    get_peft_model(builtin, hf_nc.LayerFTConfig(layers=[-1])).save_pretrained(tmp_path / "builtin")
    with pytest.raises(OSError):  # offline here; online: no such Hub repo
        tf.AutoModelForImageClassification.from_pretrained(tmp_path / "builtin")
    loaded = hf_nc.AutoPeftModelForImageClassification.from_pretrained(tmp_path / "builtin")
    assert loaded.config.num_labels == 10


def test_pipeline_on_an_adapter_folder_when_the_base_resolves(tmp_path):
    """``pipeline("image-classification", model=adapter_dir)`` (after ``import hf_nc``) loads the recorded base
    through transformers' adapter path: it works when that base resolves (a Hub id or a folder) and has the
    adapter's number of classes; otherwise use hf_nc.AutoPeftModelForImageClassification (tests/test_auto.py)."""
    import numpy as np
    from PIL import Image

    labels = {0: "a", 1: "b", 2: "c"}
    config = tf.ViTConfig(hidden_size=32, num_hidden_layers=4, num_attention_heads=4, intermediate_size=64,
                          image_size=16, patch_size=8, id2label=labels, label2id={v: k for k, v in labels.items()})
    torch.manual_seed(0)
    tf.ViTForImageClassification(config).save_pretrained(tmp_path / "base")
    processor = tf.ViTImageProcessor(size={"height": 16, "width": 16})
    peft_model = get_peft_model(tf.ViTForImageClassification.from_pretrained(tmp_path / "base").eval(),
                                METHOD_CONFIGS["scl"]())
    perturb_trainables(peft_model)
    peft_model.save_pretrained(tmp_path / "adapter")
    processor.save_pretrained(tmp_path / "adapter")
    image = Image.fromarray(np.random.default_rng(0).integers(0, 256, (20, 24, 3), dtype=np.uint8))
    with torch.no_grad():
        want = peft_model(**processor(image, return_tensors="pt")).logits.softmax(-1)[0]
    # transformers looks for the image processor in the *base* folder, not the adapter's: without one there
    # it fails; with image_processor=<adapter folder> it works
    with pytest.raises(OSError, match="image processor"):
        tf.pipeline("image-classification", model=str(tmp_path / "adapter"))
    result = tf.pipeline("image-classification", model=str(tmp_path / "adapter"),
                         image_processor=str(tmp_path / "adapter"), top_k=3)(image)
    got = {r["label"]: r["score"] for r in result}
    assert set(got) == set(labels.values())
    assert max(abs(got[labels[i]] - want[i].item()) for i in labels) < 1e-5
