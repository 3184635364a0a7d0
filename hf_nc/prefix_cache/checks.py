"""Where the frozen prefix ends and whether caching it is exact.

:func:`first_tuned_block` finds the cut; :func:`prefix_cache_problems` lists what in the prefix
would make the cached run differ from the uncached one (a trainable parameter, dropout or
stochastic depth) and :func:`dataset_problems` what in the data would (training augmentation).
"""

from __future__ import annotations

import random
from contextlib import contextmanager
from typing import Any, Optional

import numpy as np
import torch
from torch import nn

from ..backbones import Backbone, resolve_backbone
from .layout import PrefixCacheError

# Float attributes through which transformers modules apply dropout / stochastic depth
# functionally (e.g. ViTSelfAttention.dropout_prob, CLIPAttention.dropout, Dinov2DropPath.drop_prob).
_STOCHASTIC_ATTRS = ("p", "drop_prob", "dropout_prob", "dropout", "attention_dropout", "drop_path_rate", "drop_rate")


def _has_tuner_layer(module: nn.Module) -> bool:
    from peft.tuners.tuners_utils import BaseTunerLayer

    return any(isinstance(m, BaseTunerLayer) for m in module.modules())


def first_tuned_block(model: nn.Module) -> int:
    """Index of the lowest block with a trainable parameter or a PEFT tuner layer.

    Returns ``num_layers`` when every block is frozen (linear probe: only the head trains).
    """
    backbone = resolve_backbone(model)
    for i, block in enumerate(backbone.blocks):
        if any(p.requires_grad for p in block.parameters()) or _has_tuner_layer(block):
            return i
    return backbone.num_layers


def _scl_delta_source(block: nn.Module) -> bool:
    """Whether ``block`` is an SCL source whose active adapter runs the frozen block too (delta skip)."""
    from ..adapters.scl import SCLSourceLayer

    if not isinstance(block, SCLSourceLayer):
        return False
    name = block._single_active()
    return name is not None and block._nc_skip_source.get(name) == "delta"


def _stem(backbone: Backbone) -> list[tuple[str, nn.Module]]:
    out = []
    for path in backbone.stem_paths:
        try:
            out.append((path, backbone.model.get_submodule(path)))
        except AttributeError as err:
            raise PrefixCacheError(
                f"the {backbone.spec.name!r} spec names {path!r} as part of the stem (embeddings / pre-block modules), "
                f"but {type(backbone.model).__name__} has no such module: fix BackboneSpec.embeddings / pre_blocks"
            ) from err
    return out


def _prefix_modules(backbone: Backbone, block: int) -> list[tuple[str, nn.Module]]:
    """The stem and blocks ``0..block-1``, as (path, module)."""
    return _stem(backbone) + [(backbone.block_path(i), backbone.blocks[i]) for i in range(block)]


def _frozen_modules(backbone: Backbone, block: int) -> list[tuple[str, nn.Module]]:
    """Every module whose weights the cached rows depend on: the prefix, and SCL's frozen block ``block``."""
    modules = _prefix_modules(backbone, block)
    if block < backbone.num_layers and _scl_delta_source(backbone.blocks[block]):
        modules.append((f"{backbone.block_path(block)}.base_layer", backbone.blocks[block].base_layer))
    return modules


#: relative agreement of two :func:`prefix_weights` records of the same weights (float64 sums of the same
#: values on another device or in another order differ by ~1e-15; any real change of a weight is far larger)
PREFIX_WEIGHTS_RTOL = 1e-9


@torch.no_grad()
def _weight_sums(model: nn.Module, block: int) -> list[tuple[str, str, tuple, float, float]]:
    """Per floating tensor the rows cut at ``block`` depend on (parameters and buffers of the stem, the
    blocks below ``block`` and an SCL delta source's frozen block): name, dtype, shape, float64 sum and sum
    of squares. Reductions on the weights' own device: no copy to the host."""
    out = []
    for path, module in _frozen_modules(resolve_backbone(model), block):
        for name, t in list(module.named_parameters()) + list(module.named_buffers()):
            if t.is_floating_point() and not t.is_meta:
                out.append((f"{path}.{name}", str(t.dtype).removeprefix("torch."), tuple(t.shape),
                            float(t.sum(dtype=torch.float64)), float(torch.linalg.vector_norm(t, dtype=torch.float64) ** 2)))
    return out


