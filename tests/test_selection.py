"""Model ranking and block suggestion by NC: known answers by construction, rules on synthetic curves."""

import json
import math
import os
import random
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from datasets import ClassLabel, Dataset, DatasetDict, Features, Image
from PIL import Image as PILImage
from tiny_models import IMAGE, LAYERS, build_tiny_model

from hf_nc.features import FINAL
from hf_nc.metrics import nc_metrics
from hf_nc.probe import linear_probe, penultimate_features
from hf_nc.selection import METHODS, RankingResult, choose_block, rank_models, spearman, suggest_layer

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "recipes"))
import rank_models as recipe  # noqa: E402

K = 3


def constant_images(per_class: int, seed: int) -> Dataset:
    """Class k: a constant grey level (50, 128, 206) plus small pixel noise: separable in pixel space."""
    rng = np.random.default_rng(seed)
    images, labels = [], []
    for k, level in enumerate((50, 128, 206)):
        for _ in range(per_class):
            arr = np.clip(level + rng.normal(0, 12, (IMAGE, IMAGE, 3)), 0, 255).astype(np.uint8)
            images.append(PILImage.fromarray(arr))
            labels.append(k)
    features = Features({"image": Image(), "label": ClassLabel(names=["dark", "mid", "light"])})
    return Dataset.from_dict({"image": images, "label": labels}, features=features)


@pytest.fixture(scope="module")
def data():
    return DatasetDict(train=constant_images(16, seed=0), test=constant_images(8, seed=1))


def good_model():
    return build_tiny_model("vit_cls")


def blind_model():
    """Patch-embedding filters with zero sum: a constant image (the class signal) maps to the bias
    only; the noise still passes, so features vary but carry no class information."""
    model = build_tiny_model("vit_cls")
    w = model.vit.embeddings.patch_embeddings.projection.weight
    with torch.no_grad():
        w -= w.mean(dim=(1, 2, 3), keepdim=True)
    return model


def zero_final_model():
    """Final layernorm weight and bias zero: the final features are exactly 0 (Sigma_B = Sigma_W = 0)."""
    model = build_tiny_model("vit_cls")
    with torch.no_grad():
        model.vit.layernorm.weight.zero_()
        model.vit.layernorm.bias.zero_()
    return model


def damped_model(factor: float = 0.95):
    """Between good and blind: the class signal (the filters' mean) shrunk by ``factor``, the
    noise kept, so class separation falls monotonically good > damped > blind."""
    model = build_tiny_model("vit_cls")
    w = model.vit.embeddings.patch_embeddings.projection.weight
    with torch.no_grad():
        w -= factor * w.mean(dim=(1, 2, 3), keepdim=True)
    return model


def blank_patch_model():
    """Patch-embedding weights zero: every image gives the same tokens, features constant up to rounding."""
    model = build_tiny_model("vit_cls")
    with torch.no_grad():
        model.vit.embeddings.patch_embeddings.projection.weight.zero_()
    return model


# ---------------------------------------------------------------------- the rule, on hand-made curves
def test_choose_block_scl_knee_and_layer_minimum():
    decreasing = [100, 30, 10, 5, 4.9, 4.8]  # log10 range [0.68, 2]; 10% above the minimum: NC1 <= 6.5
    assert choose_block(decreasing, "scl").block == 3
    assert choose_block(decreasing, "layer").block == 5  # still decreasing at the end: the last block
    u_shaped = [50, 10, 2, 3, 8]  # the last blocks raise NC1 again
    assert choose_block(u_shaped, "scl").block == 2
    s = choose_block(u_shaped, "layer")
    assert s.block == 2 and "rises after it" in s.reason
    assert choose_block([5, 50, 1, 1], "layer").block == 3  # ties at the minimum: the later block
    assert choose_block([5, 50, 1, 1], "scl").block == 2  # earliest block at the minimum
    # tolerance moves the knee: 0 = the (earliest) minimum, 1 = the first block
    assert choose_block(decreasing, "scl", tolerance=0.0).block == 5
    assert choose_block(decreasing, "scl", tolerance=1.0).block == 0
    assert choose_block(decreasing, "scl", tolerance=0.5).block == 2  # 10 <= 10**(0.68 + 0.66) = 21.9 < 30


