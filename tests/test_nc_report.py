"""The per-layer NC report recipe, in one process and in two real CPU processes."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from tiny_models import LAYERS, build_tiny_model

from hf_nc.data import build_transforms, collate_fn, load_image_dataset
from hf_nc.features import FINAL, extract_features
from hf_nc.metrics import nc_metrics

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "recipes"))
import nc_report  # noqa: E402


@pytest.fixture(scope="module")
def tiny_checkpoint(tmp_path_factory):
    path = tmp_path_factory.mktemp("tiny_vit")
    build_tiny_model("vit_cls").save_pretrained(path)
    return path


def test_report_matches_nc_of_the_extracted_features(tiny_checkpoint, tmp_path, capsys):
    results = nc_report.main(["--model_name_or_path", str(tiny_checkpoint), "--output_dir", str(tmp_path), "--batch_size", "100", "--shots_per_class", "20"])
    printed = capsys.readouterr().out
    assert set(results) == {*map(str, range(LAYERS)), FINAL}
    assert (tmp_path / "nc1_per_layer.png").stat().st_size > 1000
    saved = json.loads((tmp_path / "nc_report.json").read_text())
    assert saved["layers"] == results
    assert f"{results['final']['nc1']:.4g}" in printed

    # Independent path: all features in memory, one-shot metrics.
    model = build_tiny_model("vit_cls")
    data = load_image_dataset("digits", shots_per_class=20)["train"].with_transform(build_transforms(model, train=False))
    batch = collate_fn([data[i] for i in range(len(data))])
    feats = extract_features(model, batch["pixel_values"])
    for key in (0, LAYERS - 1, FINAL):
        want = nc_metrics(feats[key], batch["labels"], num_classes=10)
        for metric in ("nc1", "nc2_etf", "ncc_acc", "cdnv"):
            assert results[str(key)][metric] == pytest.approx(want[metric], rel=1e-6), (key, metric)


@pytest.mark.slow
@pytest.mark.parametrize(
    "shots, batch_two",
    [
        (15, 32),  # 150 images: 3 uneven batches on one rank, 2 on the other
        (10, 128),  # 100 images in ONE batch: rank 1's shard is empty (issue 9, item 6)
    ],
)
def test_two_processes_report_the_same_numbers(tiny_checkpoint, tmp_path, shots, batch_two):
    one = nc_report.main(["--model_name_or_path", str(tiny_checkpoint), "--output_dir", str(tmp_path / "one"), "--batch_size", "64",
                          "--shots_per_class", str(shots), "--no_progress"])
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=str(ROOT))
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2", str(ROOT / "recipes" / "nc_report.py"),
           "--model_name_or_path", str(tiny_checkpoint), "--output_dir", str(tmp_path / "two"), "--batch_size", str(batch_two),
           "--shots_per_class", str(shots)]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=240)
    assert proc.returncode == 0, proc.stderr[-3000:]
    two = json.loads((tmp_path / "two" / "nc_report.json").read_text())["layers"]
    assert two["final"]["num_samples"] == 10 * shots
    for key in one:
        for metric, value in one[key].items():
            assert two[key][metric] == pytest.approx(value, rel=1e-9), (key, metric)


def test_image_size_override_and_split_record(tiny_checkpoint, tmp_path, capsys):
    """--image_size 8 on a 16 px ViT: positions interpolated; equals features of 8 px inputs."""
    from hf_nc.features import LayerFeatures

    results = nc_report.main(["--model_name_or_path", str(tiny_checkpoint), "--output_dir", str(tmp_path), "--shots_per_class", "6",
                              "--image_size", "8", "--no_progress"])
    printed = capsys.readouterr().out
    assert "8x8 px" in printed and "split: digits 'train' split, 6 shots per class (seed 0)" in printed
    saved = json.loads((tmp_path / "nc_report.json").read_text())
    assert saved["image_size"] == [8, 8] and saved["split"] == "digits 'train' split, 6 shots per class (seed 0)"
    model = build_tiny_model("vit_cls")
    data = load_image_dataset("digits", shots_per_class=6)["train"]
    batch = collate_fn([data.with_transform(build_transforms(model, train=False, image_size=8))[i] for i in range(len(data))])
    assert batch["pixel_values"].shape[-2:] == (8, 8)
    with LayerFeatures(model, layers=[0]) as recorder, torch.no_grad():
        model(pixel_values=batch["pixel_values"], interpolate_pos_encoding=True)
        feats = recorder.pop()
    for key in (0, FINAL):
        want = nc_metrics(feats[key], batch["labels"], num_classes=10)
        assert results[str(key)]["nc1"] == pytest.approx(want["nc1"], rel=1e-6), key
    capped = nc_report.main(["--model_name_or_path", str(tiny_checkpoint), "--output_dir", str(tmp_path / "cap"), "--split", "test",
                             "--max_samples", "30", "--no_progress"])
    assert capped["final"]["num_samples"] == 30
    assert json.loads((tmp_path / "cap" / "nc_report.json").read_text())["split"] == "digits 'test' split, 30 of them (stratified, seed 0)"
    with pytest.raises(ValueError, match="has the splits"):
        nc_report.main(["--model_name_or_path", str(tiny_checkpoint), "--output_dir", str(tmp_path), "--split", "validation", "--no_progress"])


@pytest.mark.parametrize("flags, named", [
    (["--shots_per_class", "1"], "--shots_per_class"),
    (["--max_samples", "10"], "--max_samples"),  # digits has 10 classes: one image each
    (["--max_samples", "4"], "--max_samples"),  # fewer images than classes
])
def test_one_image_per_class_is_refused_by_flag_before_the_forward_pass(tiny_checkpoint, tmp_path, monkeypatch, flags, named):
    def no_pass(*args, **kwargs):
        raise AssertionError("the forward pass ran before the flags were checked")

    monkeypatch.setattr(nc_report, "layer_nc", no_pass)
    with pytest.raises(ValueError, match=named):
        nc_report.main(["--model_name_or_path", str(tiny_checkpoint), "--output_dir", str(tmp_path), "--no_progress", *flags])


def test_undefined_metrics_are_null_in_strict_json(tmp_path):
    """Zero patch filters: every image gives the same tokens, so the features are constant and NC1 is
    undefined (NaN); the report used to write the bare token NaN, which strict JSON parsers refuse."""
    import math

    model = build_tiny_model("vit_cls")
    with torch.no_grad():
        model.vit.embeddings.patch_embeddings.projection.weight.zero_()
    model.save_pretrained(tmp_path / "blank")
    results = nc_report.main(["--model_name_or_path", str(tmp_path / "blank"), "--output_dir", str(tmp_path / "out"),
                              "--shots_per_class", "3", "--no_progress"])
    assert math.isnan(results["final"]["nc1"])

    def refuse(token):
        raise ValueError(f"non-standard JSON token {token}")

    saved = json.loads((tmp_path / "out" / "nc_report.json").read_text(), parse_constant=refuse)
    for key, metrics in results.items():
        for metric, value in metrics.items():
            want = None if isinstance(value, float) and not math.isfinite(value) else value
            assert saved["layers"][key][metric] == want, (key, metric)


def test_a_split_without_some_class_is_refused_before_the_forward_pass(tiny_checkpoint, tmp_path, monkeypatch):
    data = load_image_dataset("digits", shots_per_class=3)
    data["train"] = data["train"].filter(lambda y: y != 4, input_columns="label")  # ClassLabel keeps 10 classes
    data.save_to_disk(tmp_path / "gap")

    def no_pass(*args, **kwargs):
        raise AssertionError("the forward pass ran before the labels were checked")

    monkeypatch.setattr(nc_report, "layer_nc", no_pass)
    with pytest.raises(ValueError, match=r"'train' split .* no image of classes \[4\]"):  # was "1 class(es) have no samples" after the pass
        nc_report.main(["--model_name_or_path", str(tiny_checkpoint), "--dataset", str(tmp_path / "gap"), "--output_dir",
                        str(tmp_path / "out"), "--no_progress"])
