"""Image processors for grayscale (1-channel) models, usable in ``pipeline("image-classification")``.

transformers' ``pipeline`` turns every PIL image into RGB (``image_utils.load_image``) before
calling the image processor, so a 1-channel model such as the built-in
``hf_nc.checkpoints.DEFAULT_MODEL`` ("hf-nc/tiny-vit-fmnist") cannot be fed by a plain
``ViTImageProcessorPil`` with a 1-element ``image_mean`` ("mean must have 3 elements").
:class:`GrayscaleViTImageProcessor` converts colour input to one channel with PIL's ``"L"``
luma formula (ITU-R 601-2: ``L = R * 299/1000 + G * 587/1000 + B * 114/1000``) and passes
1-channel input through unchanged; everything else (resize, rescale, normalise) is
``ViTImageProcessorPil``'s. A gray image that ``pipeline`` made RGB (R = G = B) comes back
exactly as it was, so ``pipeline()`` sees the pixels that hf-nc's evaluation transform feeds the
model.

``import hf_nc`` registers the class with ``AutoImageProcessor`` (for the PIL and the
torchvision backend names alike, so the choice of backend never matters and torchvision is
never needed); its name is saved as ``image_processor_type`` in ``preprocessor_config.json``.
Without ``import hf_nc``, ``AutoImageProcessor.from_pretrained`` / ``pipeline(model=folder)``
on such a folder raise transformers' ``ValueError: Unrecognized image processor in <folder>``.

>>> import hf_nc
>>> from transformers import pipeline
>>> classify = pipeline("image-classification", model=hf_nc.DEFAULT_MODEL)
>>> classify(pil_image)  # any mode: RGB, L, RGBA, P, 16-bit, ...
"""

from __future__ import annotations

from typing import Any

import numpy as np
from PIL import Image
from transformers import AutoImageProcessor, PreTrainedConfig
from transformers import ViTImageProcessorPil as _ViTPil  # the PIL backend: ViTImageProcessor wants torchvision

from .data.transforms import to_8bit

# PIL's RGB -> L conversion (Pillow Convert.c, L24): luma weights in 16-bit fixed point, rounded.
_L24_WEIGHTS = (19595, 38470, 7471)
_LUMA_WEIGHTS = (0.299, 0.587, 0.114)


def rgb_to_luma(image: np.ndarray) -> np.ndarray:
    """Channels-first RGB(A) pixels as one luma channel, as PIL's ``convert("L")`` computes it.

    ``uint8`` input gives PIL's exact integers (its fixed-point formula); any other dtype (float
    pixels in 0..1 or 0..255, wider ints) the real-valued ``0.299 R + 0.587 G + 0.114 B`` as
    float32. An alpha channel is ignored, as PIL does.

    Args:
        image: a ``(C, H, W)`` array with C = 1, 3 or 4.

    Returns:
        A ``(1, H, W)`` array (``image`` itself when C = 1).

    Raises:
        ValueError: if ``image`` is not 3-d or has another number of channels.
    """
    if image.ndim != 3 or image.shape[0] not in (1, 3, 4):
        raise ValueError(f"expected a channels-first image with 1, 3 or 4 channels, got shape {tuple(image.shape)}")
    if image.shape[0] == 1:
        return image
    r, g, b = image[0], image[1], image[2]
    if image.dtype == np.uint8:
        wr, wg, wb = _L24_WEIGHTS
        luma = (r.astype(np.uint32) * wr + g.astype(np.uint32) * wg + b.astype(np.uint32) * wb + 0x8000) >> 16
        return luma.astype(np.uint8)[None]
    wr, wg, wb = _LUMA_WEIGHTS
    luma = r.astype(np.float64) * wr + g.astype(np.float64) * wg + b.astype(np.float64) * wb
    return luma.astype(np.float32)[None]


class GrayscaleViTImageProcessor(_ViTPil):
    """``ViTImageProcessorPil`` for 1-channel models: any input becomes one channel first.

    A PIL image is scaled to 8 bits when it has more (``hf_nc.data.transforms.to_8bit``: 16-bit
    and float images are scaled, not clipped) and converted with ``Image.convert("L")`` unless it
    is ``"L"`` already; a NumPy array or torch tensor with 3 or 4 channels goes through
    :func:`rgb_to_luma` (PIL's formula), one with 1 channel is left as is. ``do_convert_rgb`` is
    ignored: the output always has one channel. ``image_mean`` / ``image_std`` have one value.

    Args:
        **kwargs: those of ``ViTImageProcessorPil`` (``size``, ``resample``, ``do_rescale``,
            ``rescale_factor``, ``do_normalize``, ``image_mean``, ``image_std``, ...).

    Raises:
        ValueError: if ``image_mean`` or ``image_std`` has more than one value.
    """

    image_mean = [0.5]
    image_std = [0.5]

    def __init__(self, **kwargs: Any):
        super().__init__(**kwargs)
        for name in ("image_mean", "image_std"):
            value = getattr(self, name, None)
            if value is not None and not isinstance(value, (int, float)) and len(value) != 1:
                raise ValueError(
                    f"{type(self).__name__} makes 1-channel pixels, so {name} needs one value, got {list(value)}"
                )

    def process_image(self, image, do_convert_rgb: bool | None = None, input_data_format=None, **kwargs) -> np.ndarray:
        """One image as a ``(1, H, W)`` array (before resize / rescale / normalise)."""
        if isinstance(image, Image.Image):
            image = to_8bit(image)
            if image.mode != "L":
                image = image.convert("L")  # PIL's own luma, exactly what hf-nc's transforms do
            return super().process_image(image, do_convert_rgb=False, input_data_format=input_data_format, **kwargs)
        array = super().process_image(image, do_convert_rgb=False, input_data_format=input_data_format, **kwargs)
        return rgb_to_luma(array)


def vit_image_processor(num_channels: int = 3, **kwargs: Any):
    """The ViT image processor (PIL backend) for a model with ``num_channels`` input channels.

    Args:
        num_channels: 1 gives a :class:`GrayscaleViTImageProcessor` (works in ``pipeline()``,
            which feeds RGB), any other number a ``ViTImageProcessorPil``.
        **kwargs: passed to the processor (``size``, ``image_mean``, ...).

    Returns:
        The image processor.
    """
    return GrayscaleViTImageProcessor(**kwargs) if num_channels == 1 else _ViTPil(**kwargs)


class _GrayscaleProcessorKey(PreTrainedConfig):
    """Registry key only: ``AutoImageProcessor.register`` maps a config class to processors, and
    registering under ``ViTConfig`` would replace every ViT's own processor. transformers finds
    the class through the registry by the name saved in ``preprocessor_config.json``."""

    model_type = "hf_nc_grayscale_vit"


def register() -> None:
    """Makes ``AutoImageProcessor`` (and so ``pipeline()``) load :class:`GrayscaleViTImageProcessor`.

    Called on ``import hf_nc``; registering again is a no-op.
    """
    AutoImageProcessor.register(
        _GrayscaleProcessorKey,
        # both backend names: transformers asks for "torchvision" when it is installed
        image_processor_classes={"pil": GrayscaleViTImageProcessor, "torchvision": GrayscaleViTImageProcessor},
        exist_ok=True,
    )


register()

__all__ = ["GrayscaleViTImageProcessor", "register", "rgb_to_luma", "vit_image_processor"]
