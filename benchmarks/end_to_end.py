"""End-to-end wall time of one method over N tasks, with the decode / prepare / train / eval breakdown.

Runs the real sweep (``peftbench.runner.run_sweep``) into a fresh output folder, then reads the
phase times back from the records. It also measures the data path on its own — turning index
batches of the cached uint8 images into normalised model inputs on the device, one epoch of the
training split — and prints it as a fraction of a training epoch: the baseline measured in
the same run is the training itself.

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
from peftbench.data.tasks import resolve_tasks
from peftbench.records import load_records
from peftbench.runner import SweepRequest, resolve_device, run_sweep


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
    with tempfile.TemporaryDirectory() as tmp:
        out, cache = Path(tmp) / "runs", Path(tmp) / "cache"
        req = SweepRequest(methods=[args.method], tasks=args.tasks, suite=args.suite, data_root=args.synthetic,
                           out=out, backbone=args.backbone, weights=args.weights, cache_dir=cache,
                           device=args.device, sets=[f"epochs={args.epochs}", "bench_steps=0", *args.sets])
        start = time.perf_counter()
        run_sweep(req)
        total = time.perf_counter() - start
        records = sorted(load_records(out)[0], key=lambda r: r["task"])
        phases = {"decode": 0.0, "prepare": 0.0, "train": 0.0, "eval": 0.0}
        for rec in records:
            wall = rec["metrics"].get("wall_s", {})
            row = {"task": rec["task"], "status": rec["status"], "decode_s": wall.get("data"),
                   "prepare_s": wall.get("prepare"), "train_s": wall.get("train"), "eval_s": wall.get("eval"),
                   "test_top1": rec["metrics"].get("test_top1")}
            for key, name in (("data", "decode"), ("prepare", "prepare"), ("train", "train"), ("eval", "eval")):
                phases[name] += wall.get(key) or 0.0
            bb, cfg = rec["backbone"], rec["config"]["train"]
            epoch_s = (wall.get("train") or 0.0) / cfg["epochs"]
            dp = data_path_seconds(args.synthetic, args.suite, rec["task"], tuple(bb["img_size"]), bb["mean"],
                                   bb["std"], bb["interpolation"], cfg["batch_size"], device, cache)
            row.update({"train_epoch_s": round(epoch_s, 3), "data_path_epoch_s": round(dp, 3),
                        "data_path_fraction_of_train": round(dp / epoch_s, 3) if epoch_s else None})
            print(json.dumps(row), flush=True)
        print(json.dumps({"method": args.method, "tasks": len(records), "epochs": args.epochs,
                          "device": str(device), "backbone": args.backbone, "total_wall_s": round(total, 1),
                          **{f"{k}_s": round(v, 1) for k, v in phases.items()}}))


if __name__ == "__main__":
    main()
