"""`peftbench inspect --method ship` without data: the published grouping per task, or every block with a note."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest
import torch

from peftbench.cli import main

OFFICIAL = Path(__file__).parent / "data" / "ship_official"


def test_inspect_ship_with_a_task_uses_its_published_layers(capsys):
    """The README's example: the official cifar100 run's layers and trainable parameters (hparams.csv)."""
    assert main(["inspect", "--method", "ship", "--suite", "vtab1k", "--task", "cifar100", "--recipe", "official",
                 "--json"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["method_info"]["layers"] == [0, 2, 4, 6, 8, 11] and info["num_classes"] == 100
    assert info["trainable_params"] == 330_340  # trainable_params_shipped_code of the official cifar100 run
    assert info["method_info"]["layers_source"] == "published (cifar100, ViT-B/16 in21k)"


@pytest.mark.parametrize("row", list(csv.DictReader((OFFICIAL / "hparams.csv").open())), ids=lambda r: r["task"])
def test_every_vtab_task_gets_its_published_grouping_without_data(make_tiny_vit, row):
    """From the package's own copy of the affinity files and the suite's per-task threshold."""
    from peftbench.config import resolve
    from peftbench.data.tasks import resolve_tasks
    from peftbench.method_api import BuildContext
    from peftbench.methods.ship import PUBLISHED_AFFINITY
    from peftbench.registry import get_method
    from peftbench.sweep.resolve import load_suite

    assert PUBLISHED_AFFINITY.parents[1].name == "methods"  # shipped inside the package (peftbench.methods.ship)
    spec = get_method("ship")
    _, cfg, _ = resolve(spec, row["task"], load_suite("vtab1k", None), [("ship", "attribute_prompts", False)],
                        "official")
    (task,) = resolve_tasks(row["task"], "vtab1k")
    context = BuildContext(preprocess=None, device=torch.device("cpu"), task=task)
    spec.build(make_tiny_vit(5, depth=12), 5, cfg, context)
    assert context.info["layers"] == [int(i) for i in row["prompt_layers"].split()]


def test_inspect_ship_without_a_task_falls_back_to_every_block_with_a_note(capsys):
    assert main(["inspect", "--method", "ship"]) == 0
    out = capsys.readouterr().out
    assert out.startswith("defaults from suite mini (recipe peftbench/suites/mini.yaml)")
    assert "every block of 6 is counted as prompted" in out and "--task NAME" in out


def test_package_data_declares_the_affinity_files():
    text = (Path(__file__).parents[1] / "pyproject.toml").read_text()
    assert '"peftbench.methods.ship" = ["affinity/*.npy"]' in text
