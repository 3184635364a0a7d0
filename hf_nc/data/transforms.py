"""Image transforms matched to a model (torch + PIL only: no torchvision), and a collate function.

``build_transforms(model_or_config_or_path, train)`` returns a callable for
``Dataset.with_transform`` that turns a batch of ``image``/``label`` into
``pixel_values`` (float tensors, C x H x W, normalised) and ``labels``.

Without augmentation (evaluation, and training with ``augment="none"``) the pixels come from
the model's own transformers image processor whenever one is known, so they equal what
``pipeline("image-classification")`` feeds the model; the hand-written resize / crop code
below is used only for the random-resized-crop augmentation and for models that have no
image processor (a bare config). Every image first goes through :func:`to_8bit`, which
scales 16-bit and float images into 0..255 (PIL's own ``convert`` clips them).
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np
import torch
from PIL import Image

AUGMENTATIONS = ("crop", "flip")

# Nominal full-scale value of PIL's high-bit-depth modes. "I;16*" is what Pillow opens a 16-bit
# grayscale PNG/TIFF as; "I" (32-bit int) is what older Pillow and several formats (PGM, TIFF)
# use for the same 16-bit data, so it is taken as 16-bit too; "F" (32-bit float) follows the
# float-image convention of numpy/matplotlib/scikit-image: 0.0 = black, 1.0 = white.
# (16-bit RGB PNGs need nothing: Pillow opens them as 8-bit "RGB", correctly scaled.)
HIGH_BIT_DEPTH_FULL_SCALE = {"I;16": 65535.0, "I;16B": 65535.0, "I;16L": 65535.0, "I;16N": 65535.0, "I": 65535.0, "F": 1.0}


def to_8bit(img: Image.Image) -> Image.Image:
    """A high-bit-depth PIL image scaled to an 8-bit ``"L"`` image; any other image unchanged.

    PIL's ``convert("L")`` / ``convert("RGB")`` clips a 16-bit value to 255 instead of scaling
    it, so a 16-bit PNG would become almost white. Here ``value * 255 / full_scale`` is rounded
    and clipped to 0..255, with full scale 65535 for the 16-bit modes (``I;16*`` and ``I``) and
    1.0 for float images (``F``); see :data:`HIGH_BIT_DEPTH_FULL_SCALE`.

    Args:
        img: any PIL image.

    Returns:
        An 8-bit grayscale image for modes ``I;16*``, ``I`` and ``F``, else ``img`` itself.
    """
    full_scale = HIGH_BIT_DEPTH_FULL_SCALE.get(img.mode)
    if full_scale is None:
        return img
    arr = np.asarray(img, dtype=np.float64) * (255.0 / full_scale)
    return Image.fromarray(np.clip(np.rint(np.nan_to_num(arr)), 0, 255).astype(np.uint8), mode="L")


#: Modes PIL cannot convert straight to L/RGB, and the mode to go through (La: premultiplied LA).
CONVERT_VIA = {"La": "LA", "LAB": "RGB"}


def convert_mode(img: Image.Image, mode: str) -> Image.Image:
    """``img.convert(mode)``, through an intermediate mode where PIL has no direct conversion
    (``La``, ``LAB``); any other failure is a ``ValueError`` naming the image's mode."""
    if img.mode == mode:
        return img
    via = CONVERT_VIA.get(img.mode)
    try:
        return (img.convert(via) if via and via != mode else img).convert(mode)
    except ValueError as e:
        raise ValueError(f"an image of PIL mode {img.mode!r} cannot be converted to {mode!r} ({e}): convert the images "
                         "to RGB or L before loading") from e


