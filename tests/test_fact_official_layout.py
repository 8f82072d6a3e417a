"""FacT-TK's official_layout: the MLP cores indexed exactly as the authors' code reshapes them.

The reference below is written out from the authors' TK forward (JieShibo/PETL-ViT, FacT/fact_tk.py):
``T = C @ P[:, j:j+2h]`` (r x r x 2h), fc1's cores ``T[:, :, :h].reshape(r, h*r)`` applied as
``code @ M`` and fc2's ``T[:, :, h:].reshape(r, h*r)`` applied as ``code @ M.t()``, with the codes of
the h chunks laid out chunk-major (``reshape(B, N, h, r)``). It shares no code with the plugin.
"""

from __future__ import annotations

import pytest
import torch

from peftbench.config import build_dataclass
from peftbench.registry import get_method


def _fact_tk(make_tiny_vit, official: bool, rank: int = 4):
    spec = get_method("fact")
    cfg = build_dataclass(spec.config_cls, {"variant": "tk", "rank": rank, "scale": 0.7,
                                            "official_layout": official}, "fact")
    torch.manual_seed(0)
    vit = make_tiny_vit(5, mlp_ratio=4.0).double()  # 4 chunks per MLP, as in ViT-B
    model = spec.build(vit, 5, cfg, None)
    with torch.no_grad():  # trained-looking factors (V starts at zero)
        for p in model.fact.parameters():
            p.copy_(torch.randn_like(p) * 0.3)
    return model.eval()


def authors_mlp(x: torch.Tensor, mlp, u, v, core, coef, idx: int, s: float) -> torch.Tensor:
    """The authors' ``fact_forward_mlp`` in eval mode (dropout off), for h = hidden / D chunks."""
    b, n, d = x.shape
    r = u.shape[0]
    h = mlp.fc1.base.out_features // d
    fact_c = core @ coef[:, idx:idx + 2 * h]  # (r, r, 2h)
    fc1_c = fact_c[:, :, :h].reshape(r, h * r)
    fc2_c = fact_c[:, :, h:].reshape(r, h * r)
    hid = mlp.fc1.base(x) + (((x @ u.t()) @ fc1_c).reshape(b, n, h, r) @ v.t()).reshape(b, n, h * d) * s
    act = mlp.act(hid)
    code = (act.reshape(b, n, h, d) @ u.t()).reshape(b, n, h * r)
    return mlp.fc2.base(act) + ((code @ fc2_c.t()) @ v.t()) * s


def _both(model, block: int = 1):
    f, mlp = model.fact, model.vit.blocks[block].mlp
    h = mlp.fc1.base.out_features // mlp.fc1.base.in_features
    idx = block * (4 + 2 * h) + 4  # positions before this MLP: the earlier blocks' and this attention's q, k, v, proj
    torch.manual_seed(3)
    x = torch.randn(2, 5, mlp.fc1.base.in_features, dtype=torch.float64)
    with torch.no_grad():
        return mlp(x), authors_mlp(x, mlp, f.u, f.v, f.core, f.coef, idx, 0.7)


@pytest.mark.parametrize("rank", [4, 3])  # 3: rank not a multiple of the chunk count, the reshape mixes more
def test_official_layout_equals_the_authors_indexing(make_tiny_vit, rank):
    ours, ref = _both(_fact_tk(make_tiny_vit, official=True, rank=rank))
    torch.testing.assert_close(ours, ref, rtol=0, atol=1e-12)


def test_clean_layout_is_a_different_function(make_tiny_vit):
    """Same factors, the paper's per-chunk cores: the authors' numbers need the official layout."""
    ours, ref = _both(_fact_tk(make_tiny_vit, official=False))
    assert (ours - ref).abs().max() > 1e-3


def test_official_layout_merges_exactly(make_tiny_vit):
    model = _fact_tk(make_tiny_vit, official=True)
    x = torch.randn(2, 3, 32, 32, dtype=torch.float64)
    with torch.no_grad():
        torch.testing.assert_close(model.merge()(x), model(x), rtol=0, atol=1e-10)


def test_official_layout_is_tk_only():
    from peftbench.errors import UsageError

    with pytest.raises(UsageError, match="official_layout"):
        build_dataclass(get_method("fact").config_cls, {"official_layout": True}, "fact")
