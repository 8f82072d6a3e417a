"""The Hugging Face Hub seen from here: is it reachable, is a model's weights file already cached.

Kept apart from backbone.py (model creation and checkpoint reading) so the network probing can be
read, tested and replaced on its own. No torch import.
"""

from __future__ import annotations

import contextlib
import os
import socket
import threading
from urllib.parse import urlparse

HUB_PROBE_TIMEOUT_S = 3.0


def hub_unreachable(timeout: float = HUB_PROBE_TIMEOUT_S) -> str | None:
    """Why the Hugging Face Hub cannot be reached, or None when it can (or a proxy decides).

    huggingface_hub retries each file for about a minute when the network is down; one TCP
    connection with a short timeout (in a thread, since name resolution has none) tells in seconds.
    """
    from huggingface_hub import constants

    if constants.HF_HUB_OFFLINE:
        return "HF_HUB_OFFLINE is set"
    if any(os.environ.get(v) for v in ("HTTPS_PROXY", "https_proxy", "ALL_PROXY", "all_proxy")):
        return None  # the proxy may reach what we cannot: let the download try
    url = urlparse(constants.ENDPOINT)
    host, port = url.hostname, url.port or (443 if url.scheme == "https" else 80)
    outcome: list[str | None] = []

    def connect() -> None:
        try:
            socket.create_connection((host, port), timeout=timeout).close()
            outcome.append(None)
        except OSError as exc:
            outcome.append(f"{host}:{port} unreachable: {exc.strerror or exc}")

    probe = threading.Thread(target=connect, daemon=True)
    probe.start()
    probe.join(timeout)
    return outcome[0] if outcome else f"{host}:{port} did not answer within {timeout:g} s"


def _in_hub_cache(name: str) -> bool:
    """False only when timm would fetch ``name`` from the Hub and no weights file of it is cached."""
    import timm
    from huggingface_hub import try_to_load_from_cache

    cfg = timm.models.get_pretrained_cfg(name)
    if cfg is None or not cfg.hf_hub_id:
        return True  # unknown model or another source: let timm say what it says
    repo = cfg.hf_hub_id.split("@")[0]
    files = [cfg.hf_hub_filename] if cfg.hf_hub_filename else ["model.safetensors", "pytorch_model.bin"]
    return any(isinstance(try_to_load_from_cache(repo, f), str) for f in files)


@contextlib.contextmanager
def _hub_offline(offline: bool):
    """huggingface_hub's own offline mode for one call: the cache is used, the network is not."""
    from huggingface_hub import constants

    before = constants.HF_HUB_OFFLINE
    constants.HF_HUB_OFFLINE = before or offline
    try:
        yield
    finally:
        constants.HF_HUB_OFFLINE = before