@dataclass(frozen=True)
class ImageSpec:
    """What a model expects: output size (h, w), channels, normalisation, and optional resize-then-crop."""

    size: tuple[int, int]
    num_channels: int = 3
    mean: tuple[float, ...] = (0.5,)
    std: tuple[float, ...] = (0.5,)
    rescale_factor: float = 1 / 255
    resample: int = Image.BILINEAR
    shortest_edge: int | None = None  # if set: resize the short side to this, then centre-crop to `size`
    # The transformers image processor these settings come from (None: a bare config). Without
    # augmentation it does the whole preprocessing, called with `processor_kwargs` (size overrides).
    processor: Any = field(default=None, compare=False, repr=False)
    processor_kwargs: tuple = field(default=(), compare=False)

    def channel_stats(self) -> tuple[torch.Tensor, torch.Tensor]:
        def fit(v):
            v = list(v)
            if len(v) == self.num_channels:
                return v
            if len(v) == 1:
                return v * self.num_channels
            if self.num_channels == 1:
                return [float(np.mean(v))]
            raise ValueError(f"{len(v)} normalisation values for {self.num_channels} channels")

        mean = torch.tensor(fit(self.mean), dtype=torch.float32).view(-1, 1, 1)
        std = torch.tensor(fit(self.std), dtype=torch.float32).view(-1, 1, 1)
        return mean, std


def _size_dict(v) -> dict | None:
    """A plain dict of the set fields of a size given as dict or as transformers' ``SizeDict``."""
    if isinstance(v, dict):
        return {k: x for k, x in v.items() if x is not None}
    keys = ("height", "width", "shortest_edge", "longest_edge")
    if any(hasattr(v, k) for k in keys):
        return {k: getattr(v, k) for k in keys if getattr(v, k, None) is not None}
    return None


def _pair(v) -> tuple[int, int]:
    if isinstance(v, int):
        return v, v
    v = _size_dict(v) or v
    if isinstance(v, dict):
        if "height" in v and "width" in v:
            return int(v["height"]), int(v["width"])
        if "shortest_edge" in v:
            return int(v["shortest_edge"]), int(v["shortest_edge"])
        raise ValueError(f"unsupported size {v}")
    a, b = v
    return int(a), int(b)


def _config_channels(config) -> int:
    for c in (config, getattr(config, "vision_config", None)):
        if c is not None and getattr(c, "num_channels", None):
            return int(c.num_channels)
    return 3


def spec_from_config(config) -> ImageSpec:
    """Size and channels from a model config; mean/std default to 0.5 (ViT's convention)."""
    vc = getattr(config, "vision_config", None) or config
    size = getattr(vc, "image_size", None)
    if size is None:
        raise ValueError(f"{type(config).__name__} has no image_size; pass an image processor or an ImageSpec")
    return ImageSpec(size=_pair(size), num_channels=_config_channels(config))


def spec_from_processor(processor, num_channels: int = 3) -> ImageSpec:
    """The resize / crop / rescale / normalise settings of a transformers image processor."""
    size = getattr(processor, "size", None)
    crop = getattr(processor, "crop_size", None) if getattr(processor, "do_center_crop", False) else None
    shortest = (_size_dict(size) or {}).get("shortest_edge")
    out = _pair(crop) if crop is not None else _pair(size)
    do_norm = getattr(processor, "do_normalize", True)
    do_rescale = getattr(processor, "do_rescale", True)
    resample = getattr(processor, "resample", Image.BILINEAR)
    return ImageSpec(
        size=out,
        num_channels=num_channels,
        mean=tuple(processor.image_mean) if do_norm else (0.0,),
        std=tuple(processor.image_std) if do_norm else (1.0,),
        rescale_factor=float(getattr(processor, "rescale_factor", 1 / 255)) if do_rescale else 1.0,
        resample=int(getattr(resample, "value", resample)),
        shortest_edge=int(shortest) if shortest else None,
        processor=processor,
    )


