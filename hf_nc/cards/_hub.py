"""Saving an adapter with its card, and pushing both to the Hub in one commit, with bounded waits."""

from __future__ import annotations

import contextlib
import os
import tempfile
from collections.abc import Iterator, Mapping
from pathlib import Path

from huggingface_hub import HfApi, ModelCard

from ._adapter import _METHODS, REPO_ID_PLACEHOLDER, adapter_card_from_model

#: environment variable: seconds ``push_adapter`` waits for any one answer of the Hub
HUB_TIMEOUT_ENV = "HF_NC_HUB_TIMEOUT"
#: default of that wait; a commit of a large adapter can take the Hub tens of seconds to acknowledge
DEFAULT_HUB_TIMEOUT = 60.0


class HubTimeoutError(TimeoutError):
    """The Hub endpoint accepted the connection (or not) but did not answer within the timeout."""


def hub_timeout_seconds(timeout: float | None = None) -> float:
    """The timeout in seconds: ``timeout`` if given, else ``$HF_NC_HUB_TIMEOUT``, else ``DEFAULT_HUB_TIMEOUT``.

    Raises:
        ValueError: when the value is not a positive number (naming where it came from).
    """
    source = "timeout"
    if timeout is None and os.environ.get(HUB_TIMEOUT_ENV, "").strip():
        timeout, source = os.environ[HUB_TIMEOUT_ENV], HUB_TIMEOUT_ENV
    if timeout is None:
        return DEFAULT_HUB_TIMEOUT
    try:
        seconds = float(timeout)
    except (TypeError, ValueError):
        raise ValueError(f"{source} must be a number of seconds, got {timeout!r}") from None
    if not seconds > 0 or seconds != seconds or seconds == float("inf"):
        raise ValueError(f"{source} must be a positive, finite number of seconds, got {timeout!r}")
    return seconds


@contextlib.contextmanager
def hub_timeout(timeout: float | None = None) -> Iterator[float]:
    """Within the block, every ``huggingface_hub`` request that sets no timeout of its own waits at most
    ``timeout`` seconds (connect, each read, each write, pool) instead of forever.

    ``huggingface_hub`` (>= 1) sends its requests through one shared httpx client built with ``timeout=None``;
    its ``create_repo`` and commit calls pass none, so a Hub endpoint that accepts the connection and never
    answers blocks them forever. This installs a client factory (``huggingface_hub.set_client_factory``)
    that wraps the current one and sets the timeout on the client it makes (proxies, certificates and hooks of
    a user's own factory are kept), and restores the previous factory afterwards. It changes a process-wide
    setting: do not push from several threads with different timeouts.

    Args:
        timeout: seconds; default ``$HF_NC_HUB_TIMEOUT``, else ``DEFAULT_HUB_TIMEOUT`` (see
            ``hub_timeout_seconds``).

    Yields:
        the timeout in seconds.
    """
    from huggingface_hub import set_client_factory
    from huggingface_hub.utils import _http

    seconds = hub_timeout_seconds(timeout)
    # huggingface_hub has no getter for the current factory; its module attribute is the one place it lives
    previous = getattr(_http, "_GLOBAL_CLIENT_FACTORY", None) or _http.default_client_factory

    def factory():
        client = previous()
        client.timeout = type(client.timeout)(seconds)  # httpx(2).Timeout of whichever httpx the client uses
        return client

    set_client_factory(factory)
    try:
        yield seconds
    finally:
        set_client_factory(previous)


def _timeout_cause(err: BaseException) -> BaseException | None:
    """The timeout exception in ``err``'s chain (httpx's ``TimeoutException`` or a ``TimeoutError``), if any."""
    seen = set()
    while err is not None and id(err) not in seen:
        seen.add(id(err))
        if isinstance(err, TimeoutError) or any(c.__name__ == "TimeoutException" for c in type(err).__mro__):
            return err
        err = err.__cause__ or err.__context__
    return None


def save_adapter(model, save_directory: str | os.PathLike, card: ModelCard | None = None, **save_kwargs) -> Path:
    """``model.save_pretrained(dir)`` with the hf-nc card as the folder's ``README.md``.

    PEFT's ``save_pretrained`` writes (or, when one exists, updates) a ``README.md`` of its own: its blank
    template, with ``base_model`` set to the path the base was loaded from. The card is written after it, so
    the folder's README is exactly ``card``.

    When the card names the base (a Hub ``base_model``, or hf-nc's built-in checkpoint by its stable name), the
    saved ``adapter_config.json`` records it as ``base_model_name_or_path`` (instead of, say, the local
    directory the base was loaded from), so that ``hf_nc.AutoPeftModelForImageClassification`` finds the base
    on another machine; the model's own config is left unchanged.

    Args:
        model: the ``PeftModel``.
        save_directory: the folder (created if needed).
        card: the card; default ``adapter_card_from_model(model)``.
        **save_kwargs: passed to ``model.save_pretrained``.

    Returns:
        the folder.
    """
    save_directory = Path(save_directory)
    card = card if card is not None else adapter_card_from_model(model)
    if all(str(getattr(c, "peft_type", "")) in _METHODS for c in getattr(model, "peft_config", {}).values()):
        # our methods never touch token embeddings: skip PEFT's vocab-size check (a Hub request for the base)
        save_kwargs.setdefault("save_embedding_layers", False)
    hf_nc_block = card.data.get("hf_nc") or {}
    base_model = card.data.base_model if isinstance(card.data.base_model, str) else hf_nc_block.get("base_model")
    configs = list(getattr(model, "peft_config", {}).values()) if isinstance(base_model, str) else []
    saved = [c.base_model_name_or_path for c in configs]
    try:
        for c in configs:
            c.base_model_name_or_path = base_model
        model.save_pretrained(str(save_directory), **save_kwargs)
    finally:
        for c, value in zip(configs, saved):
            c.base_model_name_or_path = value
    card.save(save_directory / "README.md")  # after save_pretrained: ours wins over PEFT's
    return save_directory


