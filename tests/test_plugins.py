"""Methods from a ``--plugin`` file: name clashes, the same file twice, and a plugin's bugs (logits of the
wrong shape, errors in its build or forward, a ``merge()`` that raises) reported in one line naming it."""

from __future__ import annotations

import os
import subprocess
import sys
import uuid
from pathlib import Path

import pytest

from peftbench.catalog import InspectRequest, inspect_method
from peftbench.cli import main
from peftbench.errors import UsageError
from peftbench.records import load_records
from peftbench.registry import get_method, load_plugin
from peftbench.report import summary_tables

REPO = Path(__file__).resolve().parent.parent
RUN = ["run", "--suite", "vtab1k", "--backbone", "vit_tiny_patch16_224", "--weights", "none", "--img-size", "32",
       "--set", "epochs=1", "--set", "warmup_epochs=0", "--set", "bench_steps=1", "--set", "bench_warmup=0",
       "--no-report"]

TEMPLATE = '''
from dataclasses import dataclass

from peftbench.method_api import FrozenBackboneModel
from peftbench.registry import register_method


@dataclass
class Cfg:
    pass


class Model(FrozenBackboneModel):
    def forward(self, images):
        logits = self.vit(images)
        {forward}
        return logits

    def merge(self):
        {merge}
        return self


@register_method("{name}", config=Cfg, description="a test plugin")
def build(backbone, num_classes, cfg, ctx):
    {build}
    for p in backbone.parameters():
        p.requires_grad_(False)
    for p in backbone.get_classifier().parameters():
        p.requires_grad_(True)
    return Model(backbone)
'''


def _plugin(folder: Path, forward: str = "pass", merge: str = "pass", build: str = "pass",
            name: str | None = None) -> tuple[Path, str]:
    """A plugin file registering one method under a fresh name (the registry is per process)."""
    name = name or f"plug_{uuid.uuid4().hex[:8]}"
    path = folder / f"{name}.py"
    path.write_text(TEMPLATE.format(name=name, forward=forward, merge=merge, build=build))
    return path, name


def _sweep(vtab_root: Path, out: Path, plugin: Path, methods: str) -> tuple[int, dict[str, dict]]:
    code = main(RUN + ["--plugin", str(plugin), "--methods", methods, "--tasks", "eurosat",
                       "--data-root", str(vtab_root), "--out", str(out)])
    return code, {r["method"]: r for r in load_records(out)[0]}


