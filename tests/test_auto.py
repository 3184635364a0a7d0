"""hf_nc.AutoPeftModelForImageClassification and the built-in checkpoint's stable name (issue 9 item 20,
issue 10 section 3): a shared adapter loads elsewhere with one call, and works in transformers' pipeline."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import textwrap
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
import transformers as tf
from peft import get_peft_model
from PIL import Image

import hf_nc
from hf_nc.checkpoints import DEFAULT_MODEL, DEFAULT_MODEL_NAME, builtin_name, resolve_builtin

sys.path.insert(0, str(Path(__file__).parent / "scripts"))
from adapter_cases import perturb_trainables  # noqa: E402

LABELS = {0: "cat", 1: "dog", 2: "bird"}
BUILTIN_METHODS = {
    "layer": lambda: hf_nc.LayerFTConfig(layers=[-1]),
    "scl": lambda: hf_nc.SCLConfig(layer=8),
    "heads": lambda: hf_nc.HeadFTConfig(heads={-1: "all", 10: [0, 2]}),
}


def _builtin_base() -> torch.nn.Module:
    """The built-in checkpoint with a new 3-class head, as a recipe builds it for a new task."""
    torch.manual_seed(0)
    return tf.ViTForImageClassification.from_pretrained(
        DEFAULT_MODEL, id2label=LABELS, label2id={v: k for k, v in LABELS.items()}, ignore_mismatched_sizes=True
    ).eval()


def _gray_pixels(n: int = 2) -> torch.Tensor:
    return torch.randn(n, 1, 28, 28, generator=torch.Generator().manual_seed(3))


def test_builtin_name_resolves_to_this_install_and_back():
    assert DEFAULT_MODEL_NAME == "hf-nc/tiny-vit-fmnist"
    assert resolve_builtin(DEFAULT_MODEL_NAME) == DEFAULT_MODEL and os.path.isdir(DEFAULT_MODEL)
    assert resolve_builtin("google/vit-base-patch16-224") == "google/vit-base-patch16-224"
    assert resolve_builtin(Path("/some/folder")) == "/some/folder"
    assert builtin_name(DEFAULT_MODEL) == builtin_name(DEFAULT_MODEL + os.sep) == DEFAULT_MODEL_NAME
    assert builtin_name(os.path.relpath(DEFAULT_MODEL)) == DEFAULT_MODEL_NAME
    # a trailing slash (shell completion of a name that looks like a path) is still the built-in name
    assert resolve_builtin(DEFAULT_MODEL_NAME + "/") == DEFAULT_MODEL and builtin_name(DEFAULT_MODEL_NAME + "/") == DEFAULT_MODEL_NAME
    assert builtin_name(DEFAULT_MODEL_NAME) == DEFAULT_MODEL_NAME
    assert builtin_name("user/other") is None and builtin_name(None) is None
    assert hf_nc.DEFAULT_MODEL_NAME == DEFAULT_MODEL_NAME


@pytest.mark.parametrize("method", list(BUILTIN_METHODS))
def test_adapters_on_the_builtin_model_record_its_stable_name(method, tmp_path):
    peft_model = get_peft_model(_builtin_base(), BUILTIN_METHODS[method]())
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        peft_model.save_pretrained(tmp_path)
    # in memory the base stays this install's folder, so PEFT's save-time checks read its config.json
    # locally instead of asking the Hub about the stable name
    assert not [w for w in caught if "Could not find a config file" in str(w.message)]
    assert peft_model.peft_config["default"].base_model_name_or_path == DEFAULT_MODEL
    text = (tmp_path / "adapter_config.json").read_text()
    config = json.loads(text)
    assert config["base_model_name_or_path"] == "hf-nc/tiny-vit-fmnist"
    assert DEFAULT_MODEL not in text and str(Path(DEFAULT_MODEL).parent) not in text  # no path of this install
    assert config["id2label"] == {"0": "cat", "1": "dog", "2": "bird"}
    assert config["base_model_class"] == "ViTForImageClassification"


# Run in a fresh process, from a working directory outside the repository, with nothing but `import hf_nc`.
FRESH = r"""
import json, sys, torch
import hf_nc
adapters, expected = sys.argv[1], torch.load(sys.argv[2])
report = {"hf_nc": hf_nc.__file__}
for name, want in expected["logits"].items():
    model = hf_nc.AutoPeftModelForImageClassification.from_pretrained(f"{adapters}/{name}")
    with torch.no_grad():
        got = model(pixel_values=expected["pixels"]).logits
    report[name] = {"diff": (got - want).abs().max().item(), "training": model.training,
                    "labels": model.config.id2label, "type": type(model).__name__,
                    "base": model.peft_config["default"].to_dict()["base_model_name_or_path"]}
