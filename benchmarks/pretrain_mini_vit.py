"""Pre-train ``vit_mini_patch8_32`` on a generated upstream task; write the shipped backbone.

Upstream task ("shapes-128"): 128 classes = 16 distinct silhouettes (disc, square, triangle,
star, cross, arrow, L, flag, half-disc, chevron, bar, ring, crescent, hourglass, U, T) × 8
hue families. Every image draws one large shape of its class (half-extent 7–14 px) at a
random position and tilt (±30°), with jittered hue and brightness, drawn solid, as an
outline or with a shading gradient, on a random background (plain, gradient, colour
blotches, faint stripes or noise) that contrasts with it, plus 0–2 small distractor shapes
and pixel noise. Hue is learnt within the first few hundred steps and gets training
started; the silhouettes carry the rest. Position, size, tilt, style and clutter are
nuisances, as for ImageNet. None of the mini suite's labels (digit identity, texture family,
position cell, orientation bin, object count) is an upstream label, and no suite image is
used.

Training: AdamW (lr 1e-3, weight decay 0.05 on matrices, betas 0.9/0.999), batch 64, 5 %
linear warm-up then cosine decay to 0, label smoothing 0.1, random ±2 px translation; the
training images are generated once (``--images``) and seen ``--epochs`` times. (lr 2e-3 —
with or without gradient clipping — and batch 32 learnt more slowly in 250-step trials.)
Only the backbone (no classifier) is saved, fp32 safetensors with these settings in its
metadata, to ``peftbench/resources/mini_vit.safetensors``.

Recorded run (the shipped checkpoint)::

    python benchmarks/pretrain_mini_vit.py --seed 0 --threads 2   # --epochs 12 --images 72000

on an otherwise idle 2-core CPU: data generation 47 s, 13,500 steps at about 0.05 s each, total
wall time 773 s (12.9 min); upstream held-out top-1 66.7 % (128 classes, chance 0.8 %). Earlier
checkpoints, with 4×4 patches (65 tokens, four times the compute per image), reached 45.3 %
(8 epochs of 36,000 images, 13.7 min) and 19.0 % (4 epochs); on them the mini suite's
frozen-backbone methods could not be told apart within the suite's CPU budget. Results are
reproducible for a given seed, thread count and machine; other machines give nearby, not
identical, weights.
"""

from __future__ import annotations

import argparse
import json
import math
import time
from pathlib import Path

import numpy as np
import timm
import torch
import torch.nn.functional as F
from safetensors.torch import save_file

from peftbench.data import mini_draw as mini
from peftbench.data.mini_draw import SHAPES, SIZE, SS
from peftbench.models import MINI_VIT, mini_weights_path

Polygon = list[tuple[int, int]]
_DISC = mini.regular_polygon(24, 1000, 1000)
# 16 clearly distinct silhouettes; a shape is a list of (polygon, fill) drawn in order, so
# a later polygon with fill 0 cuts a hole.
UPSTREAM_SHAPES: dict[str, list[tuple[Polygon, int]]] = {
    **{name: [(SHAPES[name], 255)] for name in ("disc", "square", "triangle", "star", "cross", "arrow", "ell",
                                                "flag")},
    "half_disc": [([(x, min(y, 0) + 300) for x, y in _DISC], 255)],
    "chevron": [([(-1000, -300), (0, -1000), (1000, -300), (1000, 300), (0, -400), (-1000, 300)], 255)],
    "bar": [([(-1000, -280), (1000, -280), (1000, 280), (-1000, 280)], 255)],
    "ring": [(_DISC, 255), (mini.regular_polygon(24, 550, 550), 0)],
    "crescent": [(_DISC, 255), ([(x + 450, y - 150) for x, y in mini.regular_polygon(24, 800, 800)], 0)],
    "hourglass": [([(-800, -1000), (800, -1000), (0, 0), (800, 1000), (-800, 1000), (0, 0)], 255)],
    "u_shape": [([(-900, -1000), (-450, -1000), (-450, 450), (450, 450), (450, -1000), (900, -1000),
                  (900, 1000), (-900, 1000)], 255)],
    "tee": [([(-1000, -1000), (1000, -1000), (1000, -500), (250, -500), (250, 1000), (-250, 1000),
              (-250, -500), (-1000, -500)], 255)],
}
SHAPE_NAMES = tuple(UPSTREAM_SHAPES)
PALETTE = ((220, 40, 40), (240, 140, 20), (230, 220, 40), (40, 190, 60),
           (40, 200, 210), (40, 70, 220), (150, 50, 210), (240, 110, 190))  # 8 hue families
