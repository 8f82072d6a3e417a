"""SHIP's decoupled attention on a timm pre-norm ViT block, as two SDPA calls or one with a block mask.

Decoupled (docs/ship.md): image queries take (1-s)·softmax over image keys + s·softmax over prompt
keys; prompt tokens pass their normed input on, except in the last block, where they attend to all
keys. Two ways to compute it, equal to float error:

- ``split``: one SDPA call per softmax (image→image, image→prompt, and prompt→all in the last
  block). Each call can use flash attention; the CPU's fastest choice.
- ``masked``: one SDPA call. The image queries enter twice, ``[q_img; q_img (; q_prompt)]``, against
  all keys, with a boolean block mask: the first copy sees only image keys, the second only prompt
  keys, prompt queries (last block) see everything. Fewer kernel launches, ~2x the attention
  scores of the image queries (masked entries are computed, not skipped), no flash kernel (a mask
  needs the memory-efficient or cuDNN one). Which one is faster on a GPU is measured by
  ``benchmarks/gpu_targets.sh``; ``auto`` picks ``masked`` on CUDA and ``split`` elsewhere.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

IMPLS = ("auto", "split", "masked")


def attention_impl(choice: str, device: torch.device) -> str:
    """The kernel layout for ``choice`` on ``device`` (auto: masked on CUDA, split elsewhere)."""
    if choice == "auto":
        return "masked" if device.type == "cuda" else "split"
    return choice


def decoupled_mask(n: int, total: int, last: bool, device: torch.device) -> torch.Tensor:
    """Boolean (2n [+ prompts], total) mask of the ``masked`` layout; True = may attend."""
    is_image_key = torch.arange(total, device=device) < n
    rows = [is_image_key.expand(n, total), (~is_image_key).expand(n, total)]
    if last:
        rows.append(torch.ones(total - n, total, dtype=torch.bool, device=device))
    return torch.cat(rows)


def _attention(attn: nn.Module, h: torch.Tensor, n: int, scale: float, decoupled: bool, last: bool,
               want_logits: bool, impl: str = "split", mask: torch.Tensor | None = None
               ) -> tuple[torch.Tensor, torch.Tensor | None]:
    """SHIP attention on normed tokens ``h`` = [n image | prompts], before the output projection.

    Also returns the class token's attention logits over the image keys, mean over heads (no grad).
    """
    b = h.shape[0]
    heads, head_dim = attn.num_heads, attn.head_dim
    qkv_w, qkv_b = attn.qkv.weight, attn.qkv.bias
    inner = heads * head_dim
    queries = h[:, :n] if decoupled and not last else h  # no wasted query projections for prompts
    q = F.linear(queries, qkv_w[:inner], None if qkv_b is None else qkv_b[:inner])
    kv = F.linear(h, qkv_w[inner:], None if qkv_b is None else qkv_b[inner:])
    q = attn.q_norm(q.unflatten(-1, (heads, head_dim)).transpose(1, 2))
    k, v = kv.unflatten(-1, (2, heads, head_dim)).permute(2, 0, 3, 1, 4)
    k = attn.k_norm(k)
    logits = None
    if want_logits:
        with torch.no_grad():
            logits = (q[:, :, :1] @ k[:, :, :n].transpose(-2, -1)).squeeze(2).mean(1) * attn.scale
    drop = attn.attn_drop.p if attn.training else 0.0

    def sdpa(q_: torch.Tensor, k_: torch.Tensor, v_: torch.Tensor, m: torch.Tensor | None = None) -> torch.Tensor:
        out = F.scaled_dot_product_attention(q_, k_, v_, attn_mask=m, dropout_p=drop)
        return out.transpose(1, 2).reshape(b, q_.shape[2], inner)

    if not decoupled:
        return sdpa(q, k, v), logits
    q_img = q[:, :, :n]
    if impl == "masked":
        if mask is None:
            mask = decoupled_mask(n, h.shape[1], last, h.device)
        out = sdpa(torch.cat([q_img, q[:, :, :n], *([q[:, :, n:]] if last else [])], dim=2), k, v, mask)
        image = (1 - scale) * out[:, :n] + scale * out[:, n:2 * n]
        prompts = out[:, 2 * n:] if last else h[:, n:].to(image.dtype)
    else:
        image = (1 - scale) * sdpa(q_img, k[:, :, :n], v[:, :, :n]) + scale * sdpa(q_img, k[:, :, n:], v[:, :, n:])
        prompts = sdpa(q[:, :, n:], k, v) if last else h[:, n:].to(image.dtype)
    return torch.cat([image, prompts], dim=1), logits


def ship_block(block: nn.Module, x: torch.Tensor, n: int, scale: float = 0.1, decoupled: bool = True,
               last: bool = False, want_logits: bool = False, impl: str = "split", mask: torch.Tensor | None = None
               ) -> tuple[torch.Tensor, torch.Tensor | None]:
    """One timm ``Block`` on [n image tokens | prompt tokens], with its own weights and SHIP's attention."""
    attn = block.attn
    out, logits = _attention(attn, block.norm1(x), n, scale, decoupled, last, want_logits, impl, mask)
    x = x + block.drop_path1(block.ls1(attn.proj_drop(attn.proj(attn.norm(out)))))
    x = x + block.drop_path2(block.ls2(block.mlp(block.norm2(x))))
    return x, logits
