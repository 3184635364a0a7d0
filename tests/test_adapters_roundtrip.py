"""Save/load of hf-nc adapters: fresh-process round trips, wrong bases, corrupt files, transformers."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from peft import PeftModel, get_peft_model
from safetensors.torch import load_file, save_file

import hf_nc.adapters as A
from tiny_models import TINY_MODELS, build_tiny_model, tiny_pixels
sys.path.insert(0, str(Path(__file__).parent / "scripts"))
from adapter_cases import METHOD_CONFIGS, METHODS, first_output, perturb_trainables  # noqa: E402

SCRIPT = Path(__file__).parent / "scripts" / "adapter_roundtrip.py"


def _saved(model_name, method, path, perturb=True):
    base = build_tiny_model(model_name)
    with torch.no_grad():
        ref = first_output(base(pixel_values=tiny_pixels()))
    peft_model = get_peft_model(base, METHOD_CONFIGS[method]())
    if perturb:
        perturb_trainables(peft_model)
    with torch.no_grad():
        out = first_output(peft_model(pixel_values=tiny_pixels()))
    peft_model.save_pretrained(path)
    return out, ref


def test_fresh_process_round_trip_every_method_and_backbone(tmp_path):
    """`import hf_nc; PeftModel.from_pretrained(base, path)` in a new process reproduces the logits."""
    expected = {}
    for method in METHODS:
        for model_name in TINY_MODELS:
            case = f"{method}-{model_name}"
            out, ref = _saved(model_name, method, tmp_path / case)
            expected[case] = {"model": model_name, "adapted": out, "base": ref}
    torch.save(expected, tmp_path / "expected.pt")
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONPATH": str(Path(__file__).parent)}
    proc = subprocess.run([sys.executable, str(SCRIPT), str(tmp_path)], capture_output=True, text=True, env=env,
                          timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    assert set(result["cases"]) == set(expected)
    bad = {c: r for c, r in result["cases"].items() if not (r["adapted"] < 1e-6 and r["disabled"] == 0.0)}
    assert not bad, bad


def test_import_hf_nc_registers_the_methods():
    proc = subprocess.run(
        [sys.executable, "-c", "import hf_nc; from peft.mapping import PEFT_TYPE_TO_CONFIG_MAPPING as M; "
         "assert {'HFNC_LAYER_FT', 'HFNC_SCL', 'HFNC_HEAD_FT'} <= set(M)"], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr


@pytest.mark.parametrize("method", METHODS)
def test_wrong_base_fails_loudly(method, tmp_path):
    _saved("vit_cls", method, tmp_path)
    wrong = {
        "architecture": build_tiny_model("deit_cls"),
        "width": TINY_MODELS["vit_cls"][0](TINY_MODELS["vit_cls"][1]().__class__(
            hidden_size=48, num_hidden_layers=4, num_attention_heads=4, intermediate_size=64, image_size=16,
            patch_size=8, num_labels=3)),
        "fewer blocks": TINY_MODELS["vit_cls"][0](TINY_MODELS["vit_cls"][1]().__class__(
            hidden_size=32, num_hidden_layers=3, num_attention_heads=4, intermediate_size=64, image_size=16,
            patch_size=8, num_labels=3)),
    }
    for what, base in wrong.items():
        with pytest.raises(ValueError, match="another base model") as info:
            PeftModel.from_pretrained(base, tmp_path)
        assert "vit" in str(info.value), what


def _other_weights_warnings(base, path) -> list[str]:
    import warnings

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        PeftModel.from_pretrained(base, path)
    return [str(w.message) for w in caught if "other weights" in str(w.message)]


@pytest.mark.parametrize("model_name", sorted(TINY_MODELS))
def test_a_base_of_the_same_shape_but_other_weights_is_warned_about(model_name, tmp_path):
    # a same-shape base with other weights (another checkpoint of the architecture) used to load silently,
    # giving outputs that are not the trained adapter's
    _saved(model_name, "scl", tmp_path)
    assert _other_weights_warnings(build_tiny_model(model_name), tmp_path) == []  # its own base
    assert _other_weights_warnings(build_tiny_model(model_name).to(torch.bfloat16), tmp_path) == []  # cast, same weights
    (message,) = _other_weights_warnings(build_tiny_model(model_name, seed=1), tmp_path)
    assert "SCLConfig adapter was trained on a base with other weights" in message and "embeddings" in message
    config = json.loads((tmp_path / "adapter_config.json").read_text())
    assert config["base_weights_sample"]["parameter"] in dict(build_tiny_model(model_name).named_parameters())
    del config["base_weights_sample"]  # an adapter saved before the sample was recorded: nothing to compare
    (tmp_path / "adapter_config.json").write_text(json.dumps(config))
    assert _other_weights_warnings(build_tiny_model(model_name, seed=1), tmp_path) == []


def test_truncated_or_incomplete_adapter_files_fail_loudly(tmp_path):
    _saved("vit_cls", "scl", tmp_path)
    weights = tmp_path / "adapter_model.safetensors"
    blob = weights.read_bytes()

    weights.write_bytes(blob[: len(blob) // 2])  # truncated download
    with pytest.raises(Exception, match="(?i)deserializ|incomplete|header|invalid"):
        PeftModel.from_pretrained(build_tiny_model("vit_cls"), tmp_path)

    tensors = {k: v for k, v in load_file_bytes(blob).items() if "hfnc_scl_block" not in k or "mlp" not in k}
    save_file(tensors, weights)  # a file that lacks some adapter tensors
    with pytest.raises(ValueError, match="missing"):
        PeftModel.from_pretrained(build_tiny_model("vit_cls"), tmp_path)

    tensors = load_file_bytes(blob)
    tensors["base_model.model.vit.layers.1.hfnc_scl_block.extra.weight"] = torch.zeros(1)
    save_file(tensors, weights)  # one that holds unknown tensors
    with pytest.raises(ValueError, match="unknown"):
        PeftModel.from_pretrained(build_tiny_model("vit_cls"), tmp_path)


def load_file_bytes(blob: bytes) -> dict:
    from safetensors.torch import load

    return dict(load(blob))


@pytest.mark.parametrize("method", METHODS)
def test_transformers_load_adapter_regression(method, tmp_path):
    """transformers' own loader (`model.load_adapter`) mis-loads PEFT adapters whose saved keys nest
    the adapter name (module copies in a ModuleDict); ours are flat, so it loads them exactly."""
    out, _ = _saved("vit_cls", method, tmp_path)
    assert not [k for k in load_file(tmp_path / "adapter_model.safetensors") if ".default" in k]
    model = build_tiny_model("vit_cls")
    model.load_adapter(str(tmp_path))
    with torch.no_grad():
        assert (first_output(model(pixel_values=tiny_pixels())) - out).abs().max() < 1e-6