STYLES = ("solid", "outline", "gradient")
NUM_CLASSES = len(SHAPE_NAMES) * len(PALETTE)
assert len(SHAPE_NAMES) == 16 and NUM_CLASSES == 128


def _background(rng: np.random.Generator, avoid: np.ndarray) -> np.ndarray:
    kind = int(rng.integers(5))
    c0 = mini.contrasting(rng, avoid, 60)
    if kind == 0:
        return np.broadcast_to(c0, (SIZE, SIZE, 3)).copy()
    if kind == 1:
        return mini.gradient(rng, c0, mini.contrasting(rng, avoid, 60))
    if kind == 2:
        return (mini.blotches(rng, int(rng.choice([4, 8])), 2) + c0) // 2
    if kind == 3:  # faint stripes in a random direction
        deg = int(rng.integers(360))
        proj = (mini.GRID_X * mini.COS[deg] + mini.GRID_Y * mini.SIN[deg]) // 65536
        period = int(rng.integers(3, 9))
        return c0 + ((proj % period) * 2 < period)[..., None] * rng.integers(-40, 41, size=3)
    return mini.noise(rng, np.broadcast_to(c0, (SIZE, SIZE, 3)).astype(np.int32), 40)


def _alpha(shape: list[tuple[Polygon, int]], cx: int, cy: int, size: int, angle: int) -> np.ndarray:
    polys = [(mini.transform(p, cx, cy, size, angle), fill) for p, fill in shape]
    return mini.coverage(lambda d: [d.polygon(p, fill=fill) for p, fill in polys])