def test_choose_block_flat_nan_mapping_and_errors():
    flat = choose_block([2.0, 2.05, 2.0, 2.02], "scl")
    assert flat.block == 3 and "flat" in flat.reason
    assert choose_block([math.nan, 10, 1, math.nan], "scl").block == 2
    assert choose_block([math.nan, 10, 1, math.nan], "layer").block == 2
    assert choose_block({"0": 9.0, "1": 3.0, "2": 1.0, "final": 0.5}, "layer").block == 2  # "final" ignored
    with pytest.raises(ValueError, match="method"):
        choose_block([1, 2], "lora")
    with pytest.raises(ValueError, match="finite"):
        choose_block([math.nan, math.nan])
    with pytest.raises(ValueError, match="blocks 0..n-1"):
        choose_block({1: 2.0, 2: 1.0})


def test_choose_block_always_returns_a_valid_block():
    rng = random.Random(0)
    for _ in range(200):
        n = rng.randint(1, 24)
        curve = [10 ** rng.uniform(-3, 3) for _ in range(n)]
        for method in METHODS:
            s = choose_block(curve, method, tolerance=rng.random())
            assert 0 <= s.block < n and s.nc1_per_layer == curve and s.method == method
            assert math.log10(curve[s.block]) <= math.log10(min(curve)) + s.tolerance * (math.log10(max(curve)) - math.log10(min(curve))) + 1e-12


def test_choose_block_tolerance_ends_are_exact():
    # lo + 1.0 * (hi - lo) can round below hi: tolerance=1 (documented: the first block) then skipped block 0
    # when it held the curve's maximum, about 1 curve in 30
    assert choose_block([9.855040944009588, 1.8754279872729955, 6.13160406688738, 6.570027296006392, 4.7705446101737135],
                        "scl", tolerance=1.0).block == 0
    rng = random.Random(1)
    for _ in range(500):
        curve = [10 ** rng.uniform(-3, 3) for _ in range(rng.randint(2, 13))]
        assert choose_block(curve, "scl", tolerance=1.0).block == 0
        assert choose_block(curve, "scl", tolerance=0.0).block == curve.index(min(curve))


# ---------------------------------------------------------------------- ranking, known answers
def test_rank_models_known_answer_probe_and_json_round_trip(data, tmp_path):
    good = good_model()
    candidates = {"blank": blank_patch_model(), "zero_final": zero_final_model(), "blind": blind_model(), "good": good}
    result = rank_models(candidates, data, linear_probe=True, batch_size=20, progress=False)

    assert [c.name for c in result.candidates] == ["good", "blind", "blank", "zero_final"]
    assert [c.rank for c in result.candidates] == [1, 2, 3, 4]
    good_r, blind_r, blank_r, zero_r = result.candidates
    assert good_r.nc1 < 0.1 * blind_r.nc1 and math.isfinite(blind_r.nc1)  # class signal vs noise only
    assert good_r.note == blind_r.note == ""
    assert math.isnan(zero_r.nc1) and "constant" in zero_r.note
    assert math.isnan(blank_r.nc1) and "constant" in blank_r.note
    assert set(good_r.layers) == {*map(str, range(LAYERS)), FINAL} and len(good_r.nc1_per_layer) == LAYERS
    # the probe: the better-collapsed model probes better
    assert good_r.linear_probe["test_accuracy"] == 1.0
    assert blind_r.linear_probe["test_accuracy"] < 0.8
    assert good_r.linear_probe["num_train"] == 3 * 16 and good_r.linear_probe["num_test"] == 3 * 8
    assert result.rank_correlation == pytest.approx(spearman([-good_r.nc1, -blind_r.nc1, -math.inf, -math.inf],
                                                            [c.linear_probe["test_accuracy"] for c in result.candidates]))
    assert "anecdotal" in result.correlation_note and "1/4!" in result.correlation_note

    # independent paths: the probe of hf_nc.probe, and one-shot NC of the extracted features
    assert good_r.linear_probe == linear_probe(good, data)
    x, y = penultimate_features(good, data["train"])
    assert good_r.nc1 == pytest.approx(nc_metrics(torch.from_numpy(x), torch.from_numpy(y), num_classes=K)["nc1"], rel=1e-6)

    table = result.table()
    assert "rule: rank by ascending NC1" in table and "constant" in table and "probe acc" in table
    path = result.save(tmp_path / "r.json")
    json.loads(path.read_text())  # strict JSON (NaN written as null)
    back = RankingResult.load(path)
    assert back.to_dict() == result.to_dict() and back.table() == table
    assert math.isnan(back.candidates[-1].nc1)


