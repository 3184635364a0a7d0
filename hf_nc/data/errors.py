"""Errors and Hub-offline checks shared by the data loaders."""

from __future__ import annotations

import os

_TRUE = {"1", "true", "yes", "on"}


class DataNotFoundError(FileNotFoundError):
    """Requested data is not available locally and cannot be fetched; the message says what to do."""


class CorruptImageError(ValueError):
    """Images that cannot be decoded (truncated or corrupt files); the message names each one."""


def hub_offline() -> bool:
    """True when Hub access is switched off (HF_HUB_OFFLINE or HF_DATASETS_OFFLINE)."""
    set_vars = [os.environ[v].strip().lower() for v in ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE") if v in os.environ]
    if set_vars:  # the environment now wins over what huggingface_hub read at import time
        return any(v in _TRUE for v in set_vars)
    try:
        import huggingface_hub.constants as hc

        return bool(hc.HF_HUB_OFFLINE)
    except Exception:  # pragma: no cover - defensive
        return False


def hub_unreachable_reason(timeout: float = 3.0) -> str | None:
    """Why the Hub endpoint cannot be reached (one quick TCP connect), or None if it can / behind a proxy.

    Checked before calling the Hub so that a machine without network fails in seconds instead of
    waiting through huggingface_hub's retries (~20 s).
    """
    if any(os.environ.get(v) for v in ("HTTPS_PROXY", "https_proxy", "ALL_PROXY", "all_proxy")):
        return None  # the proxy decides; do not second-guess it
    import socket
    from urllib.parse import urlparse

    try:
        from huggingface_hub.constants import ENDPOINT
    except Exception:  # pragma: no cover
        ENDPOINT = "https://huggingface.co"
    url = urlparse(os.environ.get("HF_ENDPOINT") or ENDPOINT)
    host, port = url.hostname or "huggingface.co", url.port or (443 if url.scheme == "https" else 80)
    try:
        socket.create_connection((host, port), timeout=timeout).close()
        return None
    except OSError as e:
        return f"cannot reach {host}:{port} ({e})"
