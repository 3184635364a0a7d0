"""PEFT methods of hf-nc: Layer FT, SCL FT and head FT (registered with PEFT on import).

>>> import hf_nc.adapters  # or `import hf_nc`
>>> from peft import get_peft_model, PeftModel
>>> peft_model = get_peft_model(model, hf_nc.adapters.SCLConfig(layer=-3))
"""

from .head_ft import HeadFTConfig, HeadFTLayer, HeadFTModel
from .layer_ft import LayerFTConfig, LayerFTLayer, LayerFTModel
from .registration import METHODS, is_registered, register_methods
from .scl import SCLConfig, SCLModel, SCLSinkLayer, SCLSourceLayer

__all__ = [
    "HeadFTConfig",
    "HeadFTLayer",
    "HeadFTModel",
    "LayerFTConfig",
    "LayerFTLayer",
    "LayerFTModel",
    "METHODS",
    "SCLConfig",
    "SCLModel",
    "SCLSinkLayer",
    "SCLSourceLayer",
    "is_registered",
    "register_methods",
]
