"""SHIP's training step time against VPT-deep's with the same prompt tokens per block.

Both methods are built through the registry on the same backbone and timed with the harness's
own training step (AdamW, auxiliary loss included) on a fixed random batch, alternating
between them for several rounds; the medians give the ratio. SHIP runs with fresh semantic
prompts at every block (hierarchy off, like VPT-deep) and its matching loss on; VPT-deep gets
K + shared_tokens prompts per block, which is what SHIP carries at every block except the two
with attribute prompts (10 more tokens there). Target: ratio <= 1.25. SHIP is timed with both
layouts of its decoupled attention (``ship.attention=split``: two SDPA calls; ``masked``: one call
with a block mask), and the final line also gives masked / split.

    python benchmarks/ship_step_time.py                      # ViT-Ti/16 at 224 px, one CPU thread
    python benchmarks/ship_step_time.py --model vit_base_patch16_224 --batch 64 --device cuda

Prints one JSON line per measurement and a final line with the ratio.
"""

from __future__ import annotations

import argparse
import json
import statistics

import timm
import torch

from peftbench.config import TrainConfig, build_dataclass
from peftbench.measure import throughput
from peftbench.method_api import BuildContext
from peftbench.registry import get_method
from peftbench.train import autocast_factory, effective_precision, make_optimizer, make_step

TARGET = 1.25


def build(method: str, knobs: dict, args: argparse.Namespace, device: torch.device) -> torch.nn.Module:
    torch.manual_seed(0)
    vit = timm.create_model(args.model, pretrained=False, num_classes=args.num_classes, img_size=args.img_size)
    spec = get_method(method)
    ctx = BuildContext(preprocess=None, device=device)
    return spec.build(vit, args.num_classes, build_dataclass(spec.config_cls, knobs, method), ctx).to(device)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="vit_tiny_patch16_224")
    parser.add_argument("--img-size", type=int, default=224)
    parser.add_argument("--num-classes", type=int, default=100)
    parser.add_argument("--prompt-length", type=int, default=50, help="SHIP's K")
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--steps", type=int, default=3, help="timed steps per round")
    parser.add_argument("--warmup", type=int, default=1, help="untimed steps per round")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--compile", action="store_true", help="compiled steps (the harness's compile=true)")
    parser.add_argument("--threads", type=int, default=None,
                        help="CPU threads (default 1: on a shared machine multi-thread timings are erratic)")
    args = parser.parse_args()
    device = torch.device(args.device)
    if device.type == "cpu":
        torch.set_num_threads(args.threads or 1)
    ship_knobs = {"prompt_length": args.prompt_length, "hierarchy": False, "matching_warmup": 0}
    shared = get_method("ship").config_cls(**ship_knobs).shared_tokens
    knobs = {"ship": {**ship_knobs, "attention": "split"}, "ship_masked": {**ship_knobs, "attention": "masked"},
             "vpt_deep": {"prompt_length": args.prompt_length + shared}}
    tcfg = TrainConfig(batch_size=args.batch)
    precision = effective_precision(tcfg, device)
    autocast = autocast_factory(precision, device)
    steps = {}
    for label, method_knobs in knobs.items():
        model = build(label.split("_masked")[0], method_knobs, args, device).train()
        steps[label] = make_step(model, make_optimizer(model, tcfg, device), tcfg, autocast, args.compile)
    img = (args.img_size, args.img_size)
    times: dict[str, list[float]] = {m: [] for m in knobs}
    for round_ in range(args.rounds):
        for method in list(knobs) if round_ % 2 == 0 else list(knobs)[::-1]:
            ips = statistics.median(throughput(steps[method], args.batch, img, args.num_classes, device, args.steps,
                                               args.warmup))
            times[method].append(args.batch / ips)
            print(json.dumps({"round": round_, "method": method, "step_s": round(args.batch / ips, 5),
                              "knobs": knobs[method]}), flush=True)
    median = {m: statistics.median(t) for m, t in times.items()}
    ratio = median["ship"] / median["vpt_deep"]
    print(json.dumps({"model": args.model, "img_size": args.img_size, "batch": args.batch, "device": str(device),
                      "precision": precision, "threads": torch.get_num_threads(), "compiled": args.compile,
                      "ship_step_s": round(median["ship"], 5), "vpt_deep_step_s": round(median["vpt_deep"], 5),
                      "ship_masked_step_s": round(median["ship_masked"], 5),
                      "ratio": round(ratio, 3), "ratio_masked": round(median["ship_masked"] / median["vpt_deep"], 3),
                      "masked_over_split": round(median["ship_masked"] / median["ship"], 3),
                      "target": TARGET, "ok": ratio <= TARGET}), flush=True)


if __name__ == "__main__":
    main()
