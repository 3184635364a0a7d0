"""Fails loudly if a PEFT release changes how our string-keyed registration is found."""

from __future__ import annotations

import sys
from pathlib import Path

import json

import peft
import pytest
import torch
from packaging.version import Version
from peft import PeftConfig, PeftModel, get_peft_model, get_peft_model_state_dict, set_peft_model_state_dict
from peft.mapping import PEFT_TYPE_TO_CONFIG_MAPPING, PEFT_TYPE_TO_PREFIX_MAPPING, PEFT_TYPE_TO_TUNER_MAPPING, get_peft_config

import hf_nc.adapters as A
from hf_nc.adapters.registration import METHODS, TESTED_PEFT
from tiny_models import build_tiny_model, tiny_pixels
sys.path.insert(0, str(Path(__file__).parent / "scripts"))
from adapter_cases import METHOD_CONFIGS, first_output, perturb_trainables  # noqa: E402


def test_peft_version_is_in_the_tested_range():
    low, high = (Version(s.strip(">=<")) for s in TESTED_PEFT.split(","))
    assert low <= Version(peft.__version__) < high, (
        f"peft {peft.__version__} is outside the range hf-nc's registration was tested with ({TESTED_PEFT}); "
        "run tests/test_adapters*.py and widen the pin if they pass"
    )


def test_registered_in_all_three_tables():
    assert A.is_registered()
    for peft_type, (config_cls, tuner_cls) in METHODS.items():
        assert PEFT_TYPE_TO_CONFIG_MAPPING[peft_type] is config_cls
        assert PEFT_TYPE_TO_TUNER_MAPPING[peft_type] is tuner_cls
        assert PEFT_TYPE_TO_PREFIX_MAPPING[peft_type] == tuner_cls.prefix
    A.register_methods()  # idempotent
    assert A.is_registered()


@pytest.mark.parametrize("method", list(METHOD_CONFIGS))
def test_peft_finds_config_and_tuner_by_the_stored_peft_type(method, tmp_path):
    config = METHOD_CONFIGS[method]()
    peft_model = get_peft_model(build_tiny_model("vit_cls"), config)
    perturb_trainables(peft_model)
    peft_model.save_pretrained(tmp_path)
    stored = json.loads((tmp_path / "adapter_config.json").read_text())
    assert stored["peft_type"] == config.peft_type == config.peft_type.value
    # PeftConfig.from_pretrained / from_peft_type / get_peft_config resolve our class from the string
    assert type(PeftConfig.from_pretrained(tmp_path)) is type(config)
    assert type(get_peft_config(stored)) is type(config)
    # get/set_peft_model_state_dict dispatch to our tuner (key stripping and load remapping)
    state = get_peft_model_state_dict(peft_model)
    assert state and all(".default" not in k for k in state)
    fresh = get_peft_model(build_tiny_model("vit_cls"), METHOD_CONFIGS[method]())
    result = set_peft_model_state_dict(fresh, state)
    assert not result.unexpected_keys
    with torch.no_grad():
        a = first_output(peft_model(pixel_values=tiny_pixels()))
        b = first_output(fresh(pixel_values=tiny_pixels()))
    assert torch.equal(a, b)
    # and the PeftModel loader
    loaded = PeftModel.from_pretrained(build_tiny_model("vit_cls"), tmp_path, is_trainable=True)
    assert any(p.requires_grad for p in loaded.parameters())