SEVERAL = ["logme", "nc1", "ncti", "hscore", "hscore_shrinkage", "cdnv", "ncc_acc", "logme_thin"]


def test_rank_models_streams_logme_without_keeping_features(data, monkeypatch):
    """LogME and NC need no kept features (O(d^2) statistics); the values equal the feature path."""
    from hf_nc.selection import _measure
    from hf_nc.selection import scores as S

    calls, orig = [], _measure.measure
    monkeypatch.setattr(_measure, "measure", lambda *a, **kw: calls.append(kw) or orig(*a, **kw))
    streamed = rank_models({"good": good_model()}, data, scores=["logme", "logme_thin", "nc1"], block_scores=["logme", "nc1"], progress=False)
    assert calls[-1]["keep_final"] is False and calls[-1]["keep_blocks"] is False
    kept = rank_models({"good": good_model()}, data, scores=["logme", "hscore"], block_scores=["logme", "hscore"], progress=False)
    assert calls[-1]["keep_final"] is True and calls[-1]["keep_blocks"] is True
    x, y = penultimate_features(good_model(), data["train"])
    for form, name in (("evidence", "logme"), ("thin", "logme_thin")):
        assert streamed.best.scores[name] == pytest.approx(S.logme(x, y, form=form), rel=1e-6)
    for b in map(str, range(LAYERS)):
        assert streamed.best.block_scores[b]["logme"] == pytest.approx(kept.best.block_scores[b]["logme"], rel=1e-6)


def test_rank_models_several_scores_known_order(data):
    """good > damped > blind by construction: every score but NC2 orders them so, whichever it
    ranks by; given accuracies in that order give tau = 1; scores equal an independent path."""
    from hf_nc.selection import scores as S

    cands = {"blind": blind_model(), "zero_final": zero_final_model(), "good": good_model(), "damped": damped_model()}
    acc = {"good": 0.95, "damped": 0.7, "blind": 0.4}
    result = rank_models(cands, data, scores=SEVERAL, rank_by="logme", block_scores=["logme", "nc1"], accuracies=acc,
                         block_accuracies={"good": {b: float(b) for b in range(LAYERS)}}, batch_size=20, progress=False)
    assert [c.name for c in result.candidates] == ["good", "damped", "blind", "zero_final"]
    assert result.rank_by == "logme" and "descending logme" in result.rule and result.ground_truth == "provided"
    for name in SEVERAL:
        corr = result.score_correlations[name]
        assert corr["n"] == 3 and corr["top1_regret"] == 0.0, name
        assert corr["kendall_tau"] == pytest.approx(1.0) and corr["spearman"] == pytest.approx(1.0) and corr["weighted_tau"] == pytest.approx(1.0), name
    good = result.candidates[0]
    zero = result.candidates[-1]
    assert all(math.isnan(v) for k, v in zero.scores.items()) and "constant" in zero.score_errors["logme"]
    # NCTI is normalised over the usable pool: the best candidate on every term scores 2
    assert good.scores["ncti"] == pytest.approx(2.0) and result.candidates[2].scores["ncti"] == pytest.approx(-1.0)
    # independent path: features extracted again, scores computed directly
    x, y = penultimate_features(good_model(), data["train"])
    for name in ("logme", "hscore_shrinkage", "logme_thin"):
        assert good.scores[name] == pytest.approx(S.SCORES[name].fn(x, y, num_classes=K), rel=1e-6), name
    assert good.scores["nc1"] == pytest.approx(S.nc1(x, y), rel=1e-6)
    # per-block scores, and their correlation with per-block accuracies
    assert set(good.block_scores) == set(map(str, range(LAYERS)))
    assert set(result.block_correlations) == {"good"} and result.block_correlations["good"]["nc1"]["n"] == LAYERS
    # ranking by another score, and strict JSON round trip
    by_nc1 = rank_models(cands, data, scores=["nc1", "logme"], batch_size=20, progress=False)
    assert [c.name for c in by_nc1.candidates] == ["good", "damped", "blind", "zero_final"] and by_nc1.rule.startswith("rank by ascending NC1")
    text = result.to_json()
    json.loads(text)
    assert RankingResult.from_json(text).to_dict() == result.to_dict()
    assert "logme" in result.table() and "w. tau" in result.table()
    with pytest.raises(ValueError, match="unknown score"):
        rank_models(cands, data, scores=["leep"], progress=False)
    with pytest.raises(ValueError, match="unknown candidates"):
        rank_models({"good": good_model()}, data, scores=["nc1"], accuracies={"bad": 1.0}, progress=False)


