"""Chapter 3's experiment: a standalone neural ODE on MNIST block-averaged to 14×14, trained by
NCG with L² and with Sobolev gradients, against the same Euler network trained by Adam (the
ResNet analogue), then measured: accuracy, training curves, weight smoothness, minimal
adversarial ℓ2 norms from the sensitivity attack and from PGD, ``‖Ξ(T)‖₂``, and the linearised
propagation of input noise against Monte Carlo (§3.5).
"""

from __future__ import annotations

import math
import statistics
import time

import torch
from torch.utils.data import TensorDataset

from .. import attacks, data, report, snode, train
from . import DATA, given, per_mode, pick

__all__ = [
    "SIZES",
    "RECORD",
    "DATA",
    "MODELS",
    "sizes",
    "dataset",
    "run",
    "verify",
    "table",
    "values",
    "propagation",
    "claim",
    "bench_table",
    "full_cost",
]

#: The three trainings of the experiment, by name.
MODELS = ("sNODE, L²", "sNODE, Sobolev", "ResNet, Adam")

# fmt: off
#: The sizes per mode (in full mode all 60 000 / 10 000 images, h = 1/50 or 150 steps, 10 epochs and
#: three seeds, the reference code's setting).
SIZES = per_mode({
    #                   smoke  book    full
    "n_train":        (200,   10_000, None),
    "n_test":         (100,   1000,   None),
    "steps":          (6,     30,     150),
    "epochs":         (1,     1,      10),
    "iterations":     (2,     6,      6),
    "seeds":          ([0],   [0],    [0, 1, 2]),
    "attack_images":  (10,    100,    1000),
    "attack_steps":   (5,     30,     30),
    "jacobian_images": (5,    50,     200),
    "mc_samples":     (200,   2000,   20000),
}, T=3.0, factor=2, activation="tanh", loss="l2", batch_size=100, adam_lr=1e-3, noise=0.05,
   radii=[round(0.05 * k, 2) for k in range(1, 81)], pgd_steps=20, trace_every=5)
# fmt: on
#: The full-mode record, in ``book/data``.
RECORD = "ch03_full.json"


def sizes(mode: str | None = None) -> dict:
    """The sizes of :func:`run` in ``mode`` (default: the current mode)."""
    return pick(SIZES, mode)


def dataset(train_split: bool, limit, factor: int) -> TensorDataset:
    """MNIST block-averaged by ``factor`` (images in ``[0, 1]``, 14×14 for ``factor=2``)."""
    d = data.load("mnist", train=train_split, limit=limit)
    x, y = d.tensors
    return TensorDataset(snode.downsample(x, factor), y)


def _probe(model, x0, y) -> float:
    with torch.no_grad():
        return float(model.loss(model.flow(x0), y))