print(json.dumps(report))
"""


@pytest.mark.slow
def test_moved_adapter_loads_in_a_fresh_process_from_another_directory(tmp_path):
    made = tmp_path / "made"
    pixels = _gray_pixels()
    expected = {"pixels": pixels, "logits": {}}
    for method, config_fn in BUILTIN_METHODS.items():
        base = _builtin_base()
        with torch.no_grad():
            before = base(pixel_values=pixels).logits
        peft_model = get_peft_model(base, config_fn())
        perturb_trainables(peft_model, scale=0.05)
        with torch.no_grad():
            expected["logits"][method] = peft_model(pixel_values=pixels).logits
        assert (expected["logits"][method] - before).abs().max() > 1e-3
        peft_model.save_pretrained(made / method)
    moved = tmp_path / "elsewhere" / "adapters"
    moved.parent.mkdir()
    shutil.move(str(made), str(moved))
    torch.save(expected, tmp_path / "expected.pt")
    workdir = tmp_path / "workdir"
    workdir.mkdir()
    (workdir / "fresh.py").write_text(textwrap.dedent(FRESH))
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    env.update(HF_HUB_OFFLINE="1", OMP_NUM_THREADS="1")
    proc = subprocess.run([sys.executable, "fresh.py", str(moved), str(tmp_path / "expected.pt")], cwd=workdir,
                          env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-4000:]
    report = json.loads(proc.stdout.strip().splitlines()[-1])
    for method in BUILTIN_METHODS:
        r = report[method]
        assert r["diff"] < 1e-5, (method, r)
        assert r["type"] == "PeftModel" and r["training"] is False and r["base"] == "hf-nc/tiny-vit-fmnist"
        assert r["labels"] == {"0": "cat", "1": "dog", "2": "bird"}


def _rgb_base(path: Path, num_labels: int = 5) -> None:
    """A tiny 3-channel ViT saved to `path` with another number of classes than the adapter's task."""
    torch.manual_seed(0)
    config = tf.ViTConfig(hidden_size=32, num_hidden_layers=4, num_attention_heads=4, intermediate_size=64,
                          image_size=16, patch_size=8, num_labels=num_labels)
    tf.ViTForImageClassification(config).eval().save_pretrained(path)
    tf.ViTImageProcessor(size={"height": 16, "width": 16}, image_mean=[0.5] * 3, image_std=[0.5] * 3).save_pretrained(path)


@pytest.mark.parametrize("method", ["layer", "scl", "heads"])
def test_head_is_sized_from_the_adapter_and_pipeline_classifies_a_pil_image(method, tmp_path):
    _rgb_base(tmp_path / "base", num_labels=5)
    base = tf.ViTForImageClassification.from_pretrained(
        tmp_path / "base", id2label=LABELS, label2id={v: k for k, v in LABELS.items()}, ignore_mismatched_sizes=True)
    config = {"layer": lambda: hf_nc.LayerFTConfig(layers=[-1]), "scl": lambda: hf_nc.SCLConfig(layer=1),
              "heads": lambda: hf_nc.HeadFTConfig(heads={-1: [1, 3]})}[method]()
    peft_model = get_peft_model(base.eval(), config)
    perturb_trainables(peft_model)
    adapter = tmp_path / "adapter"
    peft_model.save_pretrained(adapter)
    tf.AutoImageProcessor.from_pretrained(tmp_path / "base").save_pretrained(adapter)

    model = hf_nc.AutoPeftModelForImageClassification.from_pretrained(adapter)
    assert model.config.num_labels == 3 and model.config.id2label == LABELS  # 3 classes, not the base's 5
    image = Image.fromarray(np.random.default_rng(0).integers(0, 256, (20, 24, 3), dtype=np.uint8), mode="RGB")
    pixels = tf.AutoImageProcessor.from_pretrained(adapter)(image, return_tensors="pt")["pixel_values"]
    with torch.no_grad():
        want = peft_model.eval()(pixel_values=pixels).logits.softmax(-1)[0]
        assert (model(pixel_values=pixels).logits.softmax(-1)[0] - want).abs().max() < 1e-5

    pipe = tf.pipeline("image-classification", model=model, image_processor=str(adapter), top_k=3)
    result = pipe(image)
    assert {r["label"] for r in result} == set(LABELS.values())
    for r in result:
        assert abs(r["score"] - want[{v: k for k, v in LABELS.items()}[r["label"]]].item()) < 1e-5


