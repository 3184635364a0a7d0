"""Adversarial tests of the hf-nc adapters (issue 9): what a user does that once went silently wrong.

Each section is one attack: a bad input must fail with a clear error naming the problem, and a
valid but unusual setup must give the same numbers as an independent reference (never a silently
wrong one). To add an attack, add a test here with the reference it is checked against.
"""

from __future__ import annotations

import sys
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from peft import LoraConfig, get_peft_model

from hf_nc.backbones import resolve_backbone
from tiny_models import TINY_MODELS, build_tiny_model, tiny_pixels

sys.path.insert(0, str(Path(__file__).parent / "scripts"))
from adapter_cases import METHOD_CONFIGS, METHODS, first_output, perturb_trainables  # noqa: E402

MODELS = list(TINY_MODELS)


# -- gradient checkpointing (issue 9 item 2) -------------------------------------------------------

# (use_reentrant, when checkpointing is enabled, whether enable_input_require_grads() is called)
CHECKPOINTING = {
    "reentrant-before": (True, "before", False),
    "reentrant-after-input-grads": (True, "after", True),
    "non-reentrant-before": (False, "before", False),
    "non-reentrant-after-input-grads": (False, "after", True),
}


def _enable_checkpointing(model, reentrant: bool) -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)  # gradient_checkpointing_enable: the name users call
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": reentrant})


def _grads(model_name: str, config_fn, mode: str | None) -> dict[str, torch.Tensor | None]:
    """Gradients of every trainable parameter after one backward pass, with checkpointing `mode`."""
    base = build_tiny_model(model_name)
    if mode is not None and CHECKPOINTING[mode][1] == "before":
        _enable_checkpointing(base, CHECKPOINTING[mode][0])
    peft_model = get_peft_model(base, config_fn())
    perturb_trainables(peft_model)  # so that SCL's delta skip is non-zero and its scale gets gradient too
    if mode is not None and CHECKPOINTING[mode][1] == "after":
        _enable_checkpointing(peft_model, CHECKPOINTING[mode][0])
        if CHECKPOINTING[mode][2]:
            peft_model.enable_input_require_grads()
    peft_model.train()
    first_output(peft_model(pixel_values=tiny_pixels())).pow(2).mean().backward()
    return {n: p.grad for n, p in peft_model.named_parameters() if p.requires_grad}


@pytest.mark.parametrize("model_name", MODELS)
@pytest.mark.parametrize("method", METHODS)
def test_gradient_checkpointing_trains_every_tuned_parameter(model_name, method):
    """Reentrant checkpointing used to leave every tuned parameter without gradient (only the head
    trained): the frozen-prefix cut handed the checkpointed block an input that did not require grad."""
    reference = _grads(model_name, METHOD_CONFIGS[method], None)
    assert reference and all(g is not None for g in reference.values())
    assert any(("hfnc_" in n) for n in reference)
    for mode in CHECKPOINTING:
        grads = _grads(model_name, METHOD_CONFIGS[method], mode)
        assert set(grads) == set(reference), mode
        missing = [n for n, g in grads.items() if g is None]
        assert not missing, f"{mode}: no gradient for {missing[:3]} ({len(missing)} of {len(grads)})"
        worst = max((grads[n] - reference[n]).abs().max().item() for n in reference)
        assert worst < 1e-5, f"{mode}: gradients differ from the run without checkpointing by {worst}"


