"""Selection on inputs the other tests never try: label dtypes, tiny or empty splits, SCL's last block,
checkpoints whose image processor has another size than the config."""

import math
import re

import numpy as np
import pytest
from datasets import ClassLabel, Dataset, DatasetDict, Features, Image, Value
from PIL import Image as PILImage
from tiny_models import IMAGE, build_tiny_model

from hf_nc.selection import RankingResult, rank_models, suggest_layer
from hf_nc.selection import scores as S


@pytest.mark.parametrize("labels", [np.array(["a", "b", "c"] * 4), np.array(["a", "b", "c"] * 4, dtype=object)])
def test_string_labels_are_refused_naming_the_dtype(labels):
    x = np.random.default_rng(0).normal(size=(12, 5))
    with pytest.raises(ValueError, match="integer class indices.*dtype"):  # was a TypeError from np.mod
        S.logme(x, labels)
    with pytest.raises(ValueError, match="integer class indices.*dtype"):
        S.compute_scores(x, labels, ["nc1"])


def test_huge_float_label_is_reported_as_it_is():
    x = np.random.default_rng(0).normal(size=(12, 5))
    y = np.repeat([0.0, 1.0, 2.0], 4)
    y[-1] = 1e20
    with pytest.raises(ValueError, match=r"outside \[0, 3\): min 0, max 1e\+20"):  # the int64 cast wrapped it to -2**63
        S.logme(x, y, num_classes=3)
    y[-1] = 2.0
    assert S.logme(x, y) == S.logme(x, y.astype(np.int64))  # integral floats still work


# ------------------------------------------------------------------------------------ datasets passed in
def grey_images(per_class: int, seed: int = 0, labels=(0, 1, 2), feature=None) -> Dataset:
    """Class k: a constant grey level plus pixel noise; ``labels[k]`` is stored as its label."""
    rng = np.random.default_rng(seed)
    images, ys = [], []
    for k, level in enumerate((50, 128, 206)):
        for _ in range(per_class):
            images.append(PILImage.fromarray(np.clip(level + rng.normal(0, 12, (IMAGE, IMAGE, 3)), 0, 255).astype(np.uint8)))
            ys.append(labels[k])
    feature = feature or ClassLabel(names=["dark", "mid", "light"])
    return Dataset.from_dict({"image": images, "label": ys}, features=Features({"image": Image(), "label": feature}))


@pytest.fixture(scope="module")
def model():
    return build_tiny_model("vit_cls")


def test_string_label_column_is_refused_naming_the_fix(model):
    data = DatasetDict(train=grey_images(2, labels=("a", "b", "c"), feature=Value("string")))
    for call in (lambda: rank_models({"m": model}, data, progress=False), lambda: suggest_layer(model, data, progress=False)):
        with pytest.raises(ValueError, match="integer class ids.*class_encode_column"):  # was "can only concatenate str"
            call()


def test_empty_splits_are_named(model):
    empty_train = DatasetDict(train=grey_images(2).select([]), test=grey_images(1))
    with pytest.raises(ValueError, match="'train' split .* no images"):
        rank_models({"m": model}, empty_train, progress=False)
    empty_test = DatasetDict(train=grey_images(2), test=grey_images(1).select([]))
    with pytest.raises(ValueError, match="'test' split .* no images"):  # was StandardScaler's "0 sample(s)" after the train pass
        rank_models({"m": model}, empty_test, linear_probe=True, progress=False)
    assert rank_models({"m": model}, empty_test, progress=False).best.nc1 >= 0  # no probe: the test split is not read


# ------------------------------------------------------------------------------------ probe
def resized_checkpoint(path, size: int = 24):
    """A tiny ViT whose saved image processor makes ``size`` px inputs (config.image_size stays 16), as a
    recipe run with ``--image_size`` saves it."""
    from transformers import ViTImageProcessor

    build_tiny_model("vit_cls").save_pretrained(path)
    ViTImageProcessor(size={"height": size, "width": size}).save_pretrained(path)
    return str(path)