def two_dim_final_model():
    """Final layernorm keeps 2 of its outputs: features vary, but span 2 directions only."""
    model = build_tiny_model("vit_cls")
    with torch.no_grad():
        model.vit.layernorm.weight[2:] = 0
        model.vit.layernorm.bias.zero_()
    return model


def test_rank_models_ncti_failing_on_one_candidate_is_nan_not_a_crash(data, monkeypatch):
    """Regression: a candidate whose NCTI terms cannot be computed crashed rank_models
    (AttributeError on the NaN); it now gets NaN with the reason, the others a composite."""
    from hf_nc.selection import scores as S

    def picky(features, labels, **kw):  # fails on the candidate whose features span 2 directions
        if np.sum(np.abs(features).max(axis=0) == 0) > features.shape[1] // 2:
            raise ValueError("singular within-class covariance (test)")
        return S.ncti_terms(features, labels, **kw)

    monkeypatch.setitem(S.SCORES, "ncti", S.ScoreSpec("ncti", picky, +1, False, pool=True))
    cands = {"good": good_model(), "flat": two_dim_final_model(), "blind": blind_model()}
    result = rank_models(cands, data, scores=["ncti", "logme"], batch_size=20, progress=False)
    by = {c.name: c for c in result.candidates}
    assert math.isnan(by["flat"].scores["ncti"]) and "singular" in by["flat"].score_errors["ncti"]
    assert by["good"].scores["ncti"] == pytest.approx(2.0) and by["blind"].scores["ncti"] == pytest.approx(-1.0)
    assert result.candidates[-1].name == "flat" and math.isfinite(by["flat"].scores["logme"])


def test_ncti_uses_only_the_directions_the_features_span(data):
    """Features spanning 2 of 32 dimensions: NCTI works in those 2 (not in float noise)."""
    from hf_nc.selection import scores as S

    x, y = penultimate_features(two_dim_final_model(), data["train"])
    assert S.ncti_terms(x, y).pca_dim == 2
    t2, t = S.ncti_terms(x[:, :2], y), S.ncti_terms(x, y)
    assert (t.seli, t.ncc, t.vc) == pytest.approx((t2.seli, t2.ncc, t2.vc), rel=1e-6)