def run(*, seed=0, device=None, done=None, on_result=None, **sizes) -> dict:
    """Train the :data:`MODELS` for every seed of the :data:`SIZES` given and measure them; results
    keyed ``"<model>/seed <s>"``, each with the clean accuracy, the training trace (loss of a fixed
    probe of 500 training images every ``trace_every`` batches), the time, the smoothness, the
    weights of a few entries along ``t``, the minimal adversarial norms of both attacks on the
    first ``attack_images`` test images, ``‖Ξ(T)‖₂`` statistics and the noise propagation. Every
    run is seeded on its own, so runs can be resumed: results already in ``done`` are taken as they
    are, and ``on_result(key, result)`` is called after each new run (``python -m
    labkit.experiment ch03`` keeps a partial record with them)."""
    s = given(sizes, SIZES)
    tr = dataset(True, s.n_train, s.factor)
    te = dataset(False, s.n_test, s.factor)
    dim = tr.tensors[0][0].numel()
    out = {}
    for run_seed in s.seeds:
        for name in MODELS:
            key = f"{name}/seed {run_seed}"
            if done and key in done:
                out[key] = done[key]
                continue
            torch.manual_seed(run_seed)
            model = snode.SNODE(dim, T=s.T, steps=s.steps, activation=s.activation, loss=s.loss,
                                generator=torch.Generator().manual_seed(run_seed))  # fmt: skip
            if device is not None:
                model = model.to(device)
            probe_x = model.encode(tr.tensors[0][:500].to(model.W.device))
            probe_y = tr.tensors[1][:500].to(model.W.device)
            trace, batches = [(0, _probe(model, probe_x, probe_y))], [0]

            def after(m, trace=trace, batches=batches, probe_x=probe_x, probe_y=probe_y):
                batches[0] += 1
                if batches[0] % s.trace_every == 0:
                    trace.append((batches[0], _probe(m, probe_x, probe_y)))

            t0 = time.perf_counter()
            if name.startswith("sNODE"):
                snode.ncg_train(model, tr, epochs=s.epochs, batch_size=s.batch_size, iterations=s.iterations,
                                sobolev=name.endswith("Sobolev"), seed=run_seed, after_batch=after,
                                desc=name)  # fmt: skip
            else:
                snode.fit_backprop(model, tr, epochs=s.epochs, lr=s.adam_lr, batch_size=s.batch_size,
                                   seed=run_seed, after_step=after)  # fmt: skip
            seconds = time.perf_counter() - t0
            out[key] = _measure(model, te, s, run_seed, trace, seconds)
            if on_result is not None:
                on_result(key, out[key])
    return out


def _measure(model, te, s, seed, trace, seconds) -> dict:
    model.eval()
    clean = train.evaluate(model, te)["accuracy"]
    x_img, y = te.tensors[0][: s.attack_images], te.tensors[1][: s.attack_images]
    x0 = model.encode(x_img)
    sens = snode.sensitivity_attack(model, x0, y, steps=s.attack_steps, generator=torch.Generator().manual_seed(seed))
    pgd = attacks.minimal_l2(model, x_img, y, s.radii, steps=s.pgd_steps, generator=torch.Generator().manual_seed(seed))
    Xi = snode.input_jacobian(model, model.encode(te.tensors[0][: s.jacobian_images]))
    xi_norms = torch.linalg.matrix_norm(Xi, 2)
    logit_norms = torch.linalg.matrix_norm(Xi[:, : model.classes], 2)
    entries = [(0, 0), (3, 7), (50, 60), (100, 101)]
    return {
        "clean": clean,
        "seconds": seconds,
        "trace": trace,
        "smoothness": snode.smoothness(model),
        "weights": {f"W[{i},{j}]": model.W[:, i % model.dim, j % model.dim].tolist() for i, j in entries},
        "t": [(k + 0.5) * model.h for k in range(model.steps)],
        "attack": {
            "sensitivity": [_finite(v) for v in sens.tolist()],
            "pgd": [_finite(v) for v in pgd.tolist()],
            "steps": s.attack_steps,
            "pgd_steps": s.pgd_steps,
            "images": len(y),
        },
        "jacobian": {"state": xi_norms.tolist(), "logits": logit_norms.tolist()},
        "propagation": propagation(model, te.tensors[0][0], s.noise, s.mc_samples, seed),
    }


def _finite(v):
    return None if math.isinf(v) else v


def propagation(model, image, noise: float, samples: int, seed: int = 0) -> dict:
    """The standard deviations of the logits under input noise ``N(0, noise² I)`` on one image:
    linearised, ``sqrt(diag(Ξ Σ Ξᵀ))`` (:prf:ref:`prop-sensitivity`), and by Monte Carlo with
    ``samples`` noisy copies (not clipped to the pixel range, as the linear theory assumes)."""
    x0 = model.encode(image[None])
    cov = snode.output_covariance(model, x0, noise**2)[0][: model.classes, : model.classes]
    g = torch.Generator().manual_seed(seed)
    noisy = x0 + noise * torch.randn(samples, x0.shape[1], generator=g, dtype=x0.dtype)
    with torch.no_grad():
        out = model.flow(noisy)[:, : model.classes]
    return {"linear": cov.diagonal().sqrt().tolist(), "monte_carlo": out.std(0).tolist(), "noise": noise,
            "samples": samples}  # fmt: skip


