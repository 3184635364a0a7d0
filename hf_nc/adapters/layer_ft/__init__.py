from .config import LayerFTConfig
from .layer import LayerFTLayer
from .model import LayerFTModel

__all__ = ["LayerFTConfig", "LayerFTLayer", "LayerFTModel"]