def test_probe_interpolates_like_the_nc_pass_for_a_resized_processor(tmp_path):
    from hf_nc.probe import linear_probe, load_model, penultimate_features

    path = resized_checkpoint(tmp_path / "resized")
    data = DatasetDict(train=grey_images(4), test=grey_images(2, seed=1))
    ranking = rank_models([path], data, linear_probe=True, scores=["nc1", "hscore"], progress=False)  # was: "Input image size (24*24) doesn't match model (16*16)"
    probe = ranking.best.linear_probe
    assert probe["num_test"] == 6 and probe["dim"] == 32
    # the probe's train features are the ones the NC statistics saw (same forward, same interpolation)
    xtr, ytr = penultimate_features(load_model(path), data["train"])
    assert xtr.shape == (12, 32)
    assert ranking.best.scores["hscore"] == pytest.approx(S.hscore(xtr, ytr), rel=1e-6)
    assert linear_probe(load_model(path), data)["test_accuracy"] == probe["test_accuracy"]


@pytest.mark.parametrize("prefix_cache", [True, False])
def test_few_step_trials_interpolate_for_a_resized_processor(tmp_path, prefix_cache):
    from hf_nc.features import interpolate_positions
    from hf_nc.probe import load_model
    from hf_nc.selection import few_step_trials

    path = resized_checkpoint(tmp_path / "resized")
    train, val = grey_images(4), grey_images(2, seed=1)
    kwargs = dict(method="layer", blocks=[1], steps=2, batch_size=4, prefix_cache=prefix_cache)
    got = few_step_trials(load_model(path), train, val, **kwargs)  # was: "Input image size (24*24) doesn't match model (16*16)"
    # independent expectation: the same trial on a model told to interpolate by its caller
    reference = load_model(path)
    assert interpolate_positions(reference) == 1
    want = few_step_trials(reference, train, val, **kwargs)
    assert got[0].validation_accuracy == want[0].validation_accuracy
    assert got[0].validation_loss == pytest.approx(want[0].validation_loss, rel=1e-5)
    s = suggest_layer(load_model(path), DatasetDict(train=train, validation=val), rule="few_steps", method="layer",
                      steps=2, train_batch_size=4, progress=False)
    assert s.block in range(4)


def test_linear_probe_names_an_empty_split(model):
    from hf_nc.probe import linear_probe

    with pytest.raises(ValueError, match="'test' split has no images"):  # was torch.cat's "expected a non-empty list"
        linear_probe(model, DatasetDict(train=grey_images(2), test=grey_images(1).select([])))


# ------------------------------------------------------------------------------------ SCL and the last block
def last_block_best(monkeypatch):
    """Every measured block's NC1 is 10^-block and its hscore is block: the last block is the most collapsed
    and scores best, so a rule over every block picks it."""
    from hf_nc.selection import _measure

    real_measure, real_compute, real_scores = _measure.measure, _measure.compute, S.compute_scores
    block_of = {}

    def measure(*args, **kwargs):
        stats, kept = real_measure(*args, **kwargs)
        block_of.update({id(v): key for part in (stats, kept or {}) for key, v in part.items() if isinstance(key, int)})
        return stats, kept

    def compute(stats, degenerate_tol):
        metrics, note = real_compute(stats, degenerate_tol)
        if id(stats) in block_of:
            metrics["nc1"] = 10.0 ** -block_of[id(stats)]
        return metrics, note

    def compute_scores(features, labels, names, **kwargs):
        out = real_scores(features, labels, names, **kwargs)
        if id(features) in block_of and "hscore" in names:
            out["hscore"] = float(block_of[id(features)])
        return out

    monkeypatch.setattr(_measure, "measure", measure)
    monkeypatch.setattr(_measure, "compute", compute)
    monkeypatch.setattr(S, "compute_scores", compute_scores)


