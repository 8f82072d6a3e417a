"""merge() contract over every registered method that offers it: a plain model with nothing trainable.

Every mergeable method (hand-written and the peft wrappers alike) must hand back a model in which no
parameter has ``requires_grad``, and must leave the trained model as it was.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from peftbench.backbone import Preprocess
from peftbench.config import build_dataclass
from peftbench.data.images import Batches, SplitData
from peftbench.method_api import BuildContext
from peftbench.registry import available_methods, get_method

NUM_CLASSES = 5
TINY_KNOBS = {"ship": {"num_prototypes": 4, "prompt_length": 3}, "vpt_deep": {"prompt_length": 3},
              "vpt_shallow": {"prompt_length": 3}, "peft_vera": {"r": 16}}
# methods known to fold into plain weights: the contract must not pass vacuously if merge() disappears
KNOWN_MERGEABLE = {"lora", "ssf", "repadapter", "fact", "fact_tk", "peft_lora", "peft_dora", "peft_ia3",
                   "peft_oft", "peft_boft", "peft_vera", "peft_ln"}


def _build(name: str, make_tiny_vit, tmp_path) -> torch.nn.Module:
    rng = np.random.default_rng(0)
    data = SplitData(images=rng.integers(0, 256, (12, 32, 32, 3), dtype=np.uint8),
                     labels=rng.integers(0, NUM_CLASSES, 12), checksum="merge-contract")
    pre = Preprocess((32, 32), "bicubic", (0.5,) * 3, (0.5,) * 3)
    ctx = BuildContext(preprocess=pre, device=torch.device("cpu"), backbone_checksum="tiny", cache_dir=tmp_path,
                       train_batches=Batches(data, (32, 32), pre.mean, pre.std, pre.interpolation,
                                             torch.device("cpu")))
    spec = get_method(name)
    cfg = build_dataclass(spec.config_cls, TINY_KNOBS.get(name, {}), name)
    torch.manual_seed(0)
    return spec.build(make_tiny_vit(NUM_CLASSES), NUM_CLASSES, cfg, ctx)


@pytest.mark.parametrize("name", available_methods())
def test_merge_leaves_nothing_trainable(name, make_tiny_vit, tmp_path):
    model = _build(name, make_tiny_vit, tmp_path)
    if not hasattr(model, "merge"):
        assert name not in KNOWN_MERGEABLE, f"{name} lost its merge() hook"
        return  # not mergeable: nothing to check (the list above keeps this from passing vacuously)
    trainable_before = [n for n, p in model.named_parameters() if p.requires_grad]
    merged = model.merge()
    still = [n for n, p in merged.named_parameters() if p.requires_grad]
    assert not still, f"{name}.merge() left trainable parameters: {still[:5]}"
    assert [n for n, p in model.named_parameters() if p.requires_grad] == trainable_before  # the model itself untouched


def test_every_known_mergeable_method_is_registered_and_merges(make_tiny_vit, tmp_path):
    assert KNOWN_MERGEABLE <= set(available_methods())
    assert all(hasattr(_build(n, make_tiny_vit, tmp_path), "merge") for n in sorted(KNOWN_MERGEABLE))