def prefix_weights(model: nn.Module, block: int) -> tuple:
    """A compact record of the frozen weights rows cut at ``block`` are computed with: a digest of the
    tensors' names, dtypes and shapes, their dtypes, and per tensor its float64 sum and sum of squares
    (:func:`prefix_weights_mismatch` compares two)."""
    return _record(_weight_sums(model, block))


def _record(sums: list[tuple]) -> tuple:
    import hashlib

    structure = hashlib.sha1(repr([r[:3] for r in sums]).encode()).hexdigest()
    return structure, ",".join(sorted({r[1] for r in sums})), tuple(v for r in sums for v in r[3:])


def prefix_weights_mismatch(recorded: Optional[tuple], model: nn.Module, block: int) -> Optional[str]:
    """Why ``model``'s frozen weights are not those of the :func:`prefix_weights` record (the first
    difference), or ``None`` (the same, or nothing recorded)."""
    if recorded is None:
        return None
    structure, dtypes, values = recorded
    sums = _weight_sums(model, block)
    actual = _record(sums)
    if actual[0] != structure:
        why = f"dtype {actual[1]} here, {dtypes} when built" if actual[1] != dtypes else "other names or shapes"
        return f"the frozen tensors differ: {why}"
    for i, (name, _, shape, s1, q1) in enumerate(sums):
        s0, q0 = values[2 * i], values[2 * i + 1]
        scale = np.sqrt(float(np.prod(shape)) * max(q0, q1))  # the largest |sum| a tensor of this norm can have
        if abs(q0 - q1) > PREFIX_WEIGHTS_RTOL * max(q0, q1) or abs(s0 - s1) > PREFIX_WEIGHTS_RTOL * (abs(s0) + abs(s1) + scale):
            return f"{name} has other values than when the rows were computed (sum {s1:.6g} vs {s0:.6g})"
    return None


def _stochastic(path: str, module: nn.Module) -> list[str]:
    found = []
    for name, m in module.named_modules():
        for attr in _STOCHASTIC_ATTRS:
            value = m.__dict__.get(attr)
            if isinstance(value, float) and not isinstance(value, bool) and value > 0:
                where = ".".join(p for p in (path, name) if p)
                found.append(f"{where}.{attr}={value:g}")
    return found


def prefix_cache_problems(model: nn.Module, block: Optional[int] = None) -> list[str]:
    """Why caching the prefix of ``model`` below ``block`` would not reproduce the uncached run.

    Args:
        model: The model to train (a ``PeftModel`` or a plain model with frozen blocks).
        block: The cut (the first tuned block); default :func:`first_tuned_block`.

    Returns:
        One sentence per problem; empty when the cache is exact.
    """
    backbone = resolve_backbone(model)
    first = first_tuned_block(model)
    block = first if block is None else block
    problems = []
    if not 0 <= block <= backbone.num_layers:
        return [f"block {block} is out of range 0..{backbone.num_layers} for this {backbone.num_layers}-block model"]
    prefix = _prefix_modules(backbone, block)
    trainable = [f"{path}.{n}" for path, m in prefix for n, p in m.named_parameters() if p.requires_grad]
    if trainable:
        more = f" (+{len(trainable) - 5} more)" if len(trainable) > 5 else ""
        problems.append(
            f"the prefix below block {block} is not frozen: {len(trainable)} parameters require grad, e.g. "
            f"{', '.join(trainable[:5])}{more}. A cache would freeze them: cache from the first trainable block "
            f"(block={min(first, block)}) or freeze them"
        )
    elif block > first:
        problems.append(f"block {block} is above the first tuned block {first}: that block would not train")
    stochastic = [s for path, m in prefix for s in _stochastic(path, m)]
    if block < backbone.num_layers and _scl_delta_source(backbone.blocks[block]):
        stochastic += _stochastic(f"{backbone.block_path(block)}.base_layer", backbone.blocks[block].base_layer)
    if stochastic:
        more = f" (+{len(stochastic) - 5} more)" if len(stochastic) > 5 else ""
        problems.append(
            "dropout or stochastic depth is active in the frozen prefix in train mode, so it does not compute the "
            f"same output every epoch: {', '.join(stochastic[:5])}{more}. Set those rates to 0 (e.g. "
            "config.hidden_dropout_prob / attention_probs_dropout_prob / attention_dropout / drop_path_rate) or train "
            "uncached"
        )
    return problems


def _transform_of(dataset) -> Any:
    fmt = getattr(dataset, "_format_kwargs", None) or {}
    return fmt.get("transform") or getattr(dataset, "transform", None)