@pytest.mark.parametrize("rule", ["nc1", "hscore"])
def test_scl_suggestion_is_never_the_last_block(model, monkeypatch, rule):
    from hf_nc import SCLConfig
    from peft import get_peft_model
    from tiny_models import LAYERS

    last_block_best(monkeypatch)
    data = DatasetDict(train=grey_images(4))
    assert suggest_layer(model, data, method="layer", rule=rule, progress=False).block == LAYERS - 1
    scl = suggest_layer(model, data, method="scl", rule=rule, progress=False)
    assert scl.block == LAYERS - 2 and len(scl.nc1_per_layer) == LAYERS  # was LAYERS - 1, which SCLConfig refuses
    get_peft_model(build_tiny_model("vit_cls"), SCLConfig(layer=scl.block))  # the suggestion is usable


def test_scl_on_a_one_block_model_is_refused_naming_the_method():
    from hf_nc.selection import tunable_blocks

    with pytest.raises(ValueError, match="cannot tune any block.*method='layer'"):
        tunable_blocks(1, "scl")
    assert tunable_blocks(1, "layer") == 1 and tunable_blocks(12, "scl") == 11


def test_rank_models_recipe_suggests_an_scl_block_below_the_last(model, monkeypatch, tmp_path):
    import sys
    from pathlib import Path

    from tiny_models import LAYERS

    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "recipes"))
    import rank_models as recipe

    DatasetDict(train=grey_images(4), test=grey_images(2, seed=1)).save_to_disk(tmp_path / "data")
    model.save_pretrained(tmp_path / "m")
    args = ["--candidates", str(tmp_path / "m"), "--dataset", str(tmp_path / "data"), "--output_dir", str(tmp_path / "out")]
    with pytest.raises(ValueError, match="--method must be one of"):  # before any forward pass
        recipe.main(args + ["--method", "lora"])
    last_block_best(monkeypatch)
    out = recipe.main(args + ["--method", "scl"])
    assert out["suggestion"]["block"] == LAYERS - 2 and len(out["suggestion"]["nc1_per_layer"]) == LAYERS


@pytest.mark.parametrize("rule", ["probe", "few_steps"])
def test_held_out_validation_that_empties_a_class_is_refused(model, rule):
    one_shot = DatasetDict(train=grey_images(1), test=grey_images(1, seed=1))
    with pytest.raises(ValueError, match=r"leaves classes \[0, 1, 2\] without a training image"):  # was "no batches" / torch.stack
        suggest_layer(model, one_shot, rule=rule, method="layer", steps=1, progress=False)
    with_val = DatasetDict(train=grey_images(1), validation=grey_images(1, seed=1))
    by_probe = suggest_layer(model, with_val, rule="probe", method="layer", progress=False)
    assert 0 <= by_probe.block < 4  # one training image per class: the probes decide, NC1 is undefined (NaN, not 0)
    assert all(math.isnan(v) for v in by_probe.nc1_per_layer)


def test_unknown_rank_by_fails_before_any_forward_pass(model, monkeypatch):
    from hf_nc.selection import _measure

    def no_pass(*args, **kwargs):
        raise AssertionError("a forward pass ran before the arguments were checked")

    monkeypatch.setattr(_measure, "measure", no_pass)
    with pytest.raises(ValueError, match="unknown score 'leep'"):
        rank_models({"m": model}, DatasetDict(train=grey_images(2)), rank_by="leep", progress=False)


def test_a_nan_accuracy_is_refused_not_correlated(model, monkeypatch):
    # a NaN accuracy (a diverged run) made Kendall / Spearman / the regret NaN but left weighted tau a finite
    # number; rank_models took it after every candidate's forward pass
    from hf_nc.selection import _measure
    from hf_nc.selection.correlation import correlations, score_correlations, top1_regret

    nan = float("nan")
    for fn in (correlations, top1_regret):
        with pytest.raises(ValueError, match="accuracies must be finite"):
            fn([1.0, 2.0, 3.0], [0.5, nan, 0.9])
    with pytest.raises(ValueError, match=r"accuracies must be finite, got \[nan\] for \['b'\]"):
        score_correlations({"a": {"s": 1.0}, "b": {"s": 2.0}, "c": {"s": 3.0}}, {"a": 0.5, "b": nan, "c": 0.9})

    def no_pass(*args, **kwargs):
        raise AssertionError("a forward pass ran before the arguments were checked")

    monkeypatch.setattr(_measure, "measure", no_pass)
    with pytest.raises(ValueError, match="accuracies must be finite"):
        rank_models({"m": model, "n": model}, DatasetDict(train=grey_images(2)), accuracies={"m": 0.5, "n": nan}, progress=False)
    with pytest.raises(ValueError, match="unknown candidates"):
        rank_models({"m": model}, DatasetDict(train=grey_images(2)), accuracies={"x": 0.5}, progress=False)