def _median(values):
    finite = [v for v in values if v is not None]
    return statistics.median(finite) if finite else math.inf


def verify(results: dict) -> None:
    """Raise ``AssertionError`` if a training trace is not finite, if a reported attack norm is
    negative, or if the linearised noise propagation and Monte Carlo disagree by more than 25 %
    (the linearisation would then not describe the network at this noise level)."""
    for key, r in results.items():
        assert all(math.isfinite(v) for _, v in r["trace"]), f"{key}: a non-finite loss in the trace"
        for attack in ("sensitivity", "pgd"):
            assert all(v is None or v >= 0 for v in r["attack"][attack]), f"{key}: a negative {attack} norm"
        lin, mc = r["propagation"]["linear"], r["propagation"]["monte_carlo"]
        gap = max(abs(a - b) / max(b, 1e-12) for a, b in zip(lin, mc))
        assert gap < 0.25, f"{key}: linearised and Monte Carlo standard deviations differ by {gap:.0%}"


def _row(key, r):
    name, seed = key.split("/")
    sens, pgd = r["attack"]["sensitivity"], r["attack"]["pgd"]
    return {
        "model": name,
        "seed": seed.split()[-1],
        "clean": r["clean"],
        "seconds": r["seconds"],
        "smooth": r["smoothness"],
        "sens": _median(sens),
        "sens_found": sum(v is not None for v in sens) / len(sens),
        "pgd": _median(pgd),
        "pgd_found": sum(v is not None for v in pgd) / len(pgd),
        "xi": statistics.median(r["jacobian"]["state"]),
        "xi_logits": statistics.median(r["jacobian"]["logits"]),
    }


def table(results: dict) -> report.Table:
    """§3.5's table: per model and seed, accuracy, training time, smoothness, the medians of the
    minimal adversarial norms (of the images where the attack succeeded) and of ``‖Ξ(T)‖₂``."""
    return report.table(
        [_row(k, r) for k, r in results.items()],
        [
            ("model", "model"),
            ("seed", "seed"),
            ("clean", "clean", "{:.3f}"),
            ("training", "seconds", "{:.0f} s"),
            ("∫‖∂ₜW‖²", "smooth", "{:.3g}"),
            ("sensitivity attack: median ‖δ‖", "sens", "{:.2f}"),
            ("found", "sens_found", "{:.0%}"),
            ("PGD grid: median ‖δ‖", "pgd", "{:.2f}"),
            ("found", "pgd_found", "{:.0%}"),
            ("median ‖Ξ(T)‖₂", "xi", "{:.2f}"),
            ("logit rows", "xi_logits", "{:.2f}"),
        ],
        caption="Minimal adversarial ℓ2 norms in the 14×14 pixel space: medians over the images where the attack "
        "found one.",
    )


def values(results: dict) -> dict:
    """The numbers the prose quotes, ``{"<model>/<what>": value}`` for the first seed of each
    model, ``what`` one of clean, smoothness, sens, pgd, xi, xi_logits, seconds."""
    out = {}
    tags = {"sNODE, L²": "l2", "sNODE, Sobolev": "sobolev", "ResNet, Adam": "adam"}
    for key, r in results.items():
        name = key.split("/")[0]
        if f"{tags[name]}/clean" in out:
            continue
        row = _row(key, r)
        for what in ("clean", "smooth", "sens", "pgd", "xi", "xi_logits", "seconds", "sens_found", "pgd_found"):
            out[f"{tags[name]}/{what}"] = row[what]
        lin, mc = r["propagation"]["linear"], r["propagation"]["monte_carlo"]
        out[f"{tags[name]}/propagation_gap"] = max(abs(a - b) / b for a, b in zip(lin, mc))
    return out


