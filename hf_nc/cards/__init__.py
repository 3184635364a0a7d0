"""Model cards for hf-nc adapters and checkpoints, and sharing adapters on the Hugging Face Hub.

Cards are ``huggingface_hub.ModelCard`` objects built from ``ModelCardData`` metadata and a Jinja template
(``hf_nc/cards/templates/*.md``), so the YAML front matter and the model-index are written by
huggingface_hub, not by string formatting.

>>> card = adapter_card_from_model(peft_model, base_model="google/vit-base-patch16-224-in21k",
...                                metrics={"validation": {"accuracy": 0.90, "nc1": 0.85},
...                                         "test": {"accuracy": 0.91, "nc1": 0.86},
...                                         "train": {"nc1": 0.12}},
...                                dataset="uoft-cs/cifar10")
>>> save_adapter(peft_model, "out/adapter", card)          # the folder's README.md is this card
>>> push_adapter(peft_model, "me/vit-scl-cifar10", card)   # adapter + card in one commit, bounded waits

Every adapter card says that the adapter needs ``import hf_nc`` and shows how to load it:
``hf_nc.AutoPeftModelForImageClassification.from_pretrained(repo)``, and the plain PEFT way. The install
command is ``install_command()`` (hf-nc is not on PyPI); ``datasets`` metadata lists only Hub datasets
(``hub_dataset_id``).

Public API:

* ``adapter_card(base_model, method, method_config, trainable_params, total_params, metrics=None,
  dataset=None, **options) -> ModelCard``
* ``adapter_card_from_model(model, base_model=None, metrics=None, dataset=None, adapter_name="default",
  **options) -> ModelCard``
* ``save_adapter(model, save_directory, card=None, **save_kwargs) -> Path``
* ``push_adapter(model, repo_id, card=None, *, private=False, token=None, commit_message=None, revision=None,
  timeout=None, endpoint=None) -> str`` (raises ``HubTimeoutError``; ``$HF_NC_HUB_TIMEOUT``)
* ``hub_timeout(timeout=None)`` (context manager), ``hub_timeout_seconds(timeout=None) -> float``
* ``pretrained_card(record, title, ...) -> ModelCard`` (``recipes/pretrain_vit.py``'s checkpoint card)
* ``base_param_count(model) -> int`` (the trainable share is ``trainable / base_param_count``)
* ``metrics_from_log_history(log_history, eval_split="validation") -> dict`` (per split, for the Trainer's card)
* ``loading_snippet(card, which="auto") -> str``, ``parse_metrics(metrics, eval_split="test")``,
  ``trainable_percent(trainable, total) -> str``, ``install_command(source_url=None) -> str``,
  ``hub_dataset_id(dataset) -> str | None``, ``render_card(template, card_data, **values) -> ModelCard``
"""

from ._adapter import (
    AUTO_LOADER,
    REPO_ID_PLACEHOLDER,
    adapter_card,
    adapter_card_from_model,
    base_param_count,
    loading_snippet,
    metrics_from_log_history,
    parse_metrics,
    trainable_percent,
)
from ._common import (
    BUILTIN_MODEL_NAME,
    SOURCE_URL_ENV,
    TEMPLATES_DIR,
    builtin_model_name,
    hub_dataset_id,
    install_command,
    render_card,
)
from ._hub import (
    DEFAULT_HUB_TIMEOUT,
    HUB_TIMEOUT_ENV,
    HubTimeoutError,
    hub_timeout,
    hub_timeout_seconds,
    push_adapter,
    save_adapter,
)
from ._pretrained import pretrained_card

__all__ = [
    "AUTO_LOADER",
    "BUILTIN_MODEL_NAME",
    "DEFAULT_HUB_TIMEOUT",
    "HUB_TIMEOUT_ENV",
    "HubTimeoutError",
    "REPO_ID_PLACEHOLDER",
    "SOURCE_URL_ENV",
    "TEMPLATES_DIR",
    "adapter_card",
    "adapter_card_from_model",
    "base_param_count",
    "builtin_model_name",
    "hub_dataset_id",
    "hub_timeout",
    "hub_timeout_seconds",
    "install_command",
    "loading_snippet",
    "metrics_from_log_history",
    "parse_metrics",
    "pretrained_card",
    "push_adapter",
    "render_card",
    "save_adapter",
    "trainable_percent",
]
