"""Time forward + backward of a CPL-S-shaped network (Chapter 4).

    python scripts/bench_convex.py [--batch 256] [--steps 5] [--device cpu] [--preset cpl-s] [--json out.json]

Builds the preset (default ``cpl-s``: 20 convolutional CPLs of width 45 with 5 hidden channels,
sum-pooling, 7 dense CPLs of 2 048 hidden units, LLN head; 41 M parameters) and times training
steps on random CIFAR-sized images (batch 256): forward in training mode (one power-iteration step
per layer), the margin loss, backward and an Adam step. One warm-up step is not counted. Prints
seconds per step and images per second; also the evaluation-mode forward (norm bounds cached)
for comparison. With --json the rows are saved as a record (labkit.experiment.save_record).

``--variants`` adds one row per variant of the training step after those two, each on a fresh model
with the same seed (for the GPU's epoch goal of Chapter 4; the first row stays the plain step):
``cudnn-benchmark`` (cuDNN picks its convolution algorithms by timing them), ``tf32`` (TF32 matrix
products), ``channels-last`` (NHWC memory format), ``bf16`` (autocast to bfloat16; the certificate
is computed from the float32 weights either way), ``fused-adam`` and ``combined`` (all five).
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import torch

from labkit import convex, seed_everything
from labkit.experiment import environment, save_record


def _sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize()


VARIANTS = convex.SPEEDUPS  # one place: the variants that convex.fit(speedups=…) can train with


def time_train(preset, x, y, steps, device, variant=None):
    """Seconds per training step (forward in training mode, margin loss, backward, Adam) of a fresh
    seeded model of ``preset``, averaged over ``steps`` steps after one warm-up step; ``variant`` is
    one of VARIANTS or ``combined``; returns the seconds and the model."""
    on = set(VARIANTS) if variant == "combined" else {variant}
    seed_everything(0)
    model = convex.preset(preset).to(device)
    if "channels-last" in on and x.ndim == 4:
        model, x = model.to(memory_format=torch.channels_last), x.contiguous(memory_format=torch.channels_last)
    opt = torch.optim.Adam(model.parameters(), lr=1e-3, **({"fused": True} if "fused-adam" in on else {}))
    autocast = torch.autocast(device.type, dtype=torch.bfloat16, enabled="bf16" in on)
    model.train()
    times = []
    with convex.backend_flags(on):
        for k in range(steps + 1):
            _sync(device)
            t0 = time.perf_counter()
            with autocast:
                loss = convex.margin_loss(model(x).float(), y)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            _sync(device)
            if k:
                times.append(time.perf_counter() - t0)
    return sum(times) / len(times), model


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--batch", type=int, default=256)
    parser.add_argument("--steps", type=int, default=5)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--preset", default="cpl-s", choices=sorted(convex.PRESETS))
    parser.add_argument("--variants", nargs="*", default=[], choices=[*VARIANTS, "combined"])
    parser.add_argument("--json", type=Path)
    args = parser.parse_args(argv)
    if args.batch < 1 or args.steps < 1:
        parser.error("--batch and --steps must be at least 1")
    device = torch.device(args.device)
    env = environment(device)
    shape = (3, 32, 32) if convex.PRESETS[args.preset]["builder"] == "conv" else (1, 28, 28)
    seed_everything(0)
    x = torch.rand(args.batch, *shape, device=device)
    y = torch.randint(0, 10, (args.batch,), device=device)
    train_s, model = time_train(args.preset, x, y, args.steps, device)
    n_params = sum(p.numel() for p in model.parameters())
    print(
        f"{args.preset}: {n_params / 1e6:.1f} M parameters, batch {args.batch}, device {device}, "
        f"{torch.get_num_threads()} threads"
    )
    model.eval()
    with torch.no_grad():
        model(x)  # computes and caches the norm bounds
        _sync(device)
        t0 = time.perf_counter()
        for _ in range(args.steps):
            model(x)
        _sync(device)
        eval_s = (time.perf_counter() - t0) / args.steps
    rows = [
        {
            "what": "train step (forward + backward + Adam)",
            "seconds": train_s,
            "images_per_second": args.batch / train_s,
        },
        {"what": "evaluation forward", "seconds": eval_s, "images_per_second": args.batch / eval_s},
    ]
    del model
    for variant in args.variants:
        seconds, _ = time_train(args.preset, x, y, args.steps, device, variant)
        rows.append({"what": f"train step, {variant}", "seconds": seconds, "images_per_second": args.batch / seconds})
    for r in rows:
        print(f"{r['what']:>40}: {r['seconds']:8.3f} s per batch, {r['images_per_second']:8.1f} images/s")
    epoch = 50000 / rows[0]["images_per_second"]
    print(
        f"one CIFAR-10 epoch (50 000 images) at this speed: {epoch / 60:.1f} min; "
        f"200 epochs: {epoch * 200 / 3600:.1f} h"
    )
    if args.json:
        save_record(
            args.json,
            rows,
            mode="benchmark",
            seconds=sum(r["seconds"] for r in rows) * args.steps,
            env=env,
            sizes={
                "preset": args.preset,
                "batch": args.batch,
                "steps": args.steps,
                "parameters": n_params,
                "variants": args.variants,
            },
        )
        print(f"wrote {args.json}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