def test_builtin_adapter_in_pipeline_with_a_grayscale_array(tmp_path):
    """The built-in checkpoint is grayscale; transformers' pipeline converts every PIL image to RGB, so a
    1-channel model takes an (H, W, 1) array there (documented)."""
    peft_model = get_peft_model(_builtin_base(), hf_nc.LayerFTConfig(layers=[-1]))
    perturb_trainables(peft_model, scale=0.05)
    peft_model.save_pretrained(tmp_path)
    tf.AutoImageProcessor.from_pretrained(DEFAULT_MODEL).save_pretrained(tmp_path)
    model = hf_nc.AutoPeftModelForImageClassification.from_pretrained(tmp_path)
    image = np.random.default_rng(0).integers(0, 256, (28, 28, 1), dtype=np.uint8)
    result = tf.pipeline("image-classification", model=model, image_processor=str(tmp_path), top_k=3)(image)
    assert {r["label"] for r in result} == set(LABELS.values())
    pixels = tf.AutoImageProcessor.from_pretrained(tmp_path)(image, return_tensors="pt")["pixel_values"]
    with torch.no_grad():
        want = peft_model.eval()(pixel_values=pixels).logits.softmax(-1)[0]
    assert max(abs(r["score"] - want[{v: k for k, v in LABELS.items()}[r["label"]]].item()) for r in result) < 1e-5


def test_base_override_and_missing_base(tmp_path):
    _rgb_base(tmp_path / "base", num_labels=3)
    base = tf.ViTForImageClassification.from_pretrained(tmp_path / "base")
    peft_model = get_peft_model(base, hf_nc.SCLConfig(layer=1))
    peft_model.save_pretrained(tmp_path / "adapter")
    path = tmp_path / "adapter" / "adapter_config.json"
    config = json.loads(path.read_text())
    config["base_model_name_or_path"] = None
    path.write_text(json.dumps(config))
    with pytest.raises(ValueError, match="records no base model"):
        hf_nc.AutoPeftModelForImageClassification.from_pretrained(tmp_path / "adapter")
    model = hf_nc.AutoPeftModelForImageClassification.from_pretrained(
        tmp_path / "adapter", base_model_name_or_path=str(tmp_path / "base"), is_trainable=True)
    assert model.training is False or any(p.requires_grad for p in model.parameters())
    assert any(p.requires_grad for p in model.parameters())
    with pytest.raises(OSError, match="from_pretrained"):
        hf_nc.AutoPeftModelForImageClassification()


def test_lora_adapters_load_too(tmp_path):
    """Not only hf-nc methods: any PEFT adapter with a saved head gets a head of its size."""
    from peft import LoraConfig

    _rgb_base(tmp_path / "base", num_labels=5)
    base = tf.ViTForImageClassification.from_pretrained(tmp_path / "base", num_labels=2, ignore_mismatched_sizes=True)
    peft_model = get_peft_model(base, LoraConfig(target_modules=["q_proj"], modules_to_save=["classifier"],
                                                 init_lora_weights=False))
    peft_model.save_pretrained(tmp_path / "adapter")
    x = torch.randn(2, 3, 16, 16)
    model = hf_nc.AutoPeftModelForImageClassification.from_pretrained(tmp_path / "adapter")
    with torch.no_grad():
        assert model.config.num_labels == 2
        assert (model(pixel_values=x).logits - peft_model.eval()(pixel_values=x).logits).abs().max() < 1e-5