def test_plugin_reusing_a_builtin_name_is_one_line_naming_the_file(tmp_path):
    """In a fresh process the plugin is imported before the built-ins: it must still be the one refused."""
    path, _ = _plugin(tmp_path, name="linear")
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    proc = subprocess.run([sys.executable, "-m", "peftbench.cli", "methods", "--plugin", str(path)], cwd=REPO,
                          env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode != 0
    err = proc.stderr.strip()
    assert err.splitlines() == [f"error: --plugin {path}: method 'linear' is already registered (by the built-in "
                                "peftbench.methods.linear); give this one another name"], err


def test_the_same_plugin_twice_is_harmless(tmp_path, capsys):
    path, name = _plugin(tmp_path)
    assert main(["methods", "--plugin", str(path), "--plugin", str(path)]) == 0
    assert name in capsys.readouterr().out
    load_plugin(path)  # and once more in the same process
    assert get_method(name).plugin == str(path)


def test_two_plugins_with_one_name_name_both_files(tmp_path):
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    first, name = _plugin(tmp_path / "a")
    second, _ = _plugin(tmp_path / "b", name=name)
    load_plugin(first)
    with pytest.raises(UsageError, match=f"--plugin {second}: method '{name}' is already registered "
                                         f"\\(by plugin {first}\\)"):
        load_plugin(second)


def test_logits_of_the_wrong_shape_fail_the_run_naming_the_method(vtab_root, tmp_path):
    path, name = _plugin(tmp_path, forward="logits = logits.repeat(1, 2)")  # 20 columns for 10 classes
    code, recs = _sweep(vtab_root, tmp_path / "runs", path, f"{name},linear")
    assert code != 0
    assert recs[name]["status"] == "failed"
    assert recs[name]["reason"] == (f"MethodError: method '{name}' (plugin {path}): its forward returned logits of "
                                    "shape (2, 20) for 2 images; expected (2, 10), (images, classes)")
    assert recs["linear"]["status"] == "complete"  # the sweep went on


def test_inspect_refuses_wrong_logits_in_one_line(tmp_path):
    path, name = _plugin(tmp_path, forward="logits = logits[:, :1]")
    load_plugin(path)
    with pytest.raises(UsageError, match=rf"method '{name}' \(plugin {path}\): its forward returned logits of "
                                         r"shape \(2, 1\) for 2 images; expected \(2, 7\)"):
        inspect_method(InspectRequest(name, "vit_tiny_patch16_224", img_size=32, num_classes=7))


def _line(path: Path, code: str) -> int:
    return [line.strip() for line in path.read_text().splitlines()].index(code) + 1


@pytest.mark.parametrize("where, code, func", [
    ("build", "raise RuntimeError('boom in build')", "build"),
    ("forward", "if self.training: raise ZeroDivisionError('boom in forward')", "forward"),
])
def test_errors_inside_a_plugin_name_its_file_and_line(vtab_root, tmp_path, where, code, func):
    path, name = _plugin(tmp_path, **{where: code})
    line = _line(path, code)
    _, recs = _sweep(vtab_root, tmp_path / "runs", path, name)
    rec = recs[name]
    assert rec["status"] == "failed"
    assert rec["reason"].startswith(("RuntimeError: boom in build", "ZeroDivisionError: boom in forward"))
    assert rec["reason"].endswith(f"(raised in plugin {path}, line {line}, in {func})"), rec["reason"]


def test_inspect_names_the_plugin_when_its_build_raises(tmp_path):
    path, name = _plugin(tmp_path, build="raise KeyError('no such layer')")
    load_plugin(path)
    with pytest.raises(UsageError) as info:
        inspect_method(InspectRequest(name, "vit_tiny_patch16_224", img_size=32, num_classes=7))
    line = _line(path, "raise KeyError('no such layer')")
    assert str(info.value) == f"{name}: KeyError: 'no such layer' (raised in plugin {path}, line {line}, in build)"


def test_merge_that_raises_falls_back_to_the_unmerged_model(vtab_root, tmp_path):
    path, name = _plugin(tmp_path, merge="raise RuntimeError('cannot fold')")
    code, recs = _sweep(vtab_root, tmp_path / "runs", path, name)
    rec = recs[name]
    assert code == 0 and rec["status"] == "complete"
    metrics = rec["metrics"]
    assert metrics["merged"] is False and metrics["gflops"] > 0 and metrics["infer_img_per_s"] > 0
    line = _line(path, "raise RuntimeError('cannot fold')")
    assert metrics["merge_error"] == f"RuntimeError: cannot fold (raised in plugin {path}, line {line}, in merge)"
    assert any(n.startswith(f"{name}: merge() failed (RuntimeError: cannot fold") for n in rec["notices"])
    (table,) = summary_tables(list(recs.values()))
    assert any(note.startswith(f"{name}: merge() failed in 1 run(s) (RuntimeError: cannot fold")
               and note.endswith("its GFLOPs and inference img/s are of the unmerged model.") for note in table.notes)


def test_inspect_measures_unmerged_when_merge_raises(tmp_path):
    path, name = _plugin(tmp_path, merge="raise RuntimeError('cannot fold')")
    load_plugin(path)
    info = inspect_method(InspectRequest(name, "vit_tiny_patch16_224", img_size=32, num_classes=7))
    assert info["merged"] is False and info["merge_error"].startswith("RuntimeError: cannot fold (raised in plugin")
