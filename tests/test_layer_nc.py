"""Streaming per-layer NC equals NC of the concatenated features of every layer."""

import pytest
import torch
from tiny_models import LAYERS, build_tiny_model, tiny_pixels

from hf_nc.features import FINAL, extract_features
from hf_nc.layer_nc import layer_nc
from hf_nc.metrics import nc_metrics


@pytest.mark.parametrize("name", ["vit_cls", "siglip_vision"])
def test_layer_nc_streams_to_the_one_shot_metrics(name):
    model = build_tiny_model(name)
    k = 3
    batches = [(tiny_pixels(batch=b, seed=s), torch.arange(b) % k) for s, b in enumerate([5, 3, 7])]
    got = layer_nc(model, batches, num_classes=k, progress=False)
    assert set(got) == {*range(LAYERS), FINAL}
    feats = [extract_features(model, x) for x, _ in batches]
    labels = torch.cat([y for _, y in batches])
    for key in got:
        h = torch.cat([f[key] for f in feats])
        weight = model.classifier.weight.detach() if key == FINAL and hasattr(model, "classifier") else None
        want = nc_metrics(h, labels, num_classes=k, classifier_weight=weight)
        assert got[key].keys() == want.keys()
        for metric, value in want.items():
            assert got[key][metric] == pytest.approx(value, rel=1e-9, abs=1e-12), (key, metric)
    assert ("nc3" in got[FINAL]) == hasattr(model, "classifier")


def test_layer_nc_restores_training_mode_and_rejects_empty_data():
    model = build_tiny_model("vit").train()
    with pytest.raises(ValueError, match="empty"):
        layer_nc(model, [], num_classes=2, progress=False)
    assert model.training


def test_progress_bar_on_by_default_and_off_with_the_flag(capsys):
    model = build_tiny_model("vit")
    batches = [(tiny_pixels(batch=4, seed=s), torch.arange(4) % 2) for s in range(3)]
    on = layer_nc(model, batches, num_classes=2)
    err = capsys.readouterr().err
    assert "NC statistics" in err and "nearest class centre" in err and "/3 [" in err  # total known
    off = layer_nc(model, batches, num_classes=2, progress=False)
    assert capsys.readouterr().err == ""
    assert on == off
