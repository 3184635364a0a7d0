from .config import HeadFTConfig
from .layer import HeadFTLayer
from .model import HeadFTModel

__all__ = ["HeadFTConfig", "HeadFTLayer", "HeadFTModel"]
