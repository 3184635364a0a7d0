"""Every hf-nc PEFT method over every tiny backbone (PEFT test-suite style), plus method specifics."""

from __future__ import annotations

import sys
from pathlib import Path

import copy
import json
import os

import pytest
import torch
from peft import PeftModel, get_peft_model
from safetensors.torch import load_file

import hf_nc.adapters as A
from hf_nc.backbones import resolve_backbone
from tiny_models import CLASSIFIERS, TINY_MODELS, build_tiny_model, tiny_pixels
sys.path.insert(0, str(Path(__file__).parent / "scripts"))
from adapter_cases import METHOD_CONFIGS, METHODS, first_output, perturb_trainables  # noqa: E402

MODELS = list(TINY_MODELS)


def _run(model, x=None):
    return first_output(model(pixel_values=tiny_pixels() if x is None else x))


def _adapted(model_name, method):
    base = build_tiny_model(model_name)
    with torch.no_grad():
        ref = _run(base)
    peft_model = get_peft_model(base, METHOD_CONFIGS[method]())
    return peft_model, ref


# -- the full matrix ---------------------------------------------------------------------------


@pytest.mark.parametrize("model_name", MODELS)
@pytest.mark.parametrize("method", METHODS)
def test_init_disable_save_load_merge(model_name, method, tmp_path):
    peft_model, ref = _adapted(model_name, method)
    with torch.no_grad():
        assert torch.equal(_run(peft_model), ref), "the adapter must start as the base model"
        perturb_trainables(peft_model)
        out = _run(peft_model)
        assert (out - ref).abs().max() > 1e-4, "trained adapter parameters must change the output"
        with peft_model.disable_adapter():
            assert torch.equal(_run(peft_model), ref)

    peft_model.save_pretrained(tmp_path)
    assert sorted(os.listdir(tmp_path)) == ["README.md", "adapter_config.json", "adapter_model.safetensors"]
    keys = list(load_file(tmp_path / "adapter_model.safetensors"))
    # transformers' own adapter loading mis-loads adapters whose keys nest the adapter name
    assert not [k for k in keys if ".default." in k or k.endswith(".default")], keys
    n_saved = sum(t.numel() for t in load_file(tmp_path / "adapter_model.safetensors").values())
    n_trainable = sum(p.numel() for p in peft_model.parameters() if p.requires_grad)
    assert n_saved == n_trainable, "exactly the trainable parameters are saved"
    config = json.loads((tmp_path / "adapter_config.json").read_text())
    assert config["base_num_layers"] == 4 and config["base_hidden_size"] == 32

    # load under another adapter name, in this process (fresh-process loading: test_adapters_roundtrip.py)
    loaded = PeftModel.from_pretrained(build_tiny_model(model_name), tmp_path, adapter_name="other")
    with torch.no_grad():
        assert (_run(loaded) - out).abs().max() < 1e-6

    if method == "scl":
        with pytest.raises(ValueError, match="skip connection"):
            peft_model.merge_and_unload()
        plain = peft_model.unload()
        assert not any("hfnc_" in n for n, _ in plain.named_modules())
        # unload() keeps the trained head (PEFT's modules_to_save semantics) and drops the rest
        expected = build_tiny_model(model_name)
        head = resolve_backbone(plain).classifier_path
        if head:
            expected.get_submodule(head).load_state_dict(plain.get_submodule(head).state_dict())
        with torch.no_grad():
            assert torch.equal(_run(plain), _run(expected))
    else:
        merged = peft_model.merge_and_unload()
        assert not any("hfnc_" in n for n, _ in merged.named_modules())
        with torch.no_grad():
            assert (_run(merged) - out).abs().max() < 1e-5


@pytest.mark.parametrize("model_name", MODELS)
@pytest.mark.parametrize("method", METHODS)
def test_training_step_touches_only_the_adapter_and_no_graph_below(model_name, method):
    peft_model, _ = _adapted(model_name, method)
    peft_model.train()
    backbone = resolve_backbone(peft_model)
    first = peft_model.base_model.first_tuned_block()
    assert first is not None
    seen = {}
    hooks = [backbone.blocks[i].register_forward_hook(lambda m, a, o, i=i: seen.__setitem__(i, o))
             for i in range(backbone.num_layers)]
    before = {n: p.detach().clone() for n, p in peft_model.named_parameters()}
    loss = _run(peft_model).pow(2).mean()
    loss.backward()
    for h in hooks:
        h.remove()
    for i in range(first):  # the frozen prefix builds no autograd graph
        assert seen[i].grad_fn is None and not seen[i].requires_grad, f"block {i} < first tuned block {first}"
    assert seen[first].requires_grad
    trainable = {n for n, p in peft_model.named_parameters() if p.requires_grad}
    assert trainable and all(("hfnc_" in n or "modules_to_save" in n) for n in trainable), trainable
    grads = {n: p.grad for n, p in peft_model.named_parameters() if p.requires_grad}
    # (SCL's delta skip is zero at init, so its scale gets gradient from step two: see the SCL tests)
    assert all(g is not None and g.abs().sum() > 0 for n, g in grads.items() if "hfnc_" in n and "scl_scale" not in n), \
        [n for n, g in grads.items() if g is None or g.abs().sum() == 0]
    torch.optim.SGD([p for p in peft_model.parameters() if p.requires_grad], lr=0.1).step()
    for n, p in peft_model.named_parameters():
        if n not in trainable:
            assert torch.equal(p, before[n]), f"frozen parameter {n} changed"


