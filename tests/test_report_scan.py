"""What `peftbench report DIR` reads: records by content, skipped files counted, older records still readable."""

from __future__ import annotations

import csv
import json

from peftbench.cli import main
from peftbench.records import load_records


def test_report_reads_only_records_and_counts_what_it_skipped(tiny_run_argv, vtab_root, tmp_path, capsys):
    top = tmp_path / "top"
    assert main(tiny_run_argv(vtab_root, top / "runs", methods="linear")) == 0
    (record,) = (top / "runs").rglob("seed0-*.json")
    for n in range(30):  # a big unrelated tree: configs, package metadata, another tool's outputs
        (top / "other" / f"d{n % 3}").mkdir(parents=True, exist_ok=True)
        (top / "other" / f"d{n % 3}" / f"cfg{n}.json").write_text('{"run_id": "x"}')
    (top / "deep" / "a" / "b" / "c" / "d" / "e").mkdir(parents=True)
    (top / "deep" / "a" / "b" / "c" / "d" / "e" / record.name).write_text(record.read_text())  # too deep
    foreign = json.loads(record.read_text()) | {"tool": "othertool"}
    (top / "other" / "seed0-0123456789abcdef.json").write_text(json.dumps(foreign))
    capsys.readouterr()
    assert main(["report", str(top)]) == 0
    out = capsys.readouterr().out
    assert ("warning: skipped 30 JSON file(s), each not a peftbench record (no 'tool' or 'schema' field: 30), "
            "e.g. ") in out
    assert "seed0-0123456789abcdef.json: not a peftbench record (written by 'othertool', not peftbench)" in out
    assert len(list(csv.DictReader((top / "report" / "records.csv").open()))) == 1  # not the too-deep copy


def test_report_of_a_folder_without_records_writes_nothing(tmp_path, capsys):
    (tmp_path / "x.json").write_text("{}")
    assert main(["report", str(tmp_path)]) == 2
    captured = capsys.readouterr()
    assert "warning: skipped 1 JSON file(s), each not a peftbench record" in captured.out
    assert captured.err.startswith("error: no peftbench records under") and not (tmp_path / "report").exists()


def test_records_carry_the_tool_marker_and_old_ones_stay_readable(tiny_run_argv, vtab_root, tmp_path):
    out = tmp_path / "runs"
    assert main(tiny_run_argv(vtab_root, out, methods="linear")) == 0
    (path,) = out.rglob("seed0-*.json")
    rec = json.loads(path.read_text())
    assert rec["tool"] == "peftbench" and rec["schema"] == 1
    del rec["tool"]  # a record written before the marker existed
    path.write_text(json.dumps(rec))
    assert len(load_records(out)[0]) == 1