def _with_repo_id(card: ModelCard, repo_id: str) -> ModelCard:
    if REPO_ID_PLACEHOLDER not in card.content:
        return card
    return ModelCard(card.content.replace(REPO_ID_PLACEHOLDER, repo_id))


def _write_extra_files(folder: Path, image_processor=None,
                       extra_files: Mapping[str, str | os.PathLike | bytes] | None = None) -> None:
    """Writes the image processor (its ``save_pretrained``) and ``extra_files`` into ``folder``, next to the
    adapter, refusing to overwrite what is already there (the adapter, its card) or to leave the folder."""
    written = {p.relative_to(folder).as_posix() for p in folder.rglob("*") if p.is_file()}
    if image_processor is not None:
        if not hasattr(image_processor, "save_pretrained"):
            raise ValueError("image_processor must be an image processor (with save_pretrained), "
                             f"got {type(image_processor).__name__}")
        with tempfile.TemporaryDirectory() as tmp:
            image_processor.save_pretrained(tmp)
            files = {p.name: p.read_bytes() for p in Path(tmp).iterdir() if p.is_file()}
        extra_files = {**files, **(extra_files or {})}
    for name, content in (extra_files or {}).items():
        path_in_repo = Path(name).as_posix()
        if Path(name).is_absolute() or ".." in Path(name).parts or path_in_repo in ("", "."):
            raise ValueError(f"extra_files: {name!r} must be a relative path inside the repo")
        if path_in_repo in written:
            raise ValueError(f"extra_files: {path_in_repo!r} would overwrite the adapter's own file")
        target = folder / path_in_repo
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(content if isinstance(content, bytes) else Path(content).read_bytes())
        written.add(path_in_repo)


def push_adapter(model, repo_id: str, card: ModelCard | None = None, *, private: bool = False,
                 token: str | None = None, commit_message: str | None = None, revision: str | None = None,
                 timeout: float | None = None, endpoint: str | None = None, image_processor=None,
                 extra_files: Mapping[str, str | os.PathLike | bytes] | None = None) -> str:
    """Pushes the adapter (``adapter_config.json``, ``adapter_model.safetensors``) and its card in ONE commit.

    One commit (not ``model.push_to_hub`` then ``card.push_to_hub``) so the repo never shows PEFT's blank
    card and loads consistently at every revision. Only the adapter is uploaded, never the base model's weights.
    The image processor (``preprocessor_config.json``, so that ``pipeline("image-classification",
    model=hf_nc.AutoPeftModelForImageClassification.from_pretrained(repo_id), image_processor=repo_id)`` works)
    and any ``extra_files`` go in the same commit.

    Every request waits at most ``timeout`` seconds for the Hub (see ``hub_timeout``); a request that times
    out is retried by ``huggingface_hub`` where it retries (pre-upload and commit: up to 5 times with backoff),
    so a Hub that never answers makes this fail after a bounded time with ``HubTimeoutError``.

    Args:
        model: the ``PeftModel``.
        repo_id: ``"namespace/name"`` (created if needed; ``private`` applies only then).
        card: the card; default ``adapter_card_from_model(model)``. A ``REPO_ID_PLACEHOLDER`` in it becomes
            ``repo_id``.
        private: create the repo private.
        token: Hub token; default the logged-in one.
        commit_message: default "Upload hf-nc adapter and model card".
        revision: branch to commit to.
        timeout: seconds per request; default ``$HF_NC_HUB_TIMEOUT``, else 60.
        endpoint: Hub URL; default ``$HF_ENDPOINT`` / huggingface.co.
        image_processor: an image processor to upload with the adapter (written by its ``save_pretrained``).
        extra_files: more files, ``{path in the repo: local path or bytes}``.

    Returns:
        the commit URL.

    Raises:
        HubTimeoutError: the endpoint did not answer within ``timeout``.
        ValueError: an extra file would overwrite the adapter's own files or lies outside the repo.
    """
    api = HfApi(endpoint=endpoint, token=token)
    with hub_timeout(timeout) as seconds:
        try:
            repo_id = api.create_repo(repo_id, private=private, exist_ok=True).repo_id
            card = _with_repo_id(card if card is not None else adapter_card_from_model(model), repo_id)
            with tempfile.TemporaryDirectory() as tmp:
                save_adapter(model, tmp, card)
                _write_extra_files(Path(tmp), image_processor, extra_files)
                info = api.upload_folder(repo_id=repo_id, folder_path=tmp, revision=revision,
                                         commit_message=commit_message or "Upload hf-nc adapter and model card")
        except Exception as err:
            cause = _timeout_cause(err)
            if cause is None:
                raise
            request = getattr(cause, "_request", None)  # httpx's `.request` raises when unset; `_request` does not
            where = f" ({request.method} {request.url})" if request is not None else ""
            raise HubTimeoutError(
                f"push_adapter: the Hub endpoint {api.endpoint} did not answer within {seconds:g} s{where} "
                f"({type(cause).__name__}). Check the endpoint (HF_ENDPOINT) and your network, or wait longer: "
                f"push_adapter(..., timeout=SECONDS) or {HUB_TIMEOUT_ENV}=SECONDS (default {DEFAULT_HUB_TIMEOUT:g})."
            ) from err
    return info.commit_url