@pytest.mark.parametrize("tolerance", ["-0.1", "1.5", "nan"])
def test_rank_models_recipe_checks_tolerance_before_any_forward_pass(model, monkeypatch, tmp_path, tolerance):
    import sys
    from pathlib import Path

    from hf_nc.selection import choose_block

    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "recipes"))
    import rank_models as recipe

    with pytest.raises(ValueError, match="tolerance must be in"):  # the library's own rule refuses it too
        choose_block([3.0, 2.0, 1.0], "scl", tolerance=float(tolerance))

    def no_pass(*args, **kwargs):
        raise AssertionError("the ranking ran before --tolerance was checked (its work was then lost)")

    monkeypatch.setattr(recipe, "rank_models", no_pass)
    with pytest.raises(ValueError, match=r"--tolerance must be in \[0, 1\]"):
        recipe.main(["--output_dir", str(tmp_path), "--tolerance", tolerance])


def test_candidates_with_the_same_folder_name_stay_apart_in_table_and_plot(monkeypatch, tmp_path):
    import sys
    from pathlib import Path

    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "recipes"))
    import rank_models as recipe

    DatasetDict(train=grey_images(4), test=grey_images(2, seed=1)).save_to_disk(tmp_path / "data")
    paths = [str(tmp_path / "a" / "ckpt"), str(tmp_path / "b" / "ckpt")]  # both labelled "ckpt" before
    for seed, path in enumerate(paths):
        build_tiny_model("vit_cls", seed=seed).save_pretrained(path)
    plotted = {}
    monkeypatch.setattr(recipe, "plot_layer_curve", lambda curves, path, **kw: plotted.update(curves) or path)
    out = recipe.main(["--candidates", ",".join(paths), "--dataset", str(tmp_path / "data"), "--output_dir", str(tmp_path / "out")])
    ranking = RankingResult.from_dict(out["ranking"])
    # one curve per candidate, each that candidate's own per-block NC1 (one curve drew over the other)
    assert len(plotted) == 2
    assert sorted(map(sorted, (c.items() for c in plotted.values()))) == sorted(sorted(c.nc1_per_layer.items()) for c in ranking.candidates)
    rows = ranking.table().splitlines()[1:3]
    assert all(any(p in row for row in rows) for p in paths)  # the table names each one
    # labels stay short where they differ
    assert RankingResult(candidates=ranking.candidates[:1]).labels() == {ranking.candidates[0].name: "ckpt"}


