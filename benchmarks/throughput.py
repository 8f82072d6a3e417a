"""Training and inference images/s per method against a plain timm loop, measured in the same run.

The baseline is what a user would write without the harness: ``timm.create_model`` with every
weight trainable, ``torch.optim.AdamW`` (fused on CUDA), cross-entropy, bf16 autocast on CUDA.
Each method runs through the harness's own step (``peftbench.train.make_step``) on the same
backbone, batch and device. Timing follows timm's benchmark: warm-up steps, synchronise, a
fixed random batch already on the device. Prints one JSON line per measurement (with its ratio to
the baseline of the same run), then ratios.

With ``--compile`` the baseline is ``torch.compile(model)`` (what a user would add) and the methods
run the harness's compiled step (``make_step(..., compiled=True)``) and compiled inference; the
row's ``seconds`` then include the compilation. ``ship_masked`` is SHIP with its one-call attention.

    python benchmarks/throughput.py --quick                  # CPU, small ViT, < 2 minutes
    python benchmarks/throughput.py --backbone vit_base_patch16_224 --batch 64 --infer-batch 256
"""

from __future__ import annotations

import argparse
import json
import statistics
import time

import timm
import torch
import torch.nn.functional as F

from peftbench.backbone import load_backbone
from peftbench.config import TrainConfig, build_dataclass
from peftbench.measure import throughput
from peftbench.method_api import BuildContext
from peftbench.registry import available_methods, get_method
from peftbench.train import autocast_factory, compile_once, forward, make_optimizer, make_step

# knobs for the comparison (SHIP gets explicit layers so it needs no data-dependent preparation)
KNOBS = {"vpt_deep": {"prompt_length": 50}, "vpt_shallow": {"prompt_length": 50},
         "ship": {"prompt_length": 50, "layers": "0,2,4,6,8,11", "attention": "split"},
         "ship_masked": {"prompt_length": 50, "layers": "0,2,4,6,8,11", "attention": "masked"}}


def baseline_step(model, device, autocast):
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4, fused=device.type == "cuda")

    def step(x, y):
        opt.zero_grad(set_to_none=True)
        with autocast():
            loss = F.cross_entropy(model(x), y)
        loss.backward()
        opt.step()

    return step


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="CPU-sized: small ViT at 32 px, few steps")
    ap.add_argument("--backbone", default="vit_base_patch16_224")
    ap.add_argument("--img-size", type=int, default=None)
    ap.add_argument("--methods", default=",".join(m for m in ("linear", "full", "vpt_shallow", "vpt_deep", "ship",
                                                            "ship_masked")
                                                  if m.removesuffix("_masked") in available_methods()))
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--infer-batch", type=int, default=256)
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--warmup", type=int, default=5)
    ap.add_argument("--num-classes", type=int, default=100)
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--compile", action="store_true", help="compiled baseline and compiled harness steps")
    ap.add_argument("--no-train", action="store_true", help="inference only (no training graphs to compile)")
    args = ap.parse_args()
    if args.quick:
        args.backbone, args.img_size = "vit_tiny_patch16_224", 64
        args.batch, args.infer_batch, args.steps, args.warmup = 32, 64, 5, 2
    device = torch.device(args.device)
    precision = "bf16" if device.type == "cuda" else "fp32"
    autocast = autocast_factory(precision, device)
    bb = load_backbone(args.backbone, "none", args.img_size)
    size = bb.preprocess.img_size
    common = {"device": str(device), "backbone": args.backbone, "img_size": size[0], "precision": precision,
              "train_batch": args.batch, "infer_batch": args.infer_batch, "compiled": args.compile}
    base: dict = {}
    if device.type == "cuda":
        common["gpu"] = torch.cuda.get_device_name(device)

    def measure(label, model, train_step, run=forward):
        model.eval()

        def infer(x, y):
            with torch.inference_mode(), autocast():
                run(model, x)

        t0 = time.perf_counter()
        inf = statistics.median(throughput(infer, args.infer_batch, size, args.num_classes, device, args.steps,
                                           args.warmup))
        model.train()
        tr = None if args.no_train else statistics.median(throughput(train_step, args.batch, size, args.num_classes,
                                                                     device, args.steps, args.warmup))
        row = {**common, "method": label, "train_img_per_s": tr and round(tr, 1), "infer_img_per_s": round(inf, 1),
               "seconds": round(time.perf_counter() - t0, 1)}
        if base:
            row["train_vs_timm"] = tr and round(tr / base["train_img_per_s"], 2)
            row["infer_vs_timm"] = round(inf / base["infer_img_per_s"], 2)
        print(json.dumps(row), flush=True)
        return row

    torch.manual_seed(0)
    base_model = timm.create_model(args.backbone, pretrained=False, num_classes=args.num_classes,
                                   **({"img_size": args.img_size} if args.img_size else {})).to(device)
    user_model = torch.compile(base_model) if args.compile else base_model  # a user's one-line compile
    base.update(measure("timm_baseline", user_model, baseline_step(user_model, device, autocast)))
    del base_model, user_model
    cfg = TrainConfig(precision=precision)
    rows = []
    for name in [m for m in args.methods.split(",") if m]:
        method = name.removesuffix("_masked")
        spec = get_method(method)
        mcfg = build_dataclass(spec.config_cls, KNOBS.get(name, {}), method)
        torch.manual_seed(0)
        ctx = BuildContext(preprocess=bb.preprocess, device=device, backbone_checksum=bb.checksum)
        model = spec.build(bb.instantiate(args.num_classes).to(device), args.num_classes, mcfg, ctx).to(device)
        step = make_step(model, make_optimizer(model, cfg, device), cfg, autocast, args.compile)
        rows.append(measure(name, model, step, compile_once(forward) if args.compile else forward))
        del model, step
    for row in rows:
        print(json.dumps({"ratio_to_timm_baseline": row["method"], "compiled": args.compile,
                          "train": row["train_vs_timm"],
                          "infer": round(row["infer_img_per_s"] / base["infer_img_per_s"], 2)}))


if __name__ == "__main__":
    main()