def test_prefix_cut_when_the_input_requires_grad():
    peft_model, _ = _adapted("vit_cls", "layer_ft")
    backbone = resolve_backbone(peft_model)
    seen = {}
    backbone.blocks[-1].register_forward_pre_hook(lambda m, a: seen.__setitem__("in", a[0]))
    x = tiny_pixels().requires_grad_(True)
    _run(peft_model, x).sum().backward()
    assert seen["in"].grad_fn is None, "the first tuned block's input is cut from the frozen prefix's graph"
    assert x.grad is None


@pytest.mark.parametrize("model_name", CLASSIFIERS)
def test_head_is_trained_and_saved_bare_backbones_tune_blocks_only(model_name):
    peft_model = get_peft_model(build_tiny_model(model_name), A.LayerFTConfig(layers=[0]))
    assert any("classifier.modules_to_save" in n for n, p in peft_model.named_parameters() if p.requires_grad)
    no_head = get_peft_model(build_tiny_model(model_name), A.LayerFTConfig(layers=[0], train_head=False))
    assert not any("classifier" in n for n, p in no_head.named_parameters() if p.requires_grad)


# -- config validation -------------------------------------------------------------------------


@pytest.mark.parametrize(
    "config",
    [
        lambda: A.LayerFTConfig(layers=[4]),
        lambda: A.LayerFTConfig(layers=[-5]),
        lambda: A.SCLConfig(layer=7),
        lambda: A.HeadFTConfig(heads={9: "all"}),
    ],
)
def test_out_of_range_layers_name_the_real_range(config):
    with pytest.raises(ValueError, match=r"0\.\.3"):
        get_peft_model(build_tiny_model("vit_cls"), config())


def test_config_errors():
    with pytest.raises(ValueError, match="0..3"):
        get_peft_model(build_tiny_model("vit_cls"), A.HeadFTConfig(heads={0: [4]}))
    with pytest.raises(ValueError, match="last block"):
        get_peft_model(build_tiny_model("vit_cls"), A.SCLConfig(layer=-1))
    with pytest.raises(ValueError, match="layers"):
        A.LayerFTConfig()
    with pytest.raises(ValueError, match="layer="):
        A.SCLConfig()
    with pytest.raises(ValueError, match="all"):
        A.HeadFTConfig(heads={0: "some"})
    with pytest.raises(ValueError, match="part"):
        A.LayerFTConfig(layers=[0], part="norm")


def test_negative_indices_count_from_the_end():
    peft_model = get_peft_model(build_tiny_model("vit_cls"), A.LayerFTConfig(layers=[-1, -4]))
    assert peft_model.peft_config["default"].target_modules == ["vit.layers.0", "vit.layers.3"]
    assert peft_model.base_model.first_tuned_block() == 0


def test_layer_ft_parts_come_from_the_spec():
    peft_model = get_peft_model(build_tiny_model("dinov2_cls"), A.LayerFTConfig(layers=[2], part="mlp"))
    assert peft_model.peft_config["default"].target_modules == [
        "dinov2.encoder.layer.2.norm2", "dinov2.encoder.layer.2.mlp", "dinov2.encoder.layer.2.layer_scale2"]


# -- head FT ---------------------------------------------------------------------------------


def test_head_ft_stores_and_changes_only_the_chosen_slices(tmp_path):
    base = build_tiny_model("vit_cls")
    original = copy.deepcopy(base.state_dict())
    peft_model = get_peft_model(base, A.HeadFTConfig(heads={-1: [1, 3]}))
    perturb_trainables(peft_model)
    peft_model.save_pretrained(tmp_path)
    saved = load_file(tmp_path / "adapter_model.safetensors")
    prefix = "base_model.model.vit.layers.3.attention"
    assert saved[f"{prefix}.q_proj.hfnc_head_ft_delta"].shape == (2, 8, 32)
    assert saved[f"{prefix}.q_proj.hfnc_head_ft_bias"].shape == (2, 8)
    assert saved[f"{prefix}.o_proj.hfnc_head_ft_delta"].shape == (2, 32, 8)
    merged = peft_model.merge_and_unload().state_dict()
    chosen = torch.zeros(32, dtype=torch.bool)
    chosen[8:16] = chosen[24:32] = True
    for proj in ("q", "k", "v"):
        w0, w1 = original[f"vit.layers.3.attention.{proj}_proj.weight"], merged[f"vit.layers.3.attention.{proj}_proj.weight"]
        assert torch.equal(w0[~chosen], w1[~chosen]) and not torch.equal(w0[chosen], w1[chosen])
    o0, o1 = original["vit.layers.3.attention.o_proj.weight"], merged["vit.layers.3.attention.o_proj.weight"]
    assert torch.equal(o0[:, ~chosen], o1[:, ~chosen]) and not torch.equal(o0[:, chosen], o1[:, chosen])
    assert torch.equal(original["vit.layers.3.attention.o_proj.bias"], merged["vit.layers.3.attention.o_proj.bias"])
    untouched = [k for k in original if "layers.3.attention" not in k and "classifier" not in k]
    assert all(torch.equal(original[k], merged[k]) for k in untouched)


