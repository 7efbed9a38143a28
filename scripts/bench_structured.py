"""Time a training step of Chapter 5's networks against the unconstrained ResNet of the same size.

    python scripts/bench_structured.py [--batch 128] [--steps 5] [--device cpu] [--json out.json]

For the book-mode size (widths 8/16/32, one switching pair per block) and the paper's size (widths
32/64/128, four dynamic layers per block, about 0.9 M parameters), builds the prescribed switching
network, the certified one and the unconstrained ResNet (labkit.structured presets), and times
training steps on random CIFAR-sized images: forward, the summed hinge loss with the
orthogonality penalty, backward, the optimiser step and the projections (labkit.structured.fit's
step). One warm-up step is not counted. Prints seconds per step and images per second; with --json
the rows are saved as a record (labkit.experiment.save_record).
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import torch

from labkit import seed_everything, structured
from labkit.experiment import environment, save_record

SIZES = {"book": dict(widths=(8, 16, 32), layers=2), "paper": dict(widths=(32, 64, 128), layers=4)}
PRESETS = ("resnet", "switching", "certified")


def _sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize()


def time_step(name, size, batch, steps, device):
    """Seconds per training step of preset ``name`` at ``size``, and its parameter count."""
    seed_everything(0)
    model, recipe = structured.preset(name, **SIZES[size], mean=structured.CIFAR_MEAN, std=structured.CIFAR_STD)
    model = model.to(device)
    x = torch.rand(batch, 3, 32, 32, device=device)
    y = torch.randint(0, 10, (batch,), device=device)
    if recipe["optimizer"] == "sgd":
        opt = torch.optim.SGD(model.parameters(), lr=recipe["lr"], momentum=0.9)
    else:
        opt = torch.optim.Adam(model.parameters(), lr=recipe["lr"])
    model.train()
    times = []
    for k in range(steps + 1):
        _sync(device)
        t0 = time.perf_counter()
        loss = structured.hinge_loss(model(x), y, recipe["margin"])
        if recipe["gamma"]:
            loss = loss + recipe["gamma"] * model.penalty()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        model.project()
        _sync(device)
        if k:
            times.append(time.perf_counter() - t0)
    return sum(times) / len(times), model.parameters_count()


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--batch", type=int, default=128)
    parser.add_argument("--steps", type=int, default=5)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--sizes", nargs="+", default=list(SIZES), choices=list(SIZES))
    parser.add_argument("--json", type=Path)
    args = parser.parse_args(argv)
    if args.batch < 1 or args.steps < 1:
        parser.error("--batch and --steps must be at least 1")
    device = torch.device(args.device)
    env = environment(device)
    print(f"batch {args.batch}, device {device}, {torch.get_num_threads()} threads")
    rows, total = [], 0.0
    for size in args.sizes:
        for name in PRESETS:
            seconds, n = time_step(name, size, args.batch, args.steps, device)
            total += seconds * args.steps
            ips = args.batch / seconds
            rows.append(
                {
                    "what": f"{name}, {size} size",
                    "preset": name,
                    "size": size,
                    "parameters": n,
                    "batch": args.batch,
                    "seconds": seconds,
                    "images_per_second": ips,
                }
            )
            print(f"{rows[-1]['what']:>24}: {n:>9,} parameters, {seconds:7.3f} s per step, {ips:8.0f} images/s")
    if args.json:
        save_record(
            args.json,
            rows,
            mode="benchmark",
            seconds=total,
            env=env,
            sizes={"batch": args.batch, "steps": args.steps, "sizes": args.sizes},
        )
        print(f"wrote {args.json}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
