"""What every hf-nc card says the same way: the install command, Hub dataset ids, the built-in base, templates."""

from __future__ import annotations

import os
import re
from importlib import metadata
from pathlib import Path

from huggingface_hub import ModelCard, ModelCardData

#: folder of the Jinja templates the cards are rendered from (shipped inside the package)
TEMPLATES_DIR = Path(__file__).resolve().parent / "templates"

#: environment variable naming where hf-nc's source lives (a git URL), for the install command of cards
SOURCE_URL_ENV = "HF_NC_SOURCE_URL"

#: the stable name of the built-in checkpoint (``hf_nc.checkpoints.DEFAULT_MODEL``); hf-nc resolves it locally
BUILTIN_MODEL_NAME = "hf-nc/tiny-vit-fmnist"

# hf-nc's built-in dataset names -> their Hub dataset id, or None when the Hub has none
_BUILTIN_DATASETS = {
    "fashion_mnist": "zalando-datasets/fashion_mnist",
    "fashion-mnist": "zalando-datasets/fashion_mnist",
    "digits": None,  # scikit-learn's 8x8 digits: not a Hub dataset
}
_BUILTIN_DATASET_TEXT = {
    "digits": "scikit-learn's 8x8 `digits` (built into hf-nc: `hf_nc.load_image_dataset(\"digits\")`)",
}


def _source_url_from_metadata() -> str | None:
    """The ``Source`` / ``Repository`` project URL of the installed hf-nc, when its metadata has one."""
    try:
        urls = metadata.metadata("hf-nc").get_all("Project-URL") or []
    except metadata.PackageNotFoundError:
        return None
    for entry in urls:
        label, _, url = entry.partition(",")
        if label.strip().lower() in ("source", "repository", "source code", "code") and url.strip():
            return url.strip()
    return None


def install_command(source_url: str | None = None) -> str:
    """The shell command that installs hf-nc, as the cards print it.

    hf-nc is not published on PyPI, so ``pip install hf-nc`` would install nothing (or someone else's package).
    The command installs from hf-nc's source:

    * ``source_url`` (or ``$HF_NC_SOURCE_URL``, or a ``Source`` / ``Repository`` URL in the installed package's
      metadata) names a git repository: ``pip install "hf-nc @ git+<url>"``;
    * otherwise no URL is known and none is invented: ``pip install <path-to-hf-nc>`` (a copy of its source,
      the folder with ``pyproject.toml``).

    Args:
        source_url: a git URL of hf-nc's source (``https://...``, ``git+https://...``, ``ssh://...``).

    Returns:
        one line of shell.
    """
    url = source_url or os.environ.get(SOURCE_URL_ENV) or _source_url_from_metadata()
    if url:
        url = url.strip()
        return f'pip install "hf-nc @ {url if url.startswith("git+") else "git+" + url}"'
    return "pip install <path-to-hf-nc>  # hf-nc is not on PyPI: install it from a copy of its source"


def is_local_path(name: str) -> bool:
    """True for what is a path on this machine rather than a Hub id (absolute, ``./``, ``~``, existing, a/b/c)."""
    return os.path.isabs(name) or name.startswith((".", "~")) or os.path.isdir(name) or name.count("/") > 1


def hub_dataset_id(dataset: str | None) -> str | None:
    """The Hub dataset id to list in a card's ``datasets`` metadata, or None when there is none.

    Built-in names map to their Hub id (``fashion_mnist`` -> ``zalando-datasets/fashion_mnist``) or to None
    (``digits``: scikit-learn's, not on the Hub); local folders are never listed; other names are Hub ids
    as given.
    """
    if not dataset:
        return None
    key = dataset.strip().lower()
    if key in _BUILTIN_DATASETS:
        return _BUILTIN_DATASETS[key]
    if is_local_path(dataset):
        return None
    return dataset


def dataset_text(dataset: str | None, dataset_name: str | None = None) -> str | None:
    """How a card's text names the dataset: a Hub link, a built-in description, or "a local image folder"."""
    if not dataset:
        return None
    hub_id = hub_dataset_id(dataset)
    if hub_id:
        shown = dataset_name or hub_id
        return f"[`{shown}`](https://huggingface.co/datasets/{hub_id})"
    key = dataset.strip().lower()
    if key in _BUILTIN_DATASET_TEXT:
        return _BUILTIN_DATASET_TEXT[key]
    return f"`{dataset_name}` (a local image folder)" if dataset_name else "a local image folder"


def builtin_model_name(name_or_path: str | None) -> str | None:
    """The stable name when ``name_or_path`` is hf-nc's built-in checkpoint (by name or by its local path)."""
    if not name_or_path:
        return None
    from hf_nc import checkpoints

    stable = getattr(checkpoints, "builtin_name", None)
    if stable is not None:  # hf_nc.checkpoints knows every built-in name and folder
        return stable(name_or_path)
    if name_or_path == BUILTIN_MODEL_NAME:
        return BUILTIN_MODEL_NAME
    try:
        same = os.path.realpath(os.path.expanduser(name_or_path)) == os.path.realpath(checkpoints.DEFAULT_MODEL)
    except (OSError, ValueError):
        same = False
    return BUILTIN_MODEL_NAME if same else None


def render_card(template: str | os.PathLike, card_data: ModelCardData, **values) -> ModelCard:
    """``ModelCard.from_template`` with one of our templates (a file name in ``TEMPLATES_DIR`` or a path).

    The rendered card is re-parsed, so a template or value that breaks the YAML front matter raises here.
    """
    path = Path(template)
    if not path.is_file():
        path = TEMPLATES_DIR / template
    card = ModelCard.from_template(card_data, template_path=str(path), **values)
    return ModelCard(re.sub(r"\n{3,}", "\n\n", card.content).rstrip("\n") + "\n")


def versions(dists: tuple[str, ...] = ("hf-nc", "peft", "transformers", "torch", "huggingface_hub")) -> list[str]:
    """``["hf-nc 0.1.0", "peft 0.21.2", ...]`` for the installed distributions."""
    out = []
    for dist in dists:
        try:
            out.append(f"{dist} {metadata.version(dist)}")
        except metadata.PackageNotFoundError:
            pass
    return out