def test_rank_models_final_only_from_paths(data, tmp_path):
    good_model().save_pretrained(tmp_path / "good")
    blind_model().save_pretrained(tmp_path / "blind")
    result = rank_models([str(tmp_path / "blind"), str(tmp_path / "good")], data["train"], layers="final", progress=False)
    assert [c.label for c in result.candidates] == ["good", "blind"]
    assert set(result.best.layers) == {FINAL} and result.best.linear_probe is None and result.rank_correlation is None
    with pytest.raises(ValueError, match="test"):
        rank_models([str(tmp_path / "good")], data["train"], linear_probe=True, progress=False)


def test_one_image_per_class_is_refused_before_any_forward_pass(monkeypatch):
    """With one training image per class every candidate's NC1 is 0 and the "ranking" was the
    input order: refused, naming the cause, before a model is run."""
    one_shot = constant_images(1, seed=0)

    def no_forward(*a, **k):
        raise AssertionError("a forward pass ran")

    monkeypatch.setattr(torch.nn.Module, "__call__", no_forward)
    for call in (lambda: rank_models({"a": good_model(), "b": blind_model()}, one_shot, progress=False),
                 lambda: suggest_layer(good_model(), one_shot, progress=False)):
        with pytest.raises(ValueError, match="training split of dataset: every one of the 3 classes has a single sample"):
            call()


def test_suggest_layer_follows_choose_block(data, tmp_path):
    good_model().save_pretrained(tmp_path / "good")
    for method, model in zip(METHODS, [good_model(), f"random:{tmp_path / 'good'}"]):
        s = suggest_layer(model, data, method=method, tolerance=0.2, progress=False)
        assert 0 <= s.block < LAYERS and len(s.nc1_per_layer) == LAYERS and s.method == method
        tunable = s.nc1_per_layer[:-1] if method == "scl" else s.nc1_per_layer  # SCL never tunes the last block
        assert s.block == choose_block(tunable, method, tolerance=0.2).block
        assert s.reason and s.rule


def test_choose_block_by_score_direction_ties_and_nan():
    from hf_nc.selection import choose_block_by_score

    assert choose_block_by_score([0.1, 0.5, 0.3], "logme").block == 1  # higher is better
    assert choose_block_by_score([3.0, 1.0, 2.0], "nc1").block == 1  # lower is better
    assert choose_block_by_score([0.5, math.nan, 0.5], "probe").block == 2  # ties: the later block
    s = choose_block_by_score([0.2, 0.9], "probe", method="layer")
    assert s.method == "layer" and s.extra["probe_per_layer"] == [0.2, 0.9] and "validation" in s.rule
    with pytest.raises(ValueError, match="finite"):
        choose_block_by_score([math.nan], "logme")
    with pytest.raises(ValueError, match="unknown score"):
        choose_block_by_score([1.0], "leep")


def test_suggest_layer_score_and_probe_rules(data):
    from hf_nc.selection import scores as S
    from hf_nc.features import extract_features

    model = good_model()
    s = suggest_layer(model, data, rule="logme", progress=False)
    # independent: per-block features extracted directly, LogME per block, argmax
    labels = np.asarray(data["train"]["label"])
    from hf_nc.data import build_transforms, collate_fn

    batch = collate_fn([*data["train"].with_transform(build_transforms(model, train=False))])
    feats = extract_features(model.eval(), batch["pixel_values"])
    per_block = [S.logme(feats[b].numpy(), labels) for b in range(LAYERS - 1)]  # SCL (the default): every block but the last
    assert s.extra["logme_per_layer"] == pytest.approx(per_block, rel=1e-6)
    assert s.block == int(np.argmax(per_block)) and len(s.nc1_per_layer) == LAYERS
    # the probe rule reads the validation split, never the test split: poisoned test labels change nothing
    poisoned = DatasetDict(train=data["train"], test=data["test"].map(lambda e: {"label": (e["label"] + 1) % K}))
    a = suggest_layer(model, data, rule="probe", progress=False)
    b = suggest_layer(model, poisoned, rule="probe", progress=False)
    assert a.block == b.block and a.extra == b.extra and 0 <= a.block < LAYERS
    with_val = DatasetDict(train=data["train"], validation=data["test"])
    v = suggest_layer(model, with_val, rule="probe", progress=False)
    assert v.extra["probe_per_layer"][-1] == pytest.approx(1.0)  # the separable classes probe perfectly on validation
    assert suggest_layer(model, data, rule="ncti", progress=False).extra["ncti_per_layer"]
    by_name = suggest_layer(model, "digits", rule="probe", shots_per_class=5, validation_fraction=0.05, progress=False)
    assert 0 <= by_name.block < LAYERS - 1 and len(by_name.extra["probe_per_layer"]) == LAYERS - 1
    with pytest.raises(ValueError, match="rule"):
        suggest_layer(model, data, rule="leep", progress=False)