def test_head_ft_all_shorthand_and_json_keys():
    config = A.HeadFTConfig(heads={"-1": "all", "0": 2})
    assert config.heads == {-1: "all", 0: [2]}
    peft_model = get_peft_model(build_tiny_model("clip_vision"), config)
    layer = peft_model.base_model.model.get_submodule(resolve_backbone(peft_model).projection_paths(-1)["q"])
    assert layer.hfnc_head_ft_delta["default"].shape == (4, 8, 32)


@pytest.mark.parametrize("method", METHODS)
def test_module_conversions_reach_the_adapter(method):
    peft_model, ref = _adapted("vit_cls", method)
    peft_model.to("cpu").double()  # nn.Module._apply must not be shadowed by adapter layers
    assert all(p.dtype == torch.float64 for p in peft_model.parameters())
    with torch.no_grad():
        assert (_run(peft_model, tiny_pixels().double()) - ref.double()).abs().max() < 1e-5


# -- SCL FT ----------------------------------------------------------------------------------

SCL_OPTIONS = [
    dict(combine=c, position=p, skip_source=s)
    for c in ("add", "concat") for p in ("pre_norm", "post_norm") for s in ("delta", "features")
]


@pytest.mark.parametrize("model_name", ["dinov2_cls", "siglip_cls"])
@pytest.mark.parametrize("options", SCL_OPTIONS, ids=lambda o: "-".join(o.values()))
def test_scl_wirings_start_at_the_base_and_train_the_skip(model_name, options):
    base = build_tiny_model(model_name)
    with torch.no_grad():
        ref = _run(base)
    peft_model = get_peft_model(base, A.SCLConfig(layer=1, **options))
    with torch.no_grad():
        assert torch.equal(_run(peft_model), ref)
    peft_model.train()
    _run(peft_model).pow(2).mean().backward()
    skip_params = [p for n, p in peft_model.named_parameters() if "hfnc_scl_scale" in n or "hfnc_scl_proj" in n]
    block_params = [p for n, p in peft_model.named_parameters() if "hfnc_scl_block" in n]
    assert all(p.grad is not None for p in block_params) and sum(p.grad.abs().sum() for p in block_params) > 0
    if options["skip_source"] == "features" or options["combine"] == "concat":
        # (a delta skip is zero at init: its scale is reached from step two, like the gate's block)
        assert skip_params and all(p.grad is not None and p.grad.abs().sum() > 0 for p in skip_params)


def _skip_grad_to_block(peft_model) -> float:
    """Gradient reaching block l's copy through the skip alone (the frozen path is cut)."""
    backbone = resolve_backbone(peft_model)
    # Detach the input of every block after the source: only the skip connects block l to the output.
    cut = [backbone.blocks[i].register_forward_pre_hook(lambda m, a: (a[0].detach(), *a[1:]))
           for i in range(2, backbone.num_layers)]
    peft_model.zero_grad()
    _run(peft_model).pow(2).mean().backward()
    for h in cut:
        h.remove()
    return sum(p.grad.abs().sum().item() for n, p in peft_model.named_parameters()
               if "hfnc_scl_block" in n and p.grad is not None)


def test_scl_default_skip_carries_gradient_to_block_l_from_step_one():
    peft_model = get_peft_model(build_tiny_model("vit_cls"), A.SCLConfig(layer=1))
    assert _skip_grad_to_block(peft_model) > 0
    # the zero-gated feature skip is init-equal too, but reaches block l only after one step
    gated = get_peft_model(build_tiny_model("vit_cls"), A.SCLConfig(layer=1, skip_source="features"))
    assert _skip_grad_to_block(gated) == 0
    torch.optim.SGD([p for p in gated.parameters() if p.requires_grad], lr=0.5).step()
    assert _skip_grad_to_block(gated) > 0


def test_scl_post_norm_is_refused_where_the_classifier_skips_the_final_norm():
    with pytest.raises(ValueError, match="pre_norm"):
        get_peft_model(build_tiny_model("clip_cls"), A.SCLConfig(layer=1, position="post_norm"))
    # CLIP's bare vision tower: the post-norm feeds the pooled output, so it is accepted
    get_peft_model(build_tiny_model("clip_vision"), A.SCLConfig(layer=1, position="post_norm"))