@pytest.mark.parametrize("reentrant", [True, False])
def test_gradient_checkpointing_keeps_the_frozen_prefix_cut(reentrant):
    base = build_tiny_model("vit_cls")
    _enable_checkpointing(base, reentrant)
    peft_model = get_peft_model(base, METHOD_CONFIGS["layer_ft"]())  # PEFT also enables input grads here
    peft_model.train()
    backbone = resolve_backbone(peft_model)
    seen = {}
    hooks = [backbone.blocks[i].register_forward_hook(lambda m, a, o, i=i: seen.__setitem__(i, o))
             for i in range(backbone.num_layers)]
    cut = {}
    hooks.append(backbone.blocks[-1].register_forward_pre_hook(lambda m, a: cut.__setitem__("in", a[0]),
                                                               prepend=False))
    first_output(peft_model(pixel_values=tiny_pixels())).pow(2).mean().backward()
    for h in hooks:
        h.remove()
    assert cut["in"].grad_fn is None, "the tuned block's input is cut from the frozen prefix's graph"
    # PEFT's enable_input_require_grads makes the prefix outputs require grad; the cut stops the graph at them
    # and the prefix never runs a backward replay (its parameters stay gradient-free).
    assert all(p.grad is None for n, p in peft_model.named_parameters() if "layers.0." in n)


def test_lora_control_trains_under_reentrant_checkpointing():
    """The control the bug report used: LoRA in the same setup trains."""
    base = build_tiny_model("vit_cls")
    _enable_checkpointing(base, True)
    peft_model = get_peft_model(base, LoraConfig(target_modules=["q_proj", "v_proj"], init_lora_weights=False))
    peft_model.train()
    first_output(peft_model(pixel_values=tiny_pixels())).pow(2).mean().backward()
    lora = {n: p.grad for n, p in peft_model.named_parameters() if "lora_" in n}
    assert lora and all(g is not None and g.abs().sum() > 0 for g in lora.values())


# -- several adapters, merge (issue 9 item 12) -----------------------------------------------------