def render(rng: np.random.Generator, label: int) -> np.ndarray:
    """One image of class ``label``: a shape (label // 8) in a hue family (label % 8)."""
    shape = UPSTREAM_SHAPES[SHAPE_NAMES[label // len(PALETTE)]]
    base = np.asarray(PALETTE[label % len(PALETTE)], dtype=np.int32)
    colour = np.clip((base + rng.integers(-25, 26, size=3)) * int(rng.integers(70, 101)) // 100, 0, 255)
    img = _background(rng, colour)
    for _ in range(int(rng.integers(0, 3))):  # small distractors
        size = int(rng.integers(2 * SS, 4 * SS))
        cx, cy = (int(c) for c in rng.integers(0, SIZE * SS, size=2))
        d = UPSTREAM_SHAPES[SHAPE_NAMES[int(rng.integers(len(SHAPE_NAMES)))]]
        img = mini.paint(img, _alpha(d, cx, cy, size, int(rng.integers(360))), mini.random_colour(rng))
    size = int(rng.integers(7 * SS, 14 * SS))
    lo, hi = size * 2 // 3, SIZE * SS - size * 2 // 3
    cx, cy = (int(c) for c in rng.integers(lo, hi, size=2))
    angle = int(rng.integers(-30, 31))
    style = STYLES[int(rng.integers(len(STYLES)))]
    if style == "outline":
        width = int(rng.integers(SS, 2 * SS + 1))
        rings = [mini.transform(p, cx, cy, size, angle) for p, _ in shape]
        alpha = mini.coverage(lambda d: [d.line(r + r[:1], fill=255, width=width, joint="curve") for r in rings])
        img = mini.paint(img, alpha, colour)
    else:
        layer = colour if style == "solid" else mini.gradient(rng, colour, colour * 3 // 5)
        img = mini.paint(img, _alpha(shape, cx, cy, size, angle), layer)
    return mini.finish(mini.noise(rng, img, int(rng.integers(0, 21))))


def make_dataset(seed: int, n: int) -> tuple[torch.Tensor, torch.Tensor]:
    rng = np.random.default_rng([seed, n])
    labels = mini.balanced_labels(rng, n, NUM_CLASSES)
    images = np.stack([render(rng, int(y)) for y in labels])
    return torch.from_numpy(images).permute(0, 3, 1, 2).contiguous(), torch.from_numpy(labels.astype(np.int64))


def normalise(x: torch.Tensor, mean: torch.Tensor, std: torch.Tensor) -> torch.Tensor:
    return (x.float() / 255.0 - mean) / std


def translate(x: torch.Tensor, gen: torch.Generator, max_shift: int = 2) -> torch.Tensor:
    """Random translation by up to ``max_shift`` pixels (edge padding), one shift per batch."""
    dy, dx = (int(v) for v in torch.randint(-max_shift, max_shift + 1, (2,), generator=gen))
    p = F.pad(x, (max_shift,) * 4, mode="replicate")
    return p[..., max_shift + dy:max_shift + dy + x.shape[-2], max_shift + dx:max_shift + dx + x.shape[-1]]


@torch.no_grad()
def accuracy(model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor, mean, std) -> float:
    model.eval()
    correct = sum(int((model(normalise(x[i:i + 500], mean, std)).argmax(1) == y[i:i + 500]).sum())
                  for i in range(0, len(y), 500))
    model.train()
    return correct / len(y)


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", type=Path, default=mini_weights_path())
    ap.add_argument("--epochs", type=int, default=12)
    ap.add_argument("--images", type=int, default=72_000, help="generated training images")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--batch-size", type=int, default=64)
    ap.add_argument("--lr", type=float, default=1e-3)
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    t0 = time.perf_counter()

    train_x, train_y = make_dataset(args.seed, args.images)
    val_x, val_y = make_dataset(args.seed + 1000, 2000)
    t_gen = time.perf_counter() - t0
    print(f"generated {len(train_y)} + {len(val_y)} images in {t_gen:.0f} s", flush=True)

    model = timm.create_model(MINI_VIT, num_classes=NUM_CLASSES)
    mean = torch.tensor(model.pretrained_cfg["mean"]).view(1, 3, 1, 1)
    std = torch.tensor(model.pretrained_cfg["std"]).view(1, 3, 1, 1)
    decay = [p for n, p in model.named_parameters() if p.ndim > 1 and "pos_embed" not in n]
    no_decay = [p for n, p in model.named_parameters() if not (p.ndim > 1 and "pos_embed" not in n)]
    opt = torch.optim.AdamW([{"params": decay, "weight_decay": 0.05}, {"params": no_decay, "weight_decay": 0.0}],
                            lr=args.lr)
    steps_per_epoch = len(train_y) // args.batch_size
    total = steps_per_epoch * args.epochs
    warmup = max(1, total // 20)

    def lr_factor(s: int) -> float:
        return (s + 1) / warmup if s < warmup else 0.5 * (1 + math.cos(math.pi * (s - warmup) / (total - warmup)))

    sched = torch.optim.lr_scheduler.LambdaLR(opt, lr_factor)
    gen = torch.Generator().manual_seed(args.seed)
    step = 0
    for epoch in range(args.epochs):
        order = torch.randperm(len(train_y), generator=gen)
        running = 0.0
        for b in range(steps_per_epoch):
            idx = order[b * args.batch_size:(b + 1) * args.batch_size]
            x = translate(normalise(train_x[idx], mean, std), gen)
            loss = F.cross_entropy(model(x), train_y[idx], label_smoothing=0.1)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
            step += 1
            running += loss.item()
            if step % 100 == 0:
                print(f"epoch {epoch} step {step}/{total} loss {running / (b + 1):.3f} "
                      f"{time.perf_counter() - t0:.0f} s", flush=True)
        print(f"epoch {epoch}: held-out top-1 {accuracy(model, val_x, val_y, mean, std):.3f}", flush=True)

    val_acc = accuracy(model, val_x, val_y, mean, std)
    wall = time.perf_counter() - t0
    state = {k: v.detach().contiguous().float() for k, v in model.state_dict().items()
             if not k.startswith("head.")}
    meta = {"architecture": MINI_VIT, "upstream": f"shapes-{NUM_CLASSES}", "seed": str(args.seed),
            "images": str(args.images), "epochs": str(args.epochs), "threads": str(args.threads),
            "batch_size": str(args.batch_size), "lr": str(args.lr), "heldout_top1": f"{val_acc:.4f}",
            "wall_s": f"{wall:.0f}", "generation_s": f"{t_gen:.0f}"}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    save_file(state, str(args.out), metadata=meta)
    print(json.dumps(meta), flush=True)
    print(f"wrote {args.out} ({args.out.stat().st_size / 1e6:.2f} MB) in {wall / 60:.1f} min", flush=True)


if __name__ == "__main__":
    main()
