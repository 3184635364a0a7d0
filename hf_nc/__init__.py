"""hf-nc: neural-collapse-guided transfer learning of vision transformers.

Importing ``hf_nc`` registers its PEFT methods (Layer FT, SCL FT, head FT), so that
``peft.PeftModel.from_pretrained`` can load their adapters, and its grayscale image processor
(:class:`hf_nc.processing.GrayscaleViTImageProcessor`), so that ``pipeline("image-classification")``
loads 1-channel models such as the built-in one.
"""

from .adapters import HeadFTConfig, LayerFTConfig, SCLConfig  # noqa: F401  (registers the PEFT methods)
from .auto import AutoPeftModelForImageClassification
from .checkpoints import DEFAULT_MODEL, DEFAULT_MODEL_NAME
from .data import DataNotFoundError, build_transforms, collate_fn, load_image_dataset
from .features import LayerFeatures, extract_features
from .layer_nc import layer_nc, layer_nc_stats
from .metrics import NCStats, nc_metrics
from .prefix_cache import PrefixCache
from .probe import linear_probe
from .processing import GrayscaleViTImageProcessor  # registers it with AutoImageProcessor (1-channel models in pipeline())
from .selection import LayerSuggestion, RankingResult, choose_block, rank_models, suggest_layer
from .trainer import NCTrainer

__version__ = "0.1.0"

__all__ = [
    "AutoPeftModelForImageClassification",
    "build_transforms",
    "choose_block",
    "collate_fn",
    "DataNotFoundError",
    "DEFAULT_MODEL",
    "DEFAULT_MODEL_NAME",
    "extract_features",
    "GrayscaleViTImageProcessor",
    "HeadFTConfig",
    "layer_nc",
    "layer_nc_stats",
    "LayerFeatures",
    "LayerFTConfig",
    "LayerSuggestion",
    "linear_probe",
    "load_image_dataset",
    "nc_metrics",
    "NCStats",
    "NCTrainer",
    "PrefixCache",
    "rank_models",
    "RankingResult",
    "SCLConfig",
    "suggest_layer",
]
