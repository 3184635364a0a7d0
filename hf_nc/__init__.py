"""hf-nc: neural-collapse-guided transfer learning of vision transformers."""

__version__ = "0.1.0"
