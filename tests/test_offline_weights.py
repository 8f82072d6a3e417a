"""`--weights pretrained` offline: one line in seconds, a Hub probe that gives up on time."""

from __future__ import annotations

import pytest


@pytest.fixture
def no_hub(monkeypatch):
    import huggingface_hub.constants

    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setattr(huggingface_hub.constants, "ENDPOINT", "http://127.0.0.1:9")  # nothing listens there
    for var in ("HTTPS_PROXY", "https_proxy", "ALL_PROXY", "all_proxy"):
        monkeypatch.delenv(var, raising=False)


def test_offline_pretrained_is_one_line_in_seconds(no_hub, capfd):
    import time

    from peftbench.backbone import load_backbone
    from peftbench.errors import CheckpointError

    t0 = time.perf_counter()
    with pytest.raises(CheckpointError) as info:
        load_backbone("vit_tiny_patch16_224", "pretrained", img_size=32)
    assert time.perf_counter() - t0 < 5  # huggingface_hub's retries took ~50-90 s
    assert "we are offline (127.0.0.1:9 unreachable: " in str(info.value) and "--weights PATH" in str(info.value)
    captured = capfd.readouterr()
    assert "Retry" not in captured.out + captured.err


def test_hub_probe_gives_up_after_its_timeout(no_hub, monkeypatch):
    import socket
    import time

    from peftbench.backbone import hub_unreachable

    def black_hole(*args, **kwargs):  # a network that drops packets: no answer, then a timeout
        time.sleep(2)
        raise OSError("timed out")

    monkeypatch.setattr(socket, "create_connection", black_hole)
    t0 = time.perf_counter()
    assert hub_unreachable(timeout=0.2) == "127.0.0.1:9 did not answer within 0.2 s"
    assert time.perf_counter() - t0 < 1
