"""End-to-end wall time of one method over N tasks, with the decode / prepare / train / eval breakdown.

Runs the real sweep (``peftbench.sweep.run.run_sweep``) into a fresh output folder, then reads the
phase times back from the records. It also measures the data path on its own — turning index
batches of the cached uint8 images into normalised model inputs on the device, one epoch of the
training split — and prints it as a fraction of a training epoch: the baseline measured in
the same run is the training itself.

Each task is a sweep of its own (in one process, so compiled graphs carry over) and its line is
printed as soon as it finishes, with the running extrapolation to all 19 VTAB-1k tasks: a time
limit that cuts the last task off keeps the lines of those before it.

    python benchmarks/end_to_end.py --quick                 # CPU: mini suite, 2 tasks, 2 epochs
    python benchmarks/end_to_end.py --synthetic /data/synth-vtab --tasks all --method vpt_deep \
        --backbone vit_base_patch16_224 --epochs 100        # GPU: the full-size synthetic VTAB-1k
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import torch

from peftbench.data.images import Batches, load_split
from peftbench.data.splits import read_task_lists
from peftbench.data.tasks import VTAB1K, resolve_tasks
from peftbench.records import load_records
from peftbench.sweep.request import SweepRequest
from peftbench.sweep.resolve import resolve_device
from peftbench.sweep.run import run_sweep


def data_path_seconds(root: Path, suite: str, task_name: str, img_size: tuple[int, int], mean, std, interp: str,
                      batch: int, device: torch.device, cache: Path) -> float:
    """One epoch of the training split through the data path alone (cached arrays -> device inputs)."""
    task = resolve_tasks(task_name, suite)[0]
    entries = read_task_lists(root, task).splits["train800val200"]
    data = load_split(entries, img_size, interp, "train800val200", cache)
    batches = Batches(data, img_size, mean, std, interp, device)
    gen = torch.Generator().manual_seed(0)
    start = time.perf_counter()
    for x, _ in batches.iterate(batch, shuffle=True, generator=gen):
        x.sum().item()  # force the work (and a device sync)
    return time.perf_counter() - start


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="CPU-sized: mini suite, 2 tasks, 2 epochs")
    ap.add_argument("--method", default="vpt_deep")
    ap.add_argument("--suite", default="vtab1k")
    ap.add_argument("--synthetic", type=Path, help="data root made by `peftbench make-synthetic`")
    ap.add_argument("--tasks", default="all")
    ap.add_argument("--backbone", default="vit_base_patch16_224")
    ap.add_argument("--weights", default="none")
    ap.add_argument("--epochs", type=int, default=100)
    ap.add_argument("--device", default="auto")
    ap.add_argument("--set", dest="sets", action="append", default=[])
    args = ap.parse_args()
    if args.quick:
        from peftbench.data.mini import ensure_mini_suite
        from peftbench.models import MINI_VIT, mini_weights_path

        args.suite, args.synthetic = "mini", ensure_mini_suite()
        args.tasks = "digits,count" if args.tasks == "all" else args.tasks
        args.backbone, args.weights, args.epochs = MINI_VIT, str(mini_weights_path()), 2
    if args.synthetic is None:
        ap.error("--synthetic DIR is required (or --quick)")
    device = resolve_device(args.device)
    measured: list[dict] = []
    with tempfile.TemporaryDirectory() as tmp:
        out, cache = Path(tmp) / "runs", Path(tmp) / "cache"
        start = time.perf_counter()
        for task in resolve_tasks(args.tasks, args.suite):
            req = SweepRequest(methods=[args.method], tasks=task.name, suite=args.suite, data_root=args.synthetic,
                               out=out, backbone=args.backbone, weights=args.weights, cache_dir=cache,
                               device=args.device, sets=[f"epochs={args.epochs}", "bench_steps=0", *args.sets])
            run_sweep(req)
            rec = next(r for r in load_records(out)[0] if r["task"] == task.name)
            row = task_row(rec, args, device, cache)
            # the sizes this run evaluated and decoded (a scaled-down stand-in has fewer than VTAB-1k)
            splits = rec["data"]["splits"]
            measured.append({**row, "test_size": splits.get(rec["data"]["eval_split"], 0),
                             "train_size": splits.get(rec["data"]["train_split"], 0)})
            print(json.dumps({**row, **extrapolate(measured)}), flush=True)
        total = time.perf_counter() - start
        phases = {k: round(sum(r[f"{k}_s"] or 0.0 for r in measured), 1)
                  for k in ("decode", "prepare", "train", "eval")}
        print(json.dumps({"method": args.method, "tasks": len(measured), "epochs": args.epochs,
                          "device": str(device), "backbone": args.backbone, "total_wall_s": round(total, 1),
                          **{f"{k}_s": v for k, v in phases.items()}, **extrapolate(measured)}), flush=True)


def task_row(rec: dict, args: argparse.Namespace, device: torch.device, cache: Path) -> dict:
    """One task's phase times (compile included in train and eval) and its data path's share of an epoch."""
    wall, m = rec["metrics"].get("wall_s", {}), rec["metrics"]
    row = {"task": rec["task"], "status": rec["status"], "decode_s": wall.get("data"), "prepare_s": wall.get("prepare"),
           "train_s": wall.get("train"), "eval_s": wall.get("eval"), "first_step_s": m.get("first_step_s"),
           "compiled": m.get("compiled"), "test_top1": m.get("test_top1")}
    bb, cfg = rec["backbone"], rec["config"]["train"]
    epoch_s = (wall.get("train") or 0.0) / cfg["epochs"]
    dp = data_path_seconds(args.synthetic, args.suite, rec["task"], tuple(bb["img_size"]), bb["mean"], bb["std"],
                           bb["interpolation"], cfg["batch_size"], device, cache)
    row.update({"train_epoch_s": round(epoch_s, 3), "data_path_epoch_s": round(dp, 3),
                "data_path_fraction_of_train": round(dp / epoch_s, 3) if epoch_s else None})
    return row


def extrapolate(measured: list[dict]) -> dict:
    """All 19 VTAB-1k tasks from the tasks measured so far: every task trains on 1,000 images, so training
    (compile included) and preparation are taken per task; evaluation per test image, decoding per image."""
    n_meas = len(measured)
    per_task = sum((r["train_s"] or 0.0) + (r["prepare_s"] or 0.0) for r in measured) / n_meas
    tested = sum(r["test_size"] for r in measured)
    eval_per_image = sum(r["eval_s"] or 0.0 for r in measured) / max(1, tested)
    decoded = tested + sum(r["train_size"] for r in measured)
    decode_per_image = sum(r["decode_s"] or 0.0 for r in measured) / max(1, decoded)
    all_test = sum(t.test_size for t in VTAB1K)
    runs = len(VTAB1K) * per_task + eval_per_image * all_test
    decode = decode_per_image * (all_test + 1000 * len(VTAB1K))  # once: a later sweep reads the decoded cache
    return {"extrapolated_19_tasks_s": round(runs + decode, 1), "extrapolated_19_tasks_cached_data_s": round(runs, 1),
            "extrapolated_from_tasks": n_meas, "target_19_tasks_s": 900}


if __name__ == "__main__":
    main()
