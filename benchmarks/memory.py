"""Peak training memory per method, against a plain timm full fine-tuning loop measured in the same run.

CUDA: ``torch.cuda.max_memory_allocated`` around warm-up + a few training steps, each method
in turn in this process (caches emptied and counters reset between them). CPU: every
measurement runs in its own subprocess and reports its peak resident set, since the process
high-water mark cannot be reset. Prints one JSON line per method, then ratios to the baseline.

    python benchmarks/memory.py --quick
    python benchmarks/memory.py --backbone vit_base_patch16_224 --batch 64     # on a GPU
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys

import torch
from throughput import KNOBS, baseline_step  # the same baseline and method settings (benchmarks/)


def one(method: str, backbone: str, img_size: int | None, batch: int, steps: int, device: torch.device) -> dict:
    import timm

    from peftbench.backbone import load_backbone
    from peftbench.config import TrainConfig, build_dataclass
    from peftbench.method_api import BuildContext
    from peftbench.registry import get_method
    from peftbench.train import autocast_factory, make_optimizer, make_step

    precision = "bf16" if device.type == "cuda" else "fp32"
    autocast = autocast_factory(precision, device)
    if device.type == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)
    torch.manual_seed(0)
    if method == "timm_baseline":
        model = timm.create_model(backbone, pretrained=False, num_classes=100,
                                  **({"img_size": img_size} if img_size else {})).to(device)
        size = model.patch_embed.img_size
        step = baseline_step(model, device, autocast)
    else:
        bb = load_backbone(backbone, "none", img_size)
        size = bb.preprocess.img_size
        spec = get_method(method)
        cfg = TrainConfig(precision=precision)
        ctx = BuildContext(preprocess=bb.preprocess, device=device, backbone_checksum=bb.checksum)
        mcfg = build_dataclass(spec.config_cls, KNOBS.get(method, {}), method)
        model = spec.build(bb.instantiate(100).to(device), 100, mcfg, ctx).to(device)
        step = make_step(model, make_optimizer(model, cfg, device), cfg, autocast)
    model.train()
    x = torch.randn(batch, 3, *size, device=device)
    y = torch.randint(0, 100, (batch,), device=device)
    for _ in range(steps):
        step(x, y)
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        peak, kind = torch.cuda.max_memory_allocated(device), "cuda_max_allocated"
    else:
        peak, kind = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024, "process_peak_rss"
    return {"method": method, "backbone": backbone, "batch": batch, "device": str(device), "precision": precision,
            "peak_mem_bytes": int(peak), "peak_mem_gib": round(peak / 2**30, 3), "kind": kind}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="CPU-sized: ViT-Tiny at 64 px, batch 16")
    ap.add_argument("--backbone", default="vit_base_patch16_224")
    ap.add_argument("--img-size", type=int, default=None)
    ap.add_argument("--methods", default="linear,full,vpt_shallow,vpt_deep,ship")
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--steps", type=int, default=3)
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--child", default=None, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.quick:
        args.backbone, args.img_size, args.batch, args.steps = "vit_tiny_patch16_224", 64, 16, 2
    device = torch.device(args.device)
    if args.child:
        print(json.dumps(one(args.child, args.backbone, args.img_size, args.batch, args.steps, device)))
        return
    rows = []
    for method in ["timm_baseline", *[m for m in args.methods.split(",") if m]]:
        if device.type == "cuda":
            row = one(method, args.backbone, args.img_size, args.batch, args.steps, device)
        else:
            cmd = [sys.executable, __file__, "--child", method, "--backbone", args.backbone, "--batch",
                   str(args.batch), "--steps", str(args.steps), "--device", args.device]
            if args.img_size:
                cmd += ["--img-size", str(args.img_size)]
            out = subprocess.run(cmd, capture_output=True, text=True, check=True).stdout
            row = json.loads(out.strip().splitlines()[-1])
        print(json.dumps(row), flush=True)
        rows.append(row)
    base = rows[0]["peak_mem_bytes"]
    for row in rows[1:]:
        print(json.dumps({"ratio_to_timm_baseline": row["method"], "peak_mem": round(row["peak_mem_bytes"] / base, 3)}))


if __name__ == "__main__":
    main()
