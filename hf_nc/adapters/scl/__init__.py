from .config import SCLConfig
from .layer import SCLSinkLayer, SCLSourceLayer
from .model import SCLModel

__all__ = ["SCLConfig", "SCLModel", "SCLSinkLayer", "SCLSourceLayer"]
