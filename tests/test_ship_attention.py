"""SHIP's one-call (masked) decoupled attention equals the two-call (split) one: forward and gradients, fp32."""

from __future__ import annotations

import copy
import functools

import numpy as np
import pytest
import torch
from test_ship import NUM_CLASSES, WIDTH, images, tiny_ship

from peftbench.errors import UsageError
from peftbench.methods.ship import ShipConfig
from peftbench.methods.ship.attention import attention_impl, decoupled_mask, ship_block


def test_block_mask_layout():
    mask = decoupled_mask(3, 5, last=True, device=torch.device("cpu"))
    assert mask.tolist() == [[True] * 3 + [False] * 2] * 3 + [[False] * 3 + [True] * 2] * 3 + [[True] * 5] * 2
    assert decoupled_mask(3, 5, last=False, device=torch.device("cpu")).shape == (6, 5)


@pytest.mark.parametrize("last", [False, True])
@pytest.mark.parametrize("qk_norm", [False, True])
def test_masked_block_equals_split_block_forward_and_gradients(make_tiny_vit, last, qk_norm):
    torch.manual_seed(3)
    blocks = {impl: make_tiny_vit(qk_norm=qk_norm).blocks[0].train() for impl in ("split", "masked")}
    blocks["masked"].load_state_dict(blocks["split"].state_dict())
    x = torch.randn(2, 17 + 13, WIDTH, generator=torch.Generator().manual_seed(2))
    outs, grads = {}, {}
    for impl, block in blocks.items():
        xi = x.clone().requires_grad_(True)
        out, logits = ship_block(block, xi, 17, scale=0.1, last=last, want_logits=True, impl=impl)
        (out * torch.linspace(-1, 1, out.numel()).view_as(out)).sum().backward()
        outs[impl] = (out.detach(), logits)
        grads[impl] = [xi.grad, *(p.grad for p in block.parameters())]
    torch.testing.assert_close(outs["masked"], outs["split"], atol=1e-5, rtol=1e-5)
    for got, want in zip(grads["masked"], grads["split"]):
        torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-5)


def test_masked_model_equals_split_model(make_tiny_vit, tmp_path):
    bank = tmp_path / "bank.npy"
    np.save(bank, np.random.default_rng(0).standard_normal((16, WIDTH)).astype(np.float32))
    ship_vit = functools.partial(make_tiny_vit, NUM_CLASSES, depth=4)  # test_ship's tiny_vit
    split = tiny_ship(ship_vit, str(bank), attention="split").train()
    masked = copy.deepcopy(split)
    masked.attention = "masked"
    x, y = images(), torch.tensor([0, 1])
    losses = []
    for model in (split, masked):
        logits, aux = model(x)
        loss = torch.nn.functional.cross_entropy(logits, y) + aux.mean()
        loss.backward()
        losses.append(loss.detach())
    torch.testing.assert_close(losses[1], losses[0], atol=1e-5, rtol=1e-5)
    for (name, a), b in zip(split.named_parameters(), masked.parameters()):
        if a.grad is not None:
            torch.testing.assert_close(b.grad, a.grad, atol=1e-5, rtol=1e-5, msg=name)
    assert masked.eval()(x).shape == (2, NUM_CLASSES)


def test_attention_choice_by_device():
    assert attention_impl("auto", torch.device("cuda")) == "masked"
    assert attention_impl("auto", torch.device("cpu")) == "split"
    assert attention_impl("split", torch.device("cuda")) == "split"
    with pytest.raises(UsageError, match="ship.attention='fused'"):
        ShipConfig(attention="fused")