#: Class names of random image transforms (torchvision ``RandomResizedCrop``, ``RandAugment``, ``ColorJitter``,
#: ...; albumentations' / timm's ``Random*``), found in a dataset's transform by :func:`_random_parts`
_RANDOM_NAME_PREFIXES = ("Random",)
_RANDOM_NAMES = frozenset({"RandAugment", "AutoAugment", "TrivialAugmentWide", "AugMix", "ColorJitter", "GaussianBlur",
                           "ElasticTransform", "GaussNoise", "CutMix", "MixUp"})
_SKIP_TYPES = (str, bytes, int, float, bool, type(None), torch.Tensor, np.ndarray, nn.Module, type)


def _random_parts(obj: Any, depth: int = 4, seen: Optional[set] = None) -> list[str]:
    """Names of random augmentations inside a transform: hf-nc's declared ``augment``, and objects whose
    class is a random transform, looked for in ``Compose``-style lists, attributes, ``functools.partial``
    arguments and a function's closure and the globals it names (a ``with_transform`` function)."""
    import functools
    import types

    seen = set() if seen is None else seen
    if depth < 0 or id(obj) in seen or isinstance(obj, _SKIP_TYPES) or isinstance(obj, types.ModuleType):
        return []
    seen.add(id(obj))
    name = type(obj).__name__
    if name in _RANDOM_NAMES or name.startswith(_RANDOM_NAME_PREFIXES):
        return [name]
    augment = getattr(obj, "augment", None) if not isinstance(obj, types.FunctionType) else None
    if augment and isinstance(augment, (set, frozenset, list, tuple)):
        return sorted(str(a) for a in augment)
    children: list = []
    if isinstance(obj, (list, tuple, set, frozenset)):
        children = list(obj)
    elif isinstance(obj, dict):
        children = list(obj.values())
    elif isinstance(obj, functools.partial):
        children = [obj.func, *obj.args, *obj.keywords.values()]
    elif isinstance(obj, types.MethodType):
        children = [obj.__func__, obj.__self__]
    elif isinstance(obj, types.FunctionType):
        children = [c.cell_contents for c in (obj.__closure__ or ()) if _filled(c)]
        children += [obj.__globals__[n] for n in obj.__code__.co_names if n in obj.__globals__]
        children += list(obj.__defaults__ or ())
    elif hasattr(obj, "__dict__") and not hasattr(obj, "__len__"):  # a transform object (not a dataset)
        children = list(vars(obj).values())
    found: list[str] = []
    for child in children:
        found += _random_parts(child, depth - 1, seen)
    return found


def _filled(cell) -> bool:
    try:
        cell.cell_contents
    except ValueError:  # an empty cell
        return False
    return True


def dataset_problems(dataset, input_key: str = "pixel_values", probes: int = 16) -> list[str]:
    """Why ``dataset``'s items would not be the same in every epoch (training augmentation).

    Looks for random augmentations in the dataset's transform (hf-nc's declared ones, random
    transform classes such as torchvision's ``Random*`` / ``ColorJitter``), then reads the first
    ``probes`` items twice and compares ``input_key`` (random number states are restored
    afterwards). Reading alone misses an augmentation that happens to draw the same twice (a flip
    with p=0.5 did so on 4 items one time in 16).
    """
    random_parts = _random_parts(_transform_of(dataset))
    if random_parts:
        return [
            f"the dataset's transform applies training augmentation ({', '.join(sorted(set(random_parts)))}): a cache "
            "would freeze one random draw per image. Train uncached, or cache a view without augmentation (or, if "
            "that transform never runs on these items, build with check_dataset=False)"
        ]
    n = min(probes, len(dataset))
    with _preserved_rng():
        for i in range(n):
            a, b = dataset[i][input_key], dataset[i][input_key]
            if isinstance(a, torch.Tensor) and not torch.equal(a, b):
                return [
                    f"dataset item {i} differs between two reads (random augmentation in its transform?): a cache "
                    "would freeze one random draw per image. Train uncached, or cache a view without augmentation"
                ]
    return []


@contextmanager
def _preserved_rng():
    """Leaves torch (CPU and CUDA), Python and NumPy random states as they were."""
    py, npy = random.getstate(), np.random.get_state()
    devices = list(range(torch.cuda.device_count())) if torch.cuda.is_available() else []
    with torch.random.fork_rng(devices=devices):
        try:
            yield
        finally:
            random.setstate(py)
            np.random.set_state(npy)
