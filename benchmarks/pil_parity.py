"""Does the fast data path change accuracy? Train the same runs with it and with the reference PIL pipeline.

The reference pipeline is what the methods' own repositories do every epoch: open the file
with PIL, ``Resize(size, bicubic)`` → ``ToTensor`` → ``Normalize`` (torchvision transforms,
on the CPU, per batch). peftbench decodes once, keeps uint8 and resizes / normalises on the
device. This script runs ``peftbench.sweep.run.run_sweep`` twice over the same methods, tasks and
seeds — once as shipped, once with the batches built by the reference pipeline — and prints:

- the largest difference between the two pipelines' input tensors (normalised units) per task;
- test top-1 per run for both pipelines, the mean paired difference and the seed standard
  deviation of the fast path, and whether the difference is within seed noise
  (|mean difference| <= 2 x the standard error of the paired differences, or <= one test image).

The mini suite's images are 32×32; at the backbone's own 32 px the resize is the identity, so
the default runs at ``--img-size 48`` (position embeddings resampled by timm), where both
pipelines must upsample.

    python benchmarks/pil_parity.py                      # mini suite, vpt_deep, 2 tasks x 3 seeds, 48 px
                                                         # (6 min on 2 CPU cores; the PIL half takes longer)
    python benchmarks/pil_parity.py --quick              # 1 task x 2 seeds, 2 epochs (a smoke run)
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
from pathlib import Path
from unittest import mock

import numpy as np
import torch
from PIL import Image
from torchvision import transforms

from peftbench.backbone import load_backbone
from peftbench.data.images import Batches, SplitData, load_split
from peftbench.data.splits import Entry, read_task_lists
from peftbench.data.tasks import resolve_tasks
from peftbench.records import load_records
from peftbench.sweep import execute
from peftbench.sweep.request import SweepRequest
from peftbench.sweep.resolve import builtin_data_root, load_suite, resolve_weights
from peftbench.sweep.run import run_sweep

_INTERP = {"bicubic": transforms.InterpolationMode.BICUBIC, "bilinear": transforms.InterpolationMode.BILINEAR,
           "nearest": transforms.InterpolationMode.NEAREST}


class ReferenceBatches(Batches):
    """The per-epoch PIL pipeline behind the :class:`Batches` interface: decode, resize and normalise per batch."""

    entries_by_checksum: dict[str, list[Entry]] = {}

    def __init__(self, data: SplitData, target, mean, std, interpolation, device, pin=None):
        super().__init__(data, target, mean, std, interpolation, device, pin)
        self.entries = self.entries_by_checksum[data.checksum]
        self.transform = transforms.Compose([
            transforms.Resize(tuple(target), interpolation=_INTERP.get(interpolation, _INTERP["bicubic"])),
            transforms.ToTensor(), transforms.Normalize(mean, std)])

    def batch(self, idx: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
        images = []
        for i in idx:
            with Image.open(self.entries[int(i)].path) as img:
                images.append(self.transform(img.convert("RGB")))
        return torch.stack(images).to(self.device), self.labels[idx].to(self.device)


def max_input_difference(data: SplitData, pre) -> float:
    """Largest |fast - reference| over one split's model inputs, in normalised units."""
    fast = Batches(data, pre.img_size, pre.mean, pre.std, pre.interpolation, torch.device("cpu"))
    ref = ReferenceBatches(data, pre.img_size, pre.mean, pre.std, pre.interpolation, torch.device("cpu"))
    worst = 0.0
    for start in range(0, len(data), 200):
        idx = np.arange(start, min(start + 200, len(data)))
        worst = max(worst, float((fast.batch(idx)[0] - ref.batch(idx)[0]).abs().max()))
    return worst


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="1 task, 2 seeds, 2 epochs: checks the script runs")
    ap.add_argument("--method", default="vpt_deep")
    ap.add_argument("--tasks", default="digits,texture")
    ap.add_argument("--seeds", default="0,1,2")
    ap.add_argument("--img-size", type=int, default=48)
    ap.add_argument("--set", dest="sets", action="append", default=[])
    args = ap.parse_args()
    if args.quick:
        args.tasks, args.seeds, args.sets = args.tasks.split(",")[0], "0,1", [*args.sets, "epochs=2"]
    seeds = [int(s) for s in args.seeds.split(",")]
    root = builtin_data_root("mini")
    suite = load_suite("mini", None)
    backbone = load_backbone(suite.backbone, resolve_weights(suite.weights), args.img_size)
    tasks = [t.name for t in resolve_tasks(args.tasks, "mini")]

    pre = backbone.preprocess
    results: dict[str, dict[tuple[str, int], float]] = {}
    test_size: dict[str, int] = {}
    with tempfile.TemporaryDirectory() as tmp:
        cache = Path(tmp) / "cache"  # decoded once here, then reused by both sweeps
        # register every split's file list under its checksum, so ReferenceBatches can find the files
        for name in tasks:
            lists = read_task_lists(root, resolve_tasks(name, "mini")[0])
            loaded = {split: load_split(entries, pre.img_size, pre.interpolation, split, cache)
                      for split, entries in lists.splits.items()}
            for split, data in loaded.items():
                ReferenceBatches.entries_by_checksum[data.checksum] = list(lists.splits[split])
            test_size[name] = len(loaded["test"])
            diff = max_input_difference(loaded["test"], pre)
            print(json.dumps({"task": name, "img_size": args.img_size, "max_abs_input_diff": round(diff, 4)}),
                  flush=True)

        for pipeline in ("fast", "reference"):
            out = Path(tmp) / pipeline
            req = SweepRequest(methods=[args.method], tasks=",".join(tasks), suite="mini", seeds=seeds,
                               out=out, img_size=args.img_size, cache_dir=cache,
                               sets=["bench_steps=0", *args.sets])
            if pipeline == "fast":
                run_sweep(req)
            else:
                with mock.patch.object(execute, "Batches", ReferenceBatches):
                    run_sweep(req)
            results[pipeline] = {(r["task"], r["seed"]): r["metrics"]["test_top1"] for r in load_records(out)[0]}
            for (task, seed), top1 in sorted(results[pipeline].items()):
                print(json.dumps({"pipeline": pipeline, "task": task, "seed": seed, "test_top1": round(top1, 2)}),
                      flush=True)

    for name in tasks:
        fast = [results["fast"][(name, s)] for s in seeds]
        ref = [results["reference"][(name, s)] for s in seeds]
        diffs = [f - r for f, r in zip(fast, ref)]
        mean_diff = statistics.fmean(diffs)
        sem = statistics.stdev(diffs) / len(diffs) ** 0.5 if len(diffs) > 1 else None
        one_image = 100.0 / test_size[name]
        print(json.dumps({
            "task": name, "method": args.method, "seeds": len(seeds),
            "fast_mean": round(statistics.fmean(fast), 2),
            "fast_seed_std": round(statistics.stdev(fast), 2) if len(fast) > 1 else None,
            "reference_mean": round(statistics.fmean(ref), 2),
            "mean_diff_fast_minus_reference": round(mean_diff, 2),
            "paired_diff_sem": None if sem is None else round(sem, 2),
            "within_seed_noise": bool(abs(mean_diff) <= max(2 * (sem or 0.0), one_image))}), flush=True)


if __name__ == "__main__":
    main()