def test_block_accuracies_that_match_nothing_are_refused_not_ignored(model, monkeypatch):
    # a typo in a name or a block used to give block_correlations == {} (or n = 1), silently
    from hf_nc.selection import _measure, score_correlations
    from hf_nc.selection import scores as S
    from tiny_models import LAYERS

    data = DatasetDict(train=grey_images(3))
    acc = {b: 0.1 * ((3 * b) % LAYERS) for b in range(LAYERS)}
    real = rank_models({"m": model}, data, block_scores=["nc1", "logme"], block_accuracies={"m": acc}, progress=False)
    scores = real.best.block_scores
    want = score_correlations({str(b): {n: S.oriented(n, scores[str(b)][n]) for n in ("nc1", "logme")} for b in range(LAYERS)},
                              {str(b): v for b, v in acc.items()})
    assert real.block_correlations["m"] == want and want["nc1"]["n"] == LAYERS
    # -1 is the last block, as in layers=
    last = rank_models({"m": model}, data, layers=[-1, 0], block_scores=["nc1"], block_accuracies={"m": {-1: 0.5, 0: 0.2}},
                       progress=False)
    assert last.block_correlations["m"]["nc1"]["n"] == 2

    def no_pass(*args, **kwargs):
        raise AssertionError("a forward pass ran before block_accuracies were checked")

    monkeypatch.setattr(_measure, "measure", no_pass)
    cases = [
        (dict(block_scores=["nc1"], block_accuracies={"x": acc}), r"block_accuracies for unknown candidates \['x'\]"),
        (dict(block_accuracies={"m": acc}), "block_accuracies need block_scores"),
        (dict(block_scores=["nc1"], block_accuracies={"m": {0: 0.1, 7: 0.2}}), "layer 7 is out of range"),
        (dict(block_scores=["nc1"], layers=[0, 1], block_accuracies={"m": {0: 0.1, 2: 0.2}}), "block 2, which is not measured"),
        (dict(block_scores=["nc1"], block_accuracies={"m": {"first": 0.1}}), "'first' is not a block index"),
        (dict(block_scores=["nc1"], block_accuracies={"m": {0: 0.1, -LAYERS: 0.2}}), "gives block 0 twice"),
        (dict(block_scores=["nc1"], block_accuracies={"m": {0: 0.1, 1: float("nan")}}), "block_accuracies must be finite"),
    ]
    for kwargs, message in cases:
        with pytest.raises(ValueError, match=message):
            rank_models({"m": model}, data, progress=False, **kwargs)


def test_a_class_without_training_images_is_refused_before_any_forward_pass(model, monkeypatch):
    # the NC statistics refused it only after the whole pass (per candidate), as "1 class(es) have no samples: [1]"
    from hf_nc.selection import _measure

    full = grey_images(3)
    gap = full.select([i for i, y in enumerate(full["label"]) if y != 1])  # its ClassLabel still has 3 classes
    want = rank_models({"m": model}, DatasetDict(train=full), progress=False).best.nc1
    # num_classes equal to the data's K changes nothing
    assert rank_models({"m": model}, DatasetDict(train=full), num_classes=3, progress=False).best.nc1 == pytest.approx(want, rel=1e-12)

    def no_pass(*args, **kwargs):
        raise AssertionError("a forward pass ran before the labels were checked")

    monkeypatch.setattr(_measure, "measure", no_pass)
    cases = [(gap, None, r"no image of classes \[1\].*map the labels onto the classes present"),
             (full, 4, r"no image of classes \[3\].*num_classes=4 is more than the data has"),
             (full, 2, r"labels \[2\] outside 0\.\.1 \(num_classes=2\)")]
    for train, k, message in cases:
        with pytest.raises(ValueError, match=message):
            rank_models({"m": model}, DatasetDict(train=train), num_classes=k, progress=False)
        for rule in ("nc1", "logme", "probe"):
            with pytest.raises(ValueError, match=message):
                suggest_layer(model, DatasetDict(train=train, validation=full), rule=rule, num_classes=k, progress=False)


def test_scores_equal_up_to_rounding_are_ties_not_evidence():
    # H-score is exactly K - 1 whenever N <= d: its float64 rounding (~1e-13) used to yield a Kendall tau, a
    # regret and a chosen block; each must equal what the exact constant gives
    from hf_nc.selection import choose_block_by_score, correlations, top1_regret

    noisy = [0.9999999999999825, 1.0, 1.0000000000000013, 0.9999999999999394]
    exact = [1.0] * 4
    acc = [0.2, 0.5, 0.1, 0.4]
    assert all(math.isnan(v) for v in correlations(noisy, acc).values())
    assert correlations(noisy, acc).keys() == correlations(exact, acc).keys()
    assert top1_regret(noisy, acc) == top1_regret(exact, acc) == pytest.approx(0.5 - np.mean(acc))
    for method in ("layer", "scl"):
        assert choose_block_by_score(noisy, "hscore", method).block == choose_block_by_score(exact, "hscore", method).block == 3
        assert choose_block_by_score(noisy, "nc1", method).block == 3  # lower is better: the same tie
    # real differences stay: 1e-6 apart is a ranking
    from hf_nc.selection.correlation import merge_ties

    apart = [1.0, 1.000001, 0.999999, 1.000002]
    assert list(merge_ties(apart)) == apart and choose_block_by_score(apart, "hscore").block == 3
    assert correlations(apart, acc)["spearman"] == pytest.approx(np.corrcoef([1, 2, 0, 3], [1, 3, 0, 2])[0, 1])
    assert list(merge_ties([float("nan"), 2.0, -math.inf])[1:]) == [2.0, -math.inf]


