"""GrayscaleViTImageProcessor: 1-channel models (the built-in one) in ``pipeline("image-classification")``.

References are independent of the class under test: PIL's own ``convert("L")``, transformers'
plain ``ViTImageProcessorPil`` on the converted image, and the pixels the built-in checkpoint's
old processor (``ViTImageProcessorPil``, mean = std = 0.5) produced.
"""

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import torch
import transformers as tf
from PIL import Image

import hf_nc  # noqa: F401  (registers the processor)
from hf_nc.checkpoints import DEFAULT_MODEL
from hf_nc.data import build_transforms, load_image_dataset
from hf_nc.processing import GrayscaleViTImageProcessor, rgb_to_luma, vit_image_processor

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "recipes"))


def _plain(size: int = 28) -> tf.ViTImageProcessorPil:
    """What the built-in checkpoint shipped before: transformers' own PIL ViT processor, 1-element stats."""
    return tf.ViTImageProcessorPil(size={"height": size, "width": size}, image_mean=[0.5], image_std=[0.5])


def _rng_image(shape, seed=0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, shape, dtype=np.uint8)


def test_rgb_to_luma_is_pils_convert_L_exactly():
    rgb = _rng_image((37, 41, 3))
    want = np.asarray(Image.fromarray(rgb, "RGB").convert("L"))
    got = rgb_to_luma(np.moveaxis(rgb, -1, 0))
    assert got.shape == (1, 37, 41) and got.dtype == np.uint8
    assert np.array_equal(got[0], want)
    # every gray value survives the RGB round trip that pipeline() makes (R = G = B)
    gray = np.arange(256, dtype=np.uint8).reshape(16, 16)
    assert np.array_equal(rgb_to_luma(np.stack([gray] * 3))[0], gray)
    # float pixels: the real-valued formula; alpha ignored; 1 channel unchanged
    f = np.moveaxis(rgb, -1, 0).astype(np.float32) / 255
    assert np.allclose(rgb_to_luma(f)[0], 0.299 * f[0] + 0.587 * f[1] + 0.114 * f[2], atol=1e-7)
    rgba = np.concatenate([np.moveaxis(rgb, -1, 0), np.zeros((1, 37, 41), np.uint8)])
    assert np.array_equal(rgb_to_luma(rgba)[0], want)
    one = gray[None]
    assert rgb_to_luma(one) is one
    with pytest.raises(ValueError, match="1, 3 or 4 channels"):
        rgb_to_luma(np.zeros((2, 4, 4), np.uint8))


def test_every_input_kind_becomes_the_L_image_pixels():
    processor = GrayscaleViTImageProcessor(size={"height": 28, "width": 28})
    rgb = _rng_image((20, 24, 3))
    gray = Image.fromarray(rgb, "RGB").convert("L")
    want = _plain()(gray, return_tensors="pt")["pixel_values"]
    assert want.shape == (1, 1, 28, 28)
    inputs = {
        "PIL RGB": Image.fromarray(rgb, "RGB"),
        "PIL L": gray,
        "PIL L made RGB (as pipeline does)": gray.convert("RGB"),
        "PIL RGBA": Image.fromarray(np.dstack([rgb, np.full(rgb.shape[:2], 7, np.uint8)]), "RGBA"),
        "numpy HWC RGB": rgb,
        "numpy CHW RGB": np.moveaxis(rgb, -1, 0).copy(),
        "torch CHW RGB": torch.from_numpy(np.moveaxis(rgb, -1, 0).copy()),
        "numpy HW1": np.asarray(gray)[..., None],
    }
    for name, image in inputs.items():
        got = processor(image, return_tensors="pt")["pixel_values"]
        assert got.shape == (1, 1, 28, 28), name
        assert torch.equal(got, want), name
    # a batch mixing modes, do_convert_rgb asked or not: still one channel each
    batch = processor([inputs["PIL RGB"], gray], do_convert_rgb=True, return_tensors="pt")["pixel_values"]
    assert torch.equal(batch, torch.cat([want, want]))
    # 16-bit grayscale is scaled (hf_nc.data.transforms.to_8bit), not clipped to white as PIL's convert does
    sixteen = Image.fromarray(np.asarray(gray, dtype=np.uint16) * 257)  # mode I;16
    assert sixteen.mode.startswith("I;16")
    assert torch.equal(processor(sixteen, return_tensors="pt")["pixel_values"], want)


def test_saved_class_name_loads_through_auto_and_stats_are_checked(tmp_path):
    processor = vit_image_processor(1, size={"height": 16, "width": 16})
    assert isinstance(processor, GrayscaleViTImageProcessor)
    processor.save_pretrained(tmp_path)
    saved = json.loads((tmp_path / "preprocessor_config.json").read_text())
    assert saved["image_processor_type"] == "GrayscaleViTImageProcessor"
    assert saved["image_mean"] == [0.5] and saved["image_std"] == [0.5]
    loaded = tf.AutoImageProcessor.from_pretrained(tmp_path)
    assert type(loaded) is GrayscaleViTImageProcessor and loaded.size == processor.size
    with pytest.raises(ValueError, match="image_mean needs one value"):
        GrayscaleViTImageProcessor(image_mean=[0.5, 0.5, 0.5])
    # RGB models keep transformers' own class, and the registration leaves ViT's own processor alone
    assert type(vit_image_processor(3)) is tf.ViTImageProcessorPil
    tf.ViTImageProcessorPil(size={"height": 16, "width": 16}).save_pretrained(tmp_path / "rgb")
    assert type(tf.AutoImageProcessor.from_pretrained(tmp_path / "rgb")) is tf.ViTImageProcessorPil


