"""Synthetic data is marked as timing only; reference rows appear only beside the setting they were
published for."""

from __future__ import annotations

import json

from peftbench.cli import main
from peftbench.records import load_records


def test_synthetic_data_is_marked_and_its_tables_say_timing_only(tiny_run_argv, tmp_path, capsys):
    synth, out = tmp_path / "synth", tmp_path / "runs"
    assert main(["make-synthetic", "--like", "vtab1k", "--tasks", "eurosat", "--scale", "0.01",
                 "--out", str(synth)]) == 0
    assert main(["run", *tiny_run_argv.options[:-1], "--methods", "linear", "--tasks", "eurosat", "--data-root",
                 str(synth),
                 "--out", str(out)]) == 0
    (rec,) = load_records(out)[0]
    assert rec["data"]["synthetic"] is True
    summary = (out / "report" / "summary.md").read_text()
    assert "## Table 1 — ⚠ SYNTHETIC DATA — timing only — " in summary
    assert "No published reference rows: this table's data are synthetic" in summary


def _as_published_setting(rec: dict, **backbone) -> dict:
    rec = json.loads(json.dumps(rec))
    rec["backbone"].update({"name": "vit_base_patch16_224.orig_in21k", "weights": "ViT-B_16.npz",
                            "checksum": "c" * 64, **backbone})
    rec["backbone"]["timm_name"] = rec["backbone"]["name"]  # what timm built (the report's key)
    return rec


def test_reference_rows_only_beside_the_backbone_they_were_published_for(tiny_run_argv, vtab_root, tmp_path):
    from peftbench.report.aggregate import load_reference, summary_tables

    assert main(tiny_run_argv(vtab_root, tmp_path / "runs", methods="linear")) == 0
    (rec,) = load_records(tmp_path / "runs")[0]
    assert rec["data"]["synthetic"] is False
    (vit_b,) = summary_tables([_as_published_setting(rec)], load_reference())
    assert [r.method for r in vit_b.references]  # the published linear probe etc. on eurosat
    (other,) = summary_tables([_as_published_setting(rec, name="vit_small_patch16_224.augreg_in21k")],
                              load_reference())
    assert other.references == [] and "this table's backbone is vit_small_patch16_224.augreg_in21k" in \
        other.reference_notes[0]
    synthetic = _as_published_setting(rec)
    synthetic["data"]["synthetic"] = True
    (table,) = summary_tables([synthetic], load_reference())
    assert table.references == [] and "SYNTHETIC DATA — timing only" in table.title() + table.short_title()