def test_rank_models_does_not_correlate_an_hscore_that_is_constant(model):
    # 8 training images, d = 32: H-score = K - 1 = 2 for every candidate (in exact arithmetic)
    from tiny_models import build_tiny_model

    models = {"a": model, "b": build_tiny_model("vit_cls", seed=3), "c": build_tiny_model("vit_cls", seed=4)}
    acc = {"a": 0.1, "b": 0.2, "c": 0.3}
    r = rank_models(models, DatasetDict(train=grey_images(3)), scores=["hscore", "nc1"], accuracies=acc, progress=False)
    assert all(c.scores["hscore"] == pytest.approx(2.0, rel=1e-9) for c in r.candidates)
    got = r.score_correlations["hscore"]
    assert all(math.isnan(got[k]) for k in ("kendall_tau", "weighted_tau", "spearman"))
    assert got["top1_regret"] == pytest.approx(0.3 - 0.2)  # the three tie for first: their mean accuracy
    by_h = rank_models(models, DatasetDict(train=grey_images(3)), scores=["hscore"], accuracies=acc, progress=False)
    assert [c.name for c in by_h.candidates] == ["a", "b", "c"]  # tied: the order given
    assert by_h.rank_correlation is None or math.isnan(by_h.rank_correlation)


def test_a_missing_candidate_folder_is_named_before_any_forward_pass(model, monkeypatch, tmp_path):
    # a typo in the last candidate failed after every earlier candidate's pass, with "Repo id must be in the form ..."
    from hf_nc.selection import _measure

    model.save_pretrained(tmp_path / "good")
    data = DatasetDict(train=grey_images(2))
    assert math.isfinite(rank_models([str(tmp_path / "good"), f"random:{tmp_path / 'good'}"], data, progress=False).best.nc1)

    def no_pass(*args, **kwargs):
        raise AssertionError("a forward pass ran before the candidates were checked")

    monkeypatch.setattr(_measure, "measure", no_pass)
    for missing in (str(tmp_path / "gooood"), f"random:{tmp_path / 'gooood'}", "outputs/run/checkpoint-9", "./gooood"):
        with pytest.raises(ValueError, match=f"candidate '{re.escape(missing)}': no such folder"):
            rank_models([str(tmp_path / "good"), missing], data, progress=False)
        with pytest.raises(ValueError, match="no such folder"):
            suggest_layer(missing, data, progress=False)


def test_a_score_rule_that_fails_on_every_block_says_why(model):
    # 40 classes, 2 images each, d = 32: NCTI needs K - 1 = 39 PCA directions; the error was only
    # "no block has a finite ncti: [nan, nan, nan]"
    from datasets import ClassLabel, Dataset, Features, Image
    from hf_nc.selection.scores import ncti_terms

    rng = np.random.default_rng(0)
    images = [PILImage.fromarray(rng.integers(0, 255, (IMAGE, IMAGE, 3), dtype=np.uint8)) for _ in range(80)]
    data = Dataset.from_dict({"image": images, "label": [i % 40 for i in range(80)]},
                             features=Features({"image": Image(), "label": ClassLabel(num_classes=40)}))
    with pytest.raises(ValueError) as independent:  # the score's own reason, on any 32-wide features of these labels
        ncti_terms(rng.normal(size=(80, 32)), np.arange(80) % 40)
    with pytest.raises(ValueError, match=r"rule='ncti': no tunable block has a finite ncti \(" + re.escape(str(independent.value)[:40])):
        suggest_layer(model, DatasetDict(train=data), rule="ncti", progress=False)
