"""Registration of the hf-nc methods with PEFT: the one place that touches PEFT's registries.

``peft.register_peft_method`` only accepts names of PEFT's closed ``PeftType`` enum, so we fill
PEFT's three lookup tables directly, with plain-string keys (``PeftType`` is a ``str`` enum, so
string keys hash and compare like its members). What each table is needed for (peft 0.21.2):

* ``PEFT_TYPE_TO_CONFIG_MAPPING``: ``PeftConfig.from_pretrained`` / ``from_peft_type`` and
  ``PeftModel.from_pretrained`` look up the config class by the ``peft_type`` string stored in
  ``adapter_config.json``;
* ``PEFT_TYPE_TO_TUNER_MAPPING``: ``PeftModel`` builds the tuner, and
  ``get_peft_model_state_dict`` / ``set_peft_model_state_dict`` dispatch key selection,
  renaming and load remapping to the tuner class;
* ``PEFT_TYPE_TO_PREFIX_MAPPING``: ``get_peft_model`` warns on adapter names inside the prefix,
  injection from a bare state dict (``low_cpu_mem_usage``) finds module names by the prefix,
  and transformers-v5 weight conversion collects adapter prefixes.

``tests/test_adapters_registration.py`` exercises each of these paths, so a PEFT release that
changes them fails loudly. Tested PEFT range: ``>=0.21.2,<0.22``.
"""

from __future__ import annotations

from peft.mapping import PEFT_TYPE_TO_CONFIG_MAPPING, PEFT_TYPE_TO_PREFIX_MAPPING, PEFT_TYPE_TO_TUNER_MAPPING

from .head_ft import HeadFTConfig, HeadFTModel
from .layer_ft import LayerFTConfig, LayerFTModel
from .scl import SCLConfig, SCLModel

#: peft_type -> (config class, tuner class)
METHODS = {
    LayerFTConfig.PEFT_TYPE: (LayerFTConfig, LayerFTModel),
    SCLConfig.PEFT_TYPE: (SCLConfig, SCLModel),
    HeadFTConfig.PEFT_TYPE: (HeadFTConfig, HeadFTModel),
}

TESTED_PEFT = ">=0.21.2,<0.22"


def register_methods() -> None:
    """Registers the hf-nc methods with PEFT (idempotent).

    Raises:
        RuntimeError: If another class already owns one of our names or prefixes.
    """
    for peft_type, (config_cls, tuner_cls) in METHODS.items():
        prefix = tuner_cls.prefix
        owners = {
            "config": PEFT_TYPE_TO_CONFIG_MAPPING.get(peft_type, config_cls),
            "tuner": PEFT_TYPE_TO_TUNER_MAPPING.get(peft_type, tuner_cls),
        }
        if owners["config"] is not config_cls and owners["config"].__qualname__ != config_cls.__qualname__:
            raise RuntimeError(f"PEFT type {peft_type!r} is already registered to {owners['config']}")
        clash = [k for k, v in PEFT_TYPE_TO_PREFIX_MAPPING.items() if v == prefix and str(k) != peft_type]
        if clash:
            raise RuntimeError(f"PEFT prefix {prefix!r} of {peft_type} is already used by {clash}")
        PEFT_TYPE_TO_CONFIG_MAPPING[peft_type] = config_cls
        PEFT_TYPE_TO_TUNER_MAPPING[peft_type] = tuner_cls
        PEFT_TYPE_TO_PREFIX_MAPPING[peft_type] = prefix


def is_registered() -> bool:
    """Whether PEFT's tables currently map all hf-nc methods to our classes."""
    return all(
        PEFT_TYPE_TO_CONFIG_MAPPING.get(t) is c
        and PEFT_TYPE_TO_TUNER_MAPPING.get(t) is m
        and PEFT_TYPE_TO_PREFIX_MAPPING.get(t) == m.prefix
        for t, (c, m) in METHODS.items()
    )


register_methods()