def with_image_size(spec: ImageSpec, image_size: int | tuple[int, int] | dict) -> ImageSpec:
    """``spec`` producing ``image_size`` (h, w) pixel inputs instead of the model's own size.

    For a model pre-trained at 224 px that is run on 28 px images, e.g. ``image_size=56`` is
    ~16x cheaper per image. A resize-then-crop spec (CLIP, DINOv2) keeps its resize/crop ratio
    (DINOv2's 256 -> 224 becomes 64 -> 56); the image processor, when there is one, is called
    with the same overrides (``size`` / ``crop_size``). The model must accept the new size
    (e.g. ``interpolate_pos_encoding=True`` for ViT; DINOv2 always interpolates).

    Args:
        spec: the model's spec (:func:`resolve_image_spec`).
        image_size: an int (square), a ``(height, width)`` pair or a ``{"height", "width"}`` dict.

    Returns:
        A new :class:`ImageSpec`.
    """
    h, w = _pair(image_size)
    if h < 1 or w < 1:
        raise ValueError(f"image_size must be positive, got {image_size!r}")
    shortest = max(1, round(spec.shortest_edge * min(h, w) / min(spec.size))) if spec.shortest_edge else None
    kwargs: dict = {}
    processor = spec.processor
    if processor is not None:
        psize = _size_dict(getattr(processor, "size", None)) or {}
        crops = getattr(processor, "do_center_crop", False) and getattr(processor, "crop_size", None) is not None
        if crops:
            kwargs["crop_size"] = {"height": h, "width": w}
        if "shortest_edge" in psize:
            kwargs["size"] = {"shortest_edge": shortest or min(h, w)}
        elif "height" in psize and "width" in psize:
            ch, cw = _pair(processor.crop_size) if crops else (psize["height"], psize["width"])
            kwargs["size"] = {"height": max(1, round(psize["height"] * h / ch)), "width": max(1, round(psize["width"] * w / cw))}
    return replace(spec, size=(h, w), shortest_edge=shortest, processor_kwargs=tuple(kwargs.items()))


def _local_path(name_or_path: str) -> str:
    """A built-in checkpoint's stable name (e.g. ``"hf-nc/tiny-vit-fmnist"``) as its folder."""
    try:
        from ..checkpoints import resolve_builtin
    except ImportError:  # pragma: no cover - older installs without stable names
        return str(name_or_path)
    return resolve_builtin(name_or_path)


def _load_processor(path: str):
    from transformers import AutoImageProcessor

    try:
        return AutoImageProcessor.from_pretrained(_local_path(path), local_files_only=True)
    except Exception:
        return None


def resolve_image_spec(model_or_config_or_path) -> ImageSpec:
    """An :class:`ImageSpec` from a model, a config, an image processor, a local checkpoint path or a spec.

    Where the model has an image processor (``preprocessor_config.json`` in a local folder,
    loaded offline) its size/mean/std are used; otherwise the config's ``image_size`` and
    ``num_channels`` with mean = std = 0.5. Channels always come from the config.
    """
    obj = model_or_config_or_path
    if isinstance(obj, ImageSpec):
        return obj
    if isinstance(obj, (str, bytes)) or hasattr(obj, "__fspath__"):
        from transformers import AutoConfig

        path = _local_path(str(obj))
        try:
            config = AutoConfig.from_pretrained(path, local_files_only=True)
        except Exception as e:
            raise ValueError(f"no model config found at '{path}' (offline): {e}") from e
        processor = _load_processor(path)
        return spec_from_processor(processor, _config_channels(config)) if processor else spec_from_config(config)
    if hasattr(obj, "image_mean") and hasattr(obj, "size"):  # an image processor
        return spec_from_processor(obj)
    config = getattr(obj, "config", obj)  # a model, or a config
    name = getattr(config, "_name_or_path", "") or getattr(obj, "name_or_path", "")
    processor = _load_processor(name) if name else None
    return spec_from_processor(processor, _config_channels(config)) if processor else spec_from_config(config)


def _augmentations(augment) -> frozenset[str]:
    if augment in (None, False, "none", ""):
        return frozenset()
    if augment is True:
        return frozenset(AUGMENTATIONS)
    names = augment.replace("+", ",").split(",") if isinstance(augment, str) else list(augment)
    names = {n.strip() for n in names if n.strip()}
    unknown = names - set(AUGMENTATIONS)
    if unknown:
        raise ValueError(f"unknown augmentations {sorted(unknown)}; choose from {AUGMENTATIONS}")
    return frozenset(names)