def test_builtin_checkpoint_ships_it_and_is_regenerated_by_the_recipe_code():
    import pretrain_vit

    shipped = json.loads((Path(DEFAULT_MODEL) / "preprocessor_config.json").read_text())
    assert shipped["image_processor_type"] == "GrayscaleViTImageProcessor"
    assert type(tf.AutoImageProcessor.from_pretrained(DEFAULT_MODEL)) is GrayscaleViTImageProcessor
    # the file is exactly what recipes/pretrain_vit.py writes for this config
    regenerated = pretrain_vit.image_processor_for(tf.AutoConfig.from_pretrained(DEFAULT_MODEL))
    assert json.loads(regenerated.to_json_string()) == shipped


def test_builtin_eval_pixels_are_unchanged_on_digits():
    """hf_nc.data's evaluation transform of the built-in model: the same pixels as with the processor it
    shipped before (plain ViTImageProcessorPil on the "L" image) and as the formula (x / 255 - 0.5) / 0.5."""
    test = load_image_dataset("digits")["test"].select(range(32))
    transform = build_transforms(DEFAULT_MODEL, train=False)
    assert isinstance(transform.image_transform.spec.processor, GrayscaleViTImageProcessor)
    got = torch.stack([row["pixel_values"] for row in test.with_transform(transform)])
    images = [im.convert("L") for im in test["image"]]
    before = _plain()(images, return_tensors="pt")["pixel_values"]
    assert got.shape == (32, 1, 28, 28)
    assert (got - before).abs().max().item() == 0.0
    resized = np.stack([np.asarray(im.resize((28, 28), Image.BILINEAR), np.float64) for im in images])
    assert np.abs(got[:, 0].numpy() - (resized / 255 - 0.5) / 0.5).max() < 1e-6


def test_pipeline_on_the_builtin_model_matches_the_model_on_the_eval_transform():
    model = tf.ViTForImageClassification.from_pretrained(DEFAULT_MODEL).eval()
    classify = tf.pipeline("image-classification", model=DEFAULT_MODEL)
    test = load_image_dataset("digits")["test"].select(range(2))
    pixels = torch.stack([row["pixel_values"] for row in test.with_transform(build_transforms(DEFAULT_MODEL, train=False))])
    with torch.no_grad():
        probs = model(pixel_values=pixels).logits.softmax(-1)
    for i, image in enumerate(test["image"]):
        for pil in (image.convert("L"), image.convert("RGB")):
            out = classify(pil, top_k=10)
            assert len(out) == 10
            for o in out:
                assert o["score"] == pytest.approx(probs[i, model.config.label2id[o["label"]]].item(), abs=1e-6)


FRESH = """
import json, sys
from PIL import Image
from transformers import pipeline
image = Image.new("RGB", (28, 28), (200, 30, 90))
try:
    pipeline("image-classification", model=sys.argv[1])
    without = "loaded"
except ValueError as e:
    without = str(e)[:200]
import hf_nc
out = pipeline("image-classification", model=sys.argv[1])(image, top_k=1)
print(json.dumps({"without": without, "with": out[0]["label"]}))
"""


def test_without_import_hf_nc_a_clear_transformers_error_then_it_works(tmp_path):
    """A fresh process: before ``import hf_nc`` transformers does not know the class (documented)."""
    script = tmp_path / "fresh.py"
    script.write_text(textwrap.dedent(FRESH))
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}
    proc = subprocess.run([sys.executable, str(script), DEFAULT_MODEL], cwd=tmp_path, env=env, capture_output=True,
                          text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    assert result["without"].startswith("Unrecognized image processor in"), result
    assert result["with"] in tf.AutoConfig.from_pretrained(DEFAULT_MODEL).id2label.values()


def test_push_adapter_extra_files_go_next_to_the_adapter_and_never_overwrite_it(tmp_path):
    """What ``hf_nc.cards.push_adapter(..., image_processor=, extra_files=)`` uploads with the adapter (the
    one-commit push itself: tests/test_pipeline.py, fake Hub)."""
    from hf_nc.cards._hub import _write_extra_files

    (tmp_path / "adapter_config.json").write_text("{}")
    source = tmp_path.parent / f"{tmp_path.name}_notes.txt"
    source.write_text("notes")
    _write_extra_files(tmp_path, vit_image_processor(1, size={"height": 28, "width": 28}),
                       {"docs/notes.txt": source, "extra.bin": b"\x00\x01"})
    saved = json.loads((tmp_path / "preprocessor_config.json").read_text())
    assert saved["image_processor_type"] == "GrayscaleViTImageProcessor"
    assert (tmp_path / "docs" / "notes.txt").read_text() == "notes" and (tmp_path / "extra.bin").read_bytes() == b"\x00\x01"
    assert (tmp_path / "adapter_config.json").read_text() == "{}"
    for bad, match in [({"adapter_config.json": b"x"}, "overwrite the adapter"), ({"../up.txt": b"x"}, "relative path"),
                       ({str(source): b"x"}, "relative path")]:
        with pytest.raises(ValueError, match=match):
            _write_extra_files(tmp_path, None, bad)
    with pytest.raises(ValueError, match="save_pretrained"):
        _write_extra_files(tmp_path, object())