def claim(results: dict) -> str:
    """One Markdown paragraph on the paper's qualitative claim (§3.7), from the results: the median
    minimal adversarial norms of each sNODE against the ResNet analogue under both attacks (means
    over seeds of the per-seed medians), with their clean accuracies, and whether both attacks
    agree on the order."""
    by_model = {}
    for key, r in results.items():
        by_model.setdefault(key.split("/")[0], []).append(_row(key, r))
    mean = lambda rows, what: statistics.fmean(r[what] for r in rows)  # noqa: E731
    if "ResNet, Adam" not in by_model:
        return "The ResNet analogue was not run, so the claim cannot be tested here."
    ref = by_model["ResNet, Adam"]
    seeds = len(ref)
    parts, verdicts = [], []
    for name in ("sNODE, L²", "sNODE, Sobolev"):
        if name not in by_model:
            continue
        rows = by_model[name]
        higher = [mean(rows, a) > mean(ref, a) for a in ("sens", "pgd")]
        verdicts.append(all(higher))
        parts.append(
            f"{name}: {mean(rows, 'sens'):.2f} (sensitivity attack) and {mean(rows, 'pgd'):.2f} (PGD) at "
            f"{mean(rows, 'clean'):.1%} clean accuracy"
        )
    base = f"ResNet analogue: {mean(ref, 'sens'):.2f} and {mean(ref, 'pgd'):.2f} at {mean(ref, 'clean'):.1%}"
    if all(verdicts):
        verdict = "both sNODE variants have the larger median minimal norm under both attacks"
    elif any(verdicts):
        verdict = "only one sNODE variant has the larger median minimal norm under both attacks"
    else:
        verdict = "no sNODE variant has the larger median minimal norm under both attacks"
    return (
        f"**The paper's claim, tested.** Median minimal adversarial ℓ2 norms ({seeds} seed(s)): "
        + "; ".join(parts)
        + f"; {base}. In this run {verdict}. The models are compared after the same "
        "number of epochs, not at equal clean accuracy, and a more accurate model has more images to "
        "lose, so the comparison of robustness is confounded with that of accuracy; the full runs of "
        "§3.7 are the test at the paper's scale."
    )


def full_cost(bench: dict, *, images: int = 60_000) -> dict:
    """What the full-mode record costs at the speeds of a ``scripts/bench_snode.py`` record (§3.7):
    ``ncg_epoch_minutes`` and ``adam_epoch_minutes`` for an epoch of ``images`` images, and ``hours``
    for the full-mode :data:`SIZES` (two NCG trainings, L² and Sobolev, and one Adam training per
    seed, each of ``epochs`` epochs), training only."""
    rows = {r["what"].split()[0]: r["images_per_second"] for r in bench["results"]}
    if min(rows["NCG"], rows["Adam"]) <= 0:
        raise ValueError(f"the benchmark record has a non-positive speed ({rows}).")
    ncg, adam = images / rows["NCG"], images / rows["Adam"]
    full = sizes("full")
    return {"ncg_epoch_minutes": ncg / 60, "adam_epoch_minutes": adam / 60,
            "hours": (2 * ncg + adam) * full["epochs"] * len(full["seeds"]) / 3600}  # fmt: skip


def bench_table(bench: dict) -> report.Table:
    """The record of ``scripts/bench_snode.py`` (§3.7): time, images per second and peak memory of
    the hand-written adjoint, autograd, an NCG epoch and an Adam epoch on the same network."""
    z = bench["sizes"]
    return report.table(
        bench["results"],
        [
            ("what", "what"),
            ("seconds", "seconds", "{:.3f}"),
            ("images per second", "images_per_second", "{:.0f}"),
            ("peak memory", "peak_mb", "{:.0f} MB"),
            ("of which before", "before_mb", "{:.0f} MB"),
        ],
        caption=f"d = {z['dim']}, N = {z['steps']}, batch {z['batch']}, {z['images']} images; {bench['device_name']}, "
        f"{bench['threads']} threads, {bench['created'][:10]}, commit {str(bench['commit'])[:10]}",
    )