def random_resized_crop_box(width: int, height: int, scale=(0.8, 1.0), ratio=(3 / 4, 4 / 3), generator=None):
    """A (left, top, right, bottom) box as torchvision's RandomResizedCrop samples it (torch RNG)."""
    area = width * height
    log_ratio = (math.log(ratio[0]), math.log(ratio[1]))
    for _ in range(10):
        target = area * float(torch.empty(1).uniform_(scale[0], scale[1], generator=generator))
        ar = math.exp(float(torch.empty(1).uniform_(log_ratio[0], log_ratio[1], generator=generator)))
        w, h = int(round(math.sqrt(target * ar))), int(round(math.sqrt(target / ar)))
        if 0 < w <= width and 0 < h <= height:
            top = int(torch.randint(0, height - h + 1, (1,), generator=generator))
            left = int(torch.randint(0, width - w + 1, (1,), generator=generator))
            return left, top, left + w, top + h
    w, h = width, height  # fallback: the whole image (clamped to the ratio range)
    if w / h < ratio[0]:
        h = int(round(w / ratio[0]))
    elif w / h > ratio[1]:
        w = int(round(h * ratio[1]))
    left, top = (width - w) // 2, (height - h) // 2
    return left, top, left + w, top + h


class ImageTransform:
    """PIL image -> normalised float tensor, with optional train-time augmentation.

    Every image is first scaled to 8 bits when it has more (:func:`to_8bit`) and converted to
    RGB / L to match the model's channels. Then, when the spec carries the model's image
    processor and no ``crop`` augmentation is asked, the processor does the rest (exactly
    the model's own preprocessing, as in ``pipeline()``), and ``flip`` flips its output with
    p = 0.5. Otherwise (a bare config, or ``crop``): with ``crop`` a random resized crop
    (``crop_scale``) straight to the output size, else resize (and centre-crop when the
    processor resizes the shortest edge); with ``flip`` a horizontal flip with p = 0.5; then
    ``x * rescale_factor``, ``(x - mean) / std``.
    """

    def __init__(self, spec: ImageSpec, augment=frozenset(), crop_scale=(0.8, 1.0)):
        self.spec = spec
        self.augment = frozenset(augment)
        self.crop_scale = tuple(crop_scale)
        self.mean, self.std = spec.channel_stats()
        processor = spec.processor
        # A grayscale model behind a 3-channel processor (or the reverse) cannot use it as is.
        fits = processor is not None and (spec.num_channels != 1 or len(getattr(processor, "image_mean", None) or (0,)) == 1)
        self.use_processor = fits and "crop" not in self.augment

    def convert(self, img) -> Image.Image:
        """An 8-bit PIL image with the model's channels (``L`` or ``RGB``)."""
        if not isinstance(img, Image.Image):
            img = Image.fromarray(np.asarray(img))
        return convert_mode(to_8bit(img), "L" if self.spec.num_channels == 1 else "RGB")

    def to_pil(self, img: Image.Image) -> Image.Image:
        """The hand-written path: channels, resize/crop (and augmentation), before normalising."""
        img = self.convert(img)
        h, w = self.spec.size
        if "crop" in self.augment:
            box = random_resized_crop_box(img.width, img.height, self.crop_scale)
            img = img.resize((w, h), self.spec.resample, box=box)
        elif self.spec.shortest_edge:
            s = self.spec.shortest_edge
            scale = s / min(img.width, img.height)
            img = img.resize((max(s, round(img.width * scale)), max(s, round(img.height * scale))), self.spec.resample)
            left, top = (img.width - w) // 2, (img.height - h) // 2
            img = img.crop((left, top, left + w, top + h))
        elif img.size != (w, h):
            img = img.resize((w, h), self.spec.resample)
        if "flip" in self.augment and bool(torch.rand(1) < 0.5):
            img = img.transpose(Image.FLIP_LEFT_RIGHT)
        return img

    def _hand_written(self, img) -> torch.Tensor:
        arr = np.asarray(self.to_pil(img), dtype=np.float32)
        x = torch.from_numpy(arr.copy())
        x = x.unsqueeze(0) if x.ndim == 2 else x.permute(2, 0, 1)
        return (x * self.spec.rescale_factor - self.mean) / self.std

    def batch(self, images) -> list[torch.Tensor]:
        """The transformed tensors of a list of images (one processor call for all of them)."""
        if not self.use_processor:
            return [self._hand_written(img) for img in images]
        processor = self.spec.processor
        kwargs = dict(self.spec.processor_kwargs)
        if hasattr(processor, "do_convert_rgb"):
            kwargs["do_convert_rgb"] = False  # channels already match the model (see convert)
        pixels = processor([self.convert(img) for img in images], return_tensors="pt", **kwargs)["pixel_values"]
        out = [x.float() for x in pixels]
        if "flip" in self.augment:
            out = [x.flip(-1) if bool(torch.rand(1) < 0.5) else x for x in out]
        return out

    def __call__(self, img) -> torch.Tensor:
        return self.batch([img])[0]


