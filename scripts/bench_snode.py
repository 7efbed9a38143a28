"""Benchmark of Chapter 3's standalone neural ODE (labkit.snode).

    python scripts/bench_snode.py [--dim 196] [--steps 150] [--batch 100] [--images 1000]
                                  [--device cpu] [--json out.json] [--ensemble 9]

Measures, on random images of the given size (pixels in [0, 1], random labels), each in a fresh
process so that peak memories do not mix:

* the time of one epoch of NCG (6 iterations per batch, Sobolev gradients) and of one epoch of
  Adam on the same network, as images per second; with ``--ensemble K`` also one epoch of each of
  ``K`` sNODEs trained together by ``snode.ncg_train_ensemble`` (images per second in all);
* the hand-written discrete adjoint (``snode.adjoint_gradient``) against PyTorch's autograd
  through the same Euler scheme (``snode.autograd_gradient``): seconds per gradient of a batch,
  and their largest relative difference;
* the peak resident memory of each (``ru_maxrss`` of the process, so it includes PyTorch itself;
  the process's memory before the measurement is reported beside it), and on a GPU the peak of
  ``torch.cuda.max_memory_allocated``.

With ``--json`` the rows are saved as a record (``labkit.experiment.save_record``).
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import resource
import time
from pathlib import Path


def _rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # kilobytes on Linux


def _measure(what, dim, steps, batch, images, device, queue):
    import torch

    cuda = str(device).startswith("cuda")

    def sync():
        if cuda:
            torch.cuda.synchronize()

    def gpu_peak():
        return {"cuda_peak_mb": torch.cuda.max_memory_allocated() / 2**20} if cuda else {}

    from torch.utils.data import TensorDataset

    from labkit import seed_everything, snode

    seed_everything(0)
    torch.set_num_threads(torch.get_num_threads())
    g = torch.Generator().manual_seed(0)
    side = int(round(dim**0.5))
    x = torch.rand(images, 1, side, side, generator=g)
    y = torch.randint(0, 10, (images,), generator=g)
    model = snode.SNODE(dim, T=3.0, steps=steps, generator=torch.Generator().manual_seed(0)).to(device)
    before = _rss_mb()
    data = TensorDataset(x, y)
    if what in ("adjoint", "autograd"):
        x0, yb = model.encode(x[:batch].to(device)), y[:batch].to(device)
        fn = snode.adjoint_gradient if what == "adjoint" else snode.autograd_gradient
        fn(model, x0, yb)  # warm-up
        reps = 5
        sync()
        t0 = time.perf_counter()
        for _ in range(reps):
            out = fn(model, x0, yb)
        sync()
        seconds = (time.perf_counter() - t0) / reps
        other = (snode.autograd_gradient if what == "adjoint" else snode.adjoint_gradient)(model, x0, yb)
        diff = max(float((a - b).norm() / b.norm()) for a, b in zip(out, other))
        queue.put(
            {
                "what": f"{what} gradient of a batch of {batch}",
                "seconds": seconds,
                "images_per_second": batch / seconds,
                "relative_difference": diff,
                "peak_mb": _rss_mb(),
                "before_mb": before,
                **gpu_peak(),
            }
        )
        return
    t0 = time.perf_counter()
    if what.startswith("ensemble"):
        k = int(what[len("ensemble") :])
        models = [
            snode.SNODE(dim, T=3.0, steps=steps, generator=torch.Generator().manual_seed(i)).to(device)
            for i in range(k)
        ]
        t0 = time.perf_counter()
        snode.ncg_train_ensemble(models, data, seeds=list(range(k)), epochs=1, batch_size=batch, progress=False)
        sync()
        seconds = time.perf_counter() - t0
        queue.put(
            {
                "what": f"NCG ensemble of {k}, one epoch each (6 iterations per batch, Sobolev)",
                "seconds": seconds,
                "images_per_second": k * images / seconds,
                "peak_mb": _rss_mb(),
                "before_mb": before,
                **gpu_peak(),
            }
        )
        return
    if what == "ncg":
        snode.ncg_train(model, data, epochs=1, batch_size=batch, progress=False)
        label = "NCG epoch (6 iterations per batch, Sobolev)"
    else:
        snode.fit_backprop(model, data, epochs=1, batch_size=batch, progress=False)
        label = "Adam epoch (backpropagation)"
    sync()
    seconds = time.perf_counter() - t0
    queue.put(
        {
            "what": label,
            "seconds": seconds,
            "images_per_second": images / seconds,
            "peak_mb": _rss_mb(),
            "before_mb": before,
            **gpu_peak(),
        }
    )


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--dim", type=int, default=196)
    parser.add_argument("--steps", type=int, default=150)
    parser.add_argument("--batch", type=int, default=100)
    parser.add_argument("--images", type=int, default=1000)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--json", type=Path)
    parser.add_argument("--ensemble", type=int, default=0, help="also one epoch of an ensemble of this many sNODEs")
    args = parser.parse_args(argv)
    if min(args.dim, args.steps, args.batch, args.images) < 1 or int(round(args.dim**0.5)) ** 2 != args.dim:
        parser.error("--dim must be a square, and every size at least 1")
    if args.json is not None:
        from labkit._validate import writable

        writable(args.json, "--json")
    ctx = mp.get_context("spawn")
    rows = []
    t_all = time.perf_counter()
    for what in ("adjoint", "autograd", "ncg", "adam") + ((f"ensemble{args.ensemble}",) if args.ensemble > 0 else ()):
        queue = ctx.Queue()
        sizes = (args.dim, args.steps, args.batch, args.images, args.device)
        proc = ctx.Process(target=_measure, args=(what, *sizes, queue))
        proc.start()
        row = queue.get()
        proc.join()
        rows.append(row)
        extra = f", relative difference {row['relative_difference']:.1e}" if "relative_difference" in row else ""
        print(
            f"{row['what']:>46}: {row['seconds']:8.3f} s, {row['images_per_second']:8.1f} images/s, "
            f"peak {row['peak_mb']:.0f} MB (before {row['before_mb']:.0f} MB){extra}"
        )
    adj, auto = rows[0]["seconds"], rows[1]["seconds"]
    print(f"hand-written adjoint / autograd time: {adj / auto:.2f}")
    if args.json:
        import torch

        from labkit.experiment import environment, save_record

        sizes = {"dim": args.dim, "steps": args.steps, "batch": args.batch, "images": args.images}
        env = environment(torch.device(args.device))
        save_record(args.json, rows, mode="benchmark", seconds=time.perf_counter() - t_all, env=env, sizes=sizes)
        print(f"wrote {args.json}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