# Fresh processes against the fake Hub: push an adapter made on the built-in model with its image processor,
# then load it by repo id with an empty cache.
HUB_PUSH = r"""
import sys, torch, transformers as tf
import hf_nc
from huggingface_hub import HfApi
from peft import get_peft_model
out = sys.argv[1]
torch.manual_seed(0)
base = tf.ViTForImageClassification.from_pretrained(hf_nc.DEFAULT_MODEL, id2label={0: "cat", 1: "dog", 2: "bird"},
                                                    label2id={"cat": 0, "dog": 1, "bird": 2}, ignore_mismatched_sizes=True)
model = get_peft_model(base.eval(), hf_nc.SCLConfig(layer=8))
g = torch.Generator().manual_seed(5)
with torch.no_grad():
    for _, p in sorted(model.named_parameters()):
        if p.requires_grad:
            p.add_(0.05 * torch.randn(p.shape, generator=g))
model.save_pretrained(f"{out}/adapter")
tf.AutoImageProcessor.from_pretrained(hf_nc.DEFAULT_MODEL).save_pretrained(f"{out}/adapter")
api = HfApi()
api.create_repo("user/tiny-fmnist-scl")
api.upload_folder(repo_id="user/tiny-fmnist-scl", folder_path=f"{out}/adapter")
pixels = torch.randn(2, 1, 28, 28, generator=torch.Generator().manual_seed(3))
with torch.no_grad():
    torch.save({"pixels": pixels, "logits": model(pixel_values=pixels).logits}, f"{out}/expected.pt")
print("{}")
"""

HUB_LOAD = r"""
import json, sys, numpy as np, torch, transformers as tf
import hf_nc
out = sys.argv[1]
expected = torch.load(f"{out}/expected.pt")
model = hf_nc.AutoPeftModelForImageClassification.from_pretrained("user/tiny-fmnist-scl")
with torch.no_grad():
    diff = (model(pixel_values=expected["pixels"]).logits - expected["logits"]).abs().max().item()
pipe = tf.pipeline("image-classification", model=model, image_processor="user/tiny-fmnist-scl")
result = pipe(np.zeros((28, 28, 1), dtype=np.uint8))
print(json.dumps({"diff": diff, "labels": sorted(r["label"] for r in result)}))
"""


@pytest.mark.slow
def test_adapter_on_the_fake_hub_loads_by_repo_id(tmp_path):
    from hub_server import FakeHub

    def run(script, env, name):
        (tmp_path / f"{name}.py").write_text(textwrap.dedent(script))
        proc = subprocess.run([sys.executable, str(tmp_path / f"{name}.py"), str(tmp_path)], env=env, cwd=tmp_path,
                              capture_output=True, text=True, timeout=300)
        assert proc.returncode == 0, proc.stderr[-4000:]
        return json.loads(proc.stdout.strip().splitlines()[-1])

    with FakeHub() as hub:
        run(HUB_PUSH, hub.client_env(tmp_path / "home_push", {**os.environ, "OMP_NUM_THREADS": "1"}), "push")
        shutil.rmtree(tmp_path / "adapter")  # nothing local: the loading side only has the repo id
        loaded = run(HUB_LOAD, hub.client_env(tmp_path / "home_load", {**os.environ, "OMP_NUM_THREADS": "1"}), "load")
    assert loaded["diff"] < 1e-5, loaded
    assert set(loaded["labels"]) <= {"cat", "dog", "bird"} and loaded["labels"]


@pytest.mark.parametrize("method", ["scl", "lora"])
def test_an_adapter_folder_without_weights_is_named(method, tmp_path):
    # an interrupted copy that kept only adapter_config.json: PEFT fell back to the Hub with the folder as a
    # repo id and failed with huggingface_hub's "Repo id must be in the form 'repo_name' or ...", naming no file
    from peft import LoraConfig, PeftModel

    _rgb_base(tmp_path / "base", num_labels=3)
    base = tf.ViTForImageClassification.from_pretrained(tmp_path / "base")
    config = hf_nc.SCLConfig(layer=1) if method == "scl" else LoraConfig(target_modules=["q_proj"], modules_to_save=["classifier"])
    get_peft_model(base, config).save_pretrained(tmp_path / "adapter")
    (tmp_path / "adapter" / "adapter_model.safetensors").unlink()
    match = "adapter folder .*adapter holds no weights file"
    with pytest.raises(FileNotFoundError, match=match):
        hf_nc.AutoPeftModelForImageClassification.from_pretrained(tmp_path / "adapter")
    if method == "scl":  # hf-nc's own tuner checks it for PeftModel.from_pretrained too
        fresh = tf.ViTForImageClassification.from_pretrained(tmp_path / "base")
        with pytest.raises(FileNotFoundError, match=match):
            PeftModel.from_pretrained(fresh, str(tmp_path / "adapter"))
