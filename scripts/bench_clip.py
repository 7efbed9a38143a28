"""Time one training epoch of CLIP in the authors' setting on MNIST (Chapter 2).

    python scripts/bench_clip.py [--epochs 1] [--device cpu] [--json results.json]

Trains the paper setting's network (784-200-80-10, sigmoid after every layer, SGD 0.1 with
momentum 0.9, batch 128) on the authors' split of MNIST (54 000 training images, 6 000 for
validation and the 500 pairs) for ``--epochs`` epochs with CLIP on from the first batch
(λ = 0.1), and the same without CLIP, and prints seconds and images per second for each. The
times include the validation the paper's recipe runs after every epoch (clean accuracy and the
7-step sphere attack on the 6 000 validation images). Needs the MNIST files
(LABKIT_DATA, see the README). With --json the rows are saved as a record
(labkit.experiment.save_record).
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import torch

from labkit import clip, data, seed_everything
from labkit.experiment import environment, save_record


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--epochs", type=int, default=1)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--json", type=Path)
    args = parser.parse_args(argv)
    if args.epochs < 1:
        parser.error("--epochs must be at least 1")
    env = environment(args.device)
    tr, val = clip.split(data.load("mnist"), 6000)
    rows, t_all = [], time.perf_counter()
    print(
        f"MNIST paper setting, {len(tr)} training images, batch 128, device {args.device}, "
        f"{torch.get_num_threads()} threads"
    )
    print(f"{'run':>10} {'epochs':>6} {'seconds':>8} {'images/s':>9} {'per epoch s':>11}")
    for label, lam in (("CLIP", 0.1), ("no CLIP", 0.0)):
        seed_everything(0)
        model = clip.mlp(last_activation=True)
        run = clip.fit(
            model,
            tr,
            val,
            setting="paper",
            epochs=args.epochs,
            lam=lam,
            target=None,
            warmup=0,
            device=args.device,
            progress=False,
        )
        row = {
            "run": label,
            "epochs": args.epochs,
            "seconds": run.seconds,
            "images_per_second": args.epochs * len(tr) / run.seconds,
            "per_epoch": run.seconds / args.epochs,
        }
        rows.append(row)
        print(
            f"{label:>10} {args.epochs:>6} {run.seconds:>8.1f} {row['images_per_second']:>9.0f} "
            f"{row['per_epoch']:>11.2f}"
        )
    print("(the times include the per-epoch validation: clean accuracy and the 7-step sphere attack)")
    if args.json:
        save_record(
            args.json,
            rows,
            mode="benchmark",
            seconds=time.perf_counter() - t_all,
            sizes={"epochs": args.epochs},
            env=env,
        )
        print(f"wrote {args.json}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