# ---------------------------------------------------------------------- the recipe
def _recipe_args(tmp_path, data):
    data.save_to_disk(tmp_path / "data")
    good_model().save_pretrained(tmp_path / "good")
    blind_model().save_pretrained(tmp_path / "blind")
    cands = f"{tmp_path / 'blind'},{tmp_path / 'good'},random:{tmp_path / 'good'}"
    return ["--candidates", cands, "--dataset", str(tmp_path / "data"), "--linear_probe", "--batch_size", "16"]


def test_recipe_writes_ranking_plot_and_suggestion(data, tmp_path, capsys):
    out = recipe.main(_recipe_args(tmp_path, data) + ["--output_dir", str(tmp_path / "out")])
    printed = capsys.readouterr().out
    ranking = out["ranking"]["candidates"]
    assert ranking[0]["name"].endswith("good") and not ranking[0]["name"].startswith("random:")
    assert ranking[-1]["name"].endswith("blind")
    assert "Top model good: tune block" in printed and "rank correlation" in printed
    saved = json.loads((tmp_path / "out" / "ranking.json").read_text())
    assert saved == json.loads(json.dumps(out))
    assert 0 <= saved["suggestion"]["block"] < LAYERS
    assert (tmp_path / "out" / "nc1_per_layer.png").stat().st_size > 1000


def test_recipe_scores_and_rank_by(data, tmp_path, capsys):
    out = recipe.main(_recipe_args(tmp_path, data) + ["--scores", "nc1,logme,hscore_shrinkage", "--rank_by", "logme", "--layers", "final",
                                                      "--output_dir", str(tmp_path / "out")])
    printed = capsys.readouterr().out
    ranking = out["ranking"]
    assert ranking["rank_by"] == "logme" and set(ranking["score_correlations"]) == {"nc1", "logme", "hscore_shrinkage"}
    assert ranking["candidates"][0]["name"].endswith("good") and not ranking["candidates"][0]["name"].startswith("random:")
    assert "descending logme" in printed and "w. tau" in printed


@pytest.mark.slow
def test_recipe_two_processes_give_the_same_ranking(data, tmp_path):
    args = _recipe_args(tmp_path, data)
    one = recipe.main(args + ["--output_dir", str(tmp_path / "one")])
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=str(ROOT))
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2", str(ROOT / "recipes" / "rank_models.py"),
           *args, "--batch_size", "7", "--output_dir", str(tmp_path / "two")]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=240)
    assert proc.returncode == 0, proc.stderr[-3000:]
    two = json.loads((tmp_path / "two" / "ranking.json").read_text())
    a, b = one["ranking"]["candidates"], two["ranking"]["candidates"]
    assert [c["name"] for c in a] == [c["name"] for c in b]
    for ca, cb in zip(a, b):
        assert ca["linear_probe"] == cb["linear_probe"]
        for layer, metrics in ca["layers"].items():
            for metric, value in metrics.items():
                assert cb["layers"][layer][metric] == pytest.approx(value, rel=1e-7, abs=1e-12), (ca["name"], layer, metric)
    assert two["suggestion"]["block"] == one["suggestion"]["block"]
    assert two["suggestion"]["nc1_per_layer"] == pytest.approx(one["suggestion"]["nc1_per_layer"], rel=1e-7)