def _perturb_adapter(peft_model, name: str, seed: int) -> None:
    """Moves adapter `name`'s own tensors (active or not) and its head copy."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for n, p in sorted(peft_model.named_parameters()):
            if f".{name}." in n or n.endswith(f".{name}"):
                p.add_(0.3 * torch.randn(p.shape, generator=g, dtype=p.dtype))


@pytest.mark.parametrize("active", ["default", "second"])
@pytest.mark.parametrize("part", ["block", "attention"])
def test_merge_with_two_layer_ft_adapters_on_different_blocks(active, part):
    """merge_and_unload() with the second adapter active raised KeyError: the first adapter's layer
    tried to merge an adapter it does not hold."""
    import hf_nc.adapters as A

    base = build_tiny_model("vit_cls")
    original = {k: v.clone() for k, v in base.state_dict().items()}
    peft_model = get_peft_model(base, A.LayerFTConfig(layers=[0], part=part))
    peft_model.add_adapter("second", A.LayerFTConfig(layers=[2], part=part))
    _perturb_adapter(peft_model, "default", seed=1)
    _perturb_adapter(peft_model, "second", seed=2)
    x = tiny_pixels()
    outputs = {}
    with torch.no_grad():
        for name in ("default", "second"):
            peft_model.set_adapter(name)
            outputs[name] = first_output(peft_model(pixel_values=x))
    assert (outputs["default"] - outputs["second"]).abs().max() > 1e-3
    peft_model.set_adapter(active)
    merged = peft_model.merge_and_unload()
    assert not any("hfnc_" in n for n, _ in merged.named_modules())
    with torch.no_grad():
        assert (first_output(merged(pixel_values=x)) - outputs[active]).abs().max() < 1e-5
    # the block of the inactive adapter is the untouched base block
    other_block = "vit.layers.2." if active == "default" else "vit.layers.0."
    state = merged.state_dict()
    assert all(torch.equal(state[k], original[k]) for k in original if k.startswith(other_block))


def test_merge_of_two_layer_ft_adapters_on_one_block_is_refused():
    import hf_nc.adapters as A

    peft_model = get_peft_model(build_tiny_model("vit_cls"), A.LayerFTConfig(layers=[1]))
    peft_model.add_adapter("second", A.LayerFTConfig(layers=[1]))
    with pytest.raises(ValueError, match="one adapter at a time"):
        peft_model.merge_and_unload(adapter_names=["default", "second"])


def test_a_second_adapter_on_a_lower_block_trains_and_keeps_the_cut():
    """The frozen-prefix cut sat at the first adapter's block only: a second adapter tuning a lower block
    (added with add_adapter / load_adapter) got no gradient at all once active."""
    import hf_nc.adapters as A

    peft_model = get_peft_model(build_tiny_model("vit_cls"), A.LayerFTConfig(layers=[2]))
    peft_model.add_adapter("second", A.LayerFTConfig(layers=[0]))
    peft_model.set_adapter("second")
    peft_model.train()
    first_output(peft_model(pixel_values=tiny_pixels())).pow(2).mean().backward()
    got = {n.replace(".second", ""): p.grad for n, p in peft_model.named_parameters() if p.requires_grad}
    # reference: the same adapter alone (copies and head start equal to the base in both)
    alone = get_peft_model(build_tiny_model("vit_cls"), A.LayerFTConfig(layers=[0]))
    alone.train()
    first_output(alone(pixel_values=tiny_pixels())).pow(2).mean().backward()
    want = {n.replace(".default", ""): p.grad for n, p in alone.named_parameters() if p.requires_grad}
    assert set(got) == set(want)
    assert all(got[n] is not None and (got[n] - want[n]).abs().max() < 1e-6 for n in want)

    # back to the first adapter: the cut moves up to its block
    peft_model.set_adapter("default")
    backbone = resolve_backbone(peft_model)
    seen = {}
    hook = backbone.blocks[2].register_forward_pre_hook(lambda m, a: seen.__setitem__("in", a[0]))
    x = tiny_pixels().requires_grad_(True)
    first_output(peft_model(pixel_values=x)).sum().backward()
    hook.remove()
    assert seen["in"].grad_fn is None and x.grad is None


# -- partial, empty and corrupt adapter files (issue 9 item 13) -------------------------------------


def _corrupt(kind: str, path: Path) -> None:
    from safetensors.torch import load_file, save_file

    weights = path / "adapter_model.safetensors"
    if kind == "no-classifier":
        save_file({k: v for k, v in load_file(weights).items() if "classifier" not in k}, weights)
    elif kind == "empty-safetensors":
        save_file({}, weights)
    elif kind == "zero-bytes":
        weights.write_bytes(b"")
    elif kind == "truncated":
        blob = weights.read_bytes()
        weights.write_bytes(blob[: len(blob) // 2])
    elif kind == "garbage":
        weights.write_bytes(b"\x00not a safetensors file" * 10)


BAD_FILES = {
    "no-classifier": "refusing a partial load",
    "empty-safetensors": "refusing a partial load",
    "zero-bytes": "not a valid safetensors file",
    "truncated": "not a valid safetensors file",
    "garbage": "not a valid safetensors file",
}


@pytest.mark.parametrize("method", ["layer_ft", "scl", "head_ft"])
@pytest.mark.parametrize("kind", list(BAD_FILES))
@pytest.mark.parametrize("how", ["PeftModel.from_pretrained", "load_adapter"])
def test_bad_adapter_files_fail_with_a_clear_error_naming_the_file(method, kind, how, tmp_path):
    """A file lacking the classifier's tensors (or holding none) raised a bare KeyError from PEFT; a truncated
    one an error that named no file."""
    from peft import PeftModel

    peft_model = get_peft_model(build_tiny_model("vit_cls"), METHOD_CONFIGS[method]())
    peft_model.save_pretrained(tmp_path)
    _corrupt(kind, tmp_path)
    with pytest.raises(ValueError, match=BAD_FILES[kind]) as info:
        if how == "PeftModel.from_pretrained":
            PeftModel.from_pretrained(build_tiny_model("vit_cls"), tmp_path)
        else:
            peft_model.load_adapter(tmp_path, adapter_name="other")
    assert str(tmp_path / "adapter_model.safetensors") in str(info.value)
    if kind == "no-classifier":
        assert "classifier.weight" in str(info.value)


def test_bad_file_check_does_not_reject_a_complete_adapter(tmp_path):
    from peft import PeftModel

    peft_model = get_peft_model(build_tiny_model("vit_cls"), METHOD_CONFIGS["head_ft"]())
    perturb_trainables(peft_model)
    peft_model.save_pretrained(tmp_path)
    with torch.no_grad():
        want = first_output(peft_model(pixel_values=tiny_pixels()))
        loaded = PeftModel.from_pretrained(build_tiny_model("vit_cls"), tmp_path)
        assert (first_output(loaded(pixel_values=tiny_pixels())) - want).abs().max() < 1e-6
        loaded.load_adapter(tmp_path, adapter_name="again")
        loaded.set_adapter("again")
        assert (first_output(loaded(pixel_values=tiny_pixels())) - want).abs().max() < 1e-6


# -- config values that are not integers (issue 9 item 19) -----------------------------------------

NOT_INTEGERS = {
    "layers string": (lambda A: A.LayerFTConfig(layers="12"), "LayerFTConfig.layers"),
    "layers float": (lambda A: A.LayerFTConfig(layers=[1.7]), "LayerFTConfig.layers"),
    "layers integral float": (lambda A: A.LayerFTConfig(layers=[2.0]), "LayerFTConfig.layers"),
    "layers bool": (lambda A: A.LayerFTConfig(layers=[True]), "LayerFTConfig.layers"),
    "layers scalar bool": (lambda A: A.LayerFTConfig(layers=False), "LayerFTConfig.layers"),
    "layers numpy bool": (lambda A: A.LayerFTConfig(layers=[np.bool_(True)]), "LayerFTConfig.layers"),
    "layers digit string in list": (lambda A: A.LayerFTConfig(layers=["1"]), "LayerFTConfig.layers"),
    "layers None inside": (lambda A: A.LayerFTConfig(layers=[None]), "LayerFTConfig.layers"),
    "scl float": (lambda A: A.SCLConfig(layer=1.5), "SCLConfig.layer"),
    "scl bool": (lambda A: A.SCLConfig(layer=True), "SCLConfig.layer"),
    "scl string": (lambda A: A.SCLConfig(layer="1"), "SCLConfig.layer"),
    "heads float head": (lambda A: A.HeadFTConfig(heads={0: [1.9]}), r"HeadFTConfig.heads\[0\]"),
    "heads bool head": (lambda A: A.HeadFTConfig(heads={0: [True]}), r"HeadFTConfig.heads\[0\]"),
    "heads scalar bool": (lambda A: A.HeadFTConfig(heads={0: True}), r"HeadFTConfig.heads\[0\]"),
    "heads string head list": (lambda A: A.HeadFTConfig(heads={0: "12"}), r"HeadFTConfig.heads\[0\]"),
    "heads float key": (lambda A: A.HeadFTConfig(heads={1.5: [0]}), "HeadFTConfig.heads keys"),
    "heads bool key": (lambda A: A.HeadFTConfig(heads={True: [0]}), "HeadFTConfig.heads keys"),
    "heads non-numeric key": (lambda A: A.HeadFTConfig(heads={"last": [0]}), "HeadFTConfig.heads keys"),
    "heads float-string key": (lambda A: A.HeadFTConfig(heads={"1.5": [0]}), "HeadFTConfig.heads keys"),
    "heads not a dict": (lambda A: A.HeadFTConfig(heads=[0, 1]), "HeadFTConfig.heads"),
}


@pytest.mark.parametrize("case", list(NOT_INTEGERS))
def test_non_integer_indices_are_rejected_naming_the_field(case):
    """They were silently coerced: layers="12" -> [1, 2], [1.7] -> [1], [True] -> [1], heads={0: [1.9]} -> [1]."""
    import hf_nc.adapters as A

    build, field_name = NOT_INTEGERS[case]
    with pytest.raises(ValueError, match=field_name):
        build(A)


def test_real_integers_numpy_integers_and_json_round_trips_are_accepted(tmp_path):
    import hf_nc.adapters as A
    from peft import PeftConfig

    assert A.LayerFTConfig(layers=np.int64(-1)).layers == [-1]
    assert A.LayerFTConfig(layers=(0, np.int32(2))).layers == [0, 2]
    assert A.LayerFTConfig(layers=range(2)).layers == [0, 1]
    assert A.SCLConfig(layer=np.int64(1)).layer == 1 and type(A.SCLConfig(layer=np.int64(1)).layer) is int
    assert A.HeadFTConfig(heads={np.int64(0): [np.int16(1)], "-1": "all", " 2": 3}).heads == {0: [1], -1: "all", 2: [3]}
    for config in (A.LayerFTConfig(layers=[0, -1], part="mlp"), A.SCLConfig(layer=-2), A.HeadFTConfig(heads={-1: [0, 2]})):
        config.save_pretrained(tmp_path / config.peft_type)
        loaded = PeftConfig.from_pretrained(tmp_path / config.peft_type)
        assert type(loaded) is type(config) and loaded.to_dict() == config.to_dict()


def test_copies_of_an_adapted_model_keep_their_own_prefix_cut():
    """The cut hook refers to its tuner: a deep copy must cut by the copy's active adapter, and copying one
    block alone must not drag the whole model along."""
    import copy

    import hf_nc.adapters as A

    peft_model = get_peft_model(build_tiny_model("vit_cls"), A.LayerFTConfig(layers=[2]))
    peft_model.add_adapter("low", A.LayerFTConfig(layers=[0]))
    twin = copy.deepcopy(peft_model)
    twin.set_adapter("low")  # only the copy switches
    hooks = [h for b in resolve_backbone(twin).blocks for h in b._forward_pre_hooks.values()
             if type(h).__name__ == "_PrefixCut"]
    assert hooks and all(h.tuner is twin.base_model for h in hooks)
    assert twin.base_model._active_first_block() == 0 and peft_model.base_model._active_first_block() == 2
    block = copy.deepcopy(resolve_backbone(peft_model).blocks[2])
    assert all(h.tuner is peft_model.base_model for h in block._forward_pre_hooks.values()
               if type(h).__name__ == "_PrefixCut")
    twin.train()
    first_output(twin(pixel_values=tiny_pixels())).pow(2).mean().backward()
    assert all(p.grad is not None for n, p in twin.named_parameters() if p.requires_grad and ".low." in n)


@pytest.mark.parametrize("method", ["layer_ft", "scl", "head_ft"])
def test_trainer_with_reentrant_gradient_checkpointing_moves_every_tuned_parameter(method, tmp_path):
    """The way users switch it on: TrainingArguments(gradient_checkpointing=True, ... use_reentrant=True)."""
    from transformers import Trainer, TrainingArguments

    peft_model = get_peft_model(build_tiny_model("vit_cls"), METHOD_CONFIGS[method]())
    perturb_trainables(peft_model, scale=0.05)  # SCL's delta skip: non-zero from the first step
    before = {n: p.detach().clone() for n, p in peft_model.named_parameters() if p.requires_grad}
    g = torch.Generator().manual_seed(0)
    data = [{"pixel_values": x, "labels": int(y)}
            for x, y in zip(tiny_pixels(8, seed=2), torch.randint(0, 3, (8,), generator=g))]
    args = TrainingArguments(output_dir=str(tmp_path), max_steps=2, per_device_train_batch_size=4, learning_rate=0.05,
                             gradient_checkpointing=True, gradient_checkpointing_kwargs={"use_reentrant": True},
                             report_to=[], save_strategy="no", use_cpu=True, disable_tqdm=True, logging_strategy="no")
    Trainer(model=peft_model, args=args, train_dataset=data).train()
    assert any(getattr(m, "gradient_checkpointing", False) for m in peft_model.modules())
    # (the key projection's bias gets no gradient: softmax ignores a shift common to all keys)
    unchanged = [n for n, p in peft_model.named_parameters() if n in before and torch.equal(p, before[n])]
    assert all("k_proj" in n for n in unchanged), unchanged