class BatchTransform:
    """For ``Dataset.with_transform``: a batch of ``image``/``label`` -> ``pixel_values``/``labels``.

    With ``views=2`` it adds ``pixel_values_2``, a second independent augmentation of each image
    (for two-view supervised contrastive training).
    """

    def __init__(self, image_transform: ImageTransform, image_column="image", label_column="label", views: int = 1):
        self.image_transform = image_transform
        self.image_column, self.label_column, self.views = image_column, label_column, views

    def __call__(self, batch: dict) -> dict:
        images = batch[self.image_column]
        out = {"pixel_values": self.image_transform.batch(images)}
        for v in range(2, self.views + 1):
            out[f"pixel_values_{v}"] = self.image_transform.batch(images)
        if self.label_column in batch:
            out["labels"] = [int(y) for y in batch[self.label_column]]
        return out


def build_transforms(
    model_or_config_or_path,
    train: bool,
    augment: bool | str | Iterable[str] = False,
    *,
    crop_scale=(0.8, 1.0),
    image_column: str = "image",
    label_column: str = "label",
    views: int = 1,
    image_size: int | tuple[int, int] | None = None,
) -> BatchTransform:
    """A batch transform for ``dataset.with_transform`` matched to a model.

    Without augmentation (always when ``train`` is False) the pixels are those of the model's
    own image processor when one is known: an image processor passed in, a local folder (or
    cached Hub id) with ``preprocessor_config.json``, or a model/config whose
    ``name_or_path`` has one; so evaluation sees exactly what ``pipeline()`` would feed the
    model. Only a bare config (no processor) uses the hand-written resize with mean = std = 0.5.

    Args:
        model_or_config_or_path: a model, a config, an image processor, a local checkpoint
            folder, or an :class:`ImageSpec`.
        train: training transforms (augmentation allowed) or evaluation ones.
        augment: used only when ``train``: False/"none", True (= "crop,flip"), or a subset of
            ``("crop", "flip")`` as a list or "crop,flip" string. Off by default; small images
            such as ``digits`` should not be flipped.
        crop_scale: area range of the random resized crop.
        image_column: input column of the batches.
        label_column: label column (copied to ``labels`` when present).
        views: with 2, also ``pixel_values_2``, a second independent augmentation.
        image_size: feed the model ``image_size`` px inputs instead of its own size (see
            :func:`with_image_size`); None keeps the model's.
    """
    spec = resolve_image_spec(model_or_config_or_path)
    if image_size is not None:
        spec = with_image_size(spec, image_size)
    aug = _augmentations(augment) if train else frozenset()
    return BatchTransform(ImageTransform(spec, aug, crop_scale), image_column, label_column, views)


def collate_fn(examples: list[dict]) -> dict[str, torch.Tensor]:
    """Stack the ``pixel_values*`` tensors and ``labels`` of transformed examples into a batch.

    transformers' ``default_data_collator`` (tensors stacked, integer labels as int64, strings
    skipped), kept under this name for the recipes, the docs and users' code.
    """
    from transformers import default_data_collator

    return default_data_collator(examples)
