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

from .. import attacks, bench, data, report, snode, train
from ..runtime import resolve_device
from . import DATA, Job, cached, execute, given, per_mode, pick

__all__ = [
    "SIZES",
    "RECORD",
    "DATA",
    "MODELS",
    "sizes",
    "dataset",
    "build",
    "train_model",
    "jobs",
    "run",
    "bench_methods",
    "size_values",
    "rough_snode",
    "roughness_values",
    "plot_profiles",
    "gradient_comparison",
    "gradient_table",
    "gradient_values",
    "bench_values",
    "verify",
    "table",
    "values",
    "propagation",
    "attacked",
    "claim",
    "record_note",
    "missing_note",
    "bench_table",
    "overhead_table",
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
   radii=[0.125 * 2**k for k in range(6)], bisections=6, pgd_steps=20, step_size=0.03, trace_every=5)
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


def build(dim: int, *, T, steps, activation, loss, seed=0, device=None) -> snode.SNODE:
    """The chapter's network, which the bench (§6.1) builds too: an :class:`~labkit.snode.SNODE` of
    ``dim`` pixels on ``[0, T]`` with ``steps`` Euler steps, its weights drawn from ``seed``."""
    torch.manual_seed(seed)
    model = snode.SNODE(
        dim, T=T, steps=steps, activation=activation, loss=loss, generator=torch.Generator().manual_seed(seed)
    )
    return model.to(resolve_device(device))


def train_model(model, train_set, name: str, *, epochs, batch_size, iterations, lr, seed=0, after=None, progress=None):
    """Train ``model`` as the training ``name`` of :data:`MODELS` does: NCG (``iterations`` per
    batch) with L² or Sobolev gradients, or Adam (learning rate ``lr``) for the ResNet analogue;
    ``after(model)`` after every batch. Returns the :class:`~labkit.train.History`."""
    if name not in MODELS:
        raise ValueError(f"the trainings are {MODELS}, got {name!r}.")
    if name.startswith("sNODE"):
        return snode.ncg_train(
            model,
            train_set,
            epochs=epochs,
            batch_size=batch_size,
            iterations=iterations,
            sobolev=name.endswith("Sobolev"),
            seed=seed,
            after_batch=after,
            desc=name,
            progress=progress,
        )
    return snode.fit_backprop(
        model, train_set, epochs=epochs, lr=lr, batch_size=batch_size, seed=seed, after_step=after, progress=progress
    )


def _traced(s, train_set, run_seed, dev):
    """A new network of the sizes ``s`` for ``run_seed``, its loss trace on a fixed probe of 500
    training images and the hook that extends the trace every ``trace_every`` batches."""
    model = build(
        train_set.tensors[0][0].numel(),
        T=s.T,
        steps=s.steps,
        activation=s.activation,
        loss=s.loss,
        seed=run_seed,
        device=dev,
    )
    probe_x, probe_y = model.encode(train_set.tensors[0][:500].to(dev)), train_set.tensors[1][:500].to(dev)
    trace, batches = [(0, _probe(model, probe_x, probe_y))], [0]

    def after(m):
        batches[0] += 1
        if batches[0] % s.trace_every == 0:
            trace.append((batches[0], _probe(m, probe_x, probe_y)))

    return model, trace, after


def _ensemble(s, train_set, together, dev) -> dict:
    """The NCG trainings ``together`` (key, name, seed) in one batched pass: ``{key: (model, kept)}``,
    each kept with its trace, the time of the whole pass and the number of networks in it."""
    built = [_traced(s, train_set, run_seed, dev) for _, _, run_seed in together]
    t0 = time.perf_counter()
    snode.ncg_train_ensemble(
        [m for m, _, _ in built],
        train_set,
        seeds=[k[2] for k in together],
        sobolev=[k[1].endswith("Sobolev") for k in together],
        epochs=s.epochs,
        batch_size=s.batch_size,
        iterations=s.iterations,
        after_batch=lambda i, m: built[i][2](m),
        desc="sNODE ensemble",
    )
    seconds = time.perf_counter() - t0
    return {
        k[0]: (m, {"trace": trace, "seconds": seconds, "ensemble": len(built)})
        for k, (m, trace, _) in zip(together, built)
    }


def jobs(s, *, seed=0, device=None, ensemble=None, done=None) -> list[Job]:
    """One :class:`~labkit.chapters.Job` per training of :data:`MODELS` and seed of the sizes ``s``:
    :func:`build`, :func:`train_model` with the probe's trace, then the measurements. With
    ``ensemble`` (default: on a CUDA device) the NCG trainings not in ``done``, of every seed and
    both gradients, train together in one batched pass (:func:`labkit.snode.ncg_train_ensemble`, the
    same weights to rounding), run by the first of their jobs, which come first; each then records
    the time of the whole pass and ``"ensemble"``, the number of networks in it."""
    dev = resolve_device(device)
    tr = cached(lambda: dataset(True, s.n_train, s.factor))
    te = cached(lambda: dataset(False, s.n_test, s.factor))
    schedule = {"epochs": s.epochs, "batch_size": s.batch_size, "iterations": s.iterations, "lr": s.adam_lr}

    def one(name, run_seed):
        model, trace, after = _traced(s, tr(), run_seed, dev)
        train_model(model, tr(), name, **schedule, seed=run_seed, after=after)
        return model, {"trace": trace}

    keys = [(f"{name}/seed {run_seed}", name, run_seed) for run_seed in s.seeds for name in MODELS]
    together = [k for k in keys if k[1].startswith("sNODE") and not (done and k[0] in done)]
    trained = {}
    if (dev.type == "cuda" if ensemble is None else ensemble) and len(together) > 1:
        passed = cached(lambda: _ensemble(s, tr(), together, dev))
        trained = {k[0]: (lambda key=k[0]: passed()[key]) for k in together}

    def evaluate(model, kept, seconds, run_seed):
        extra = {"ensemble": kept["ensemble"]} if "ensemble" in kept else {}
        return {**_measure(model, te(), s, run_seed, kept["trace"], kept.get("seconds", seconds)), **extra}

    out = [
        Job(
            key,
            trained.get(key, lambda name=name, run_seed=run_seed: one(name, run_seed)),
            lambda m, kept, sec, run_seed=run_seed: evaluate(m, kept, sec, run_seed),
            run_seed,
        )
        for key, name, run_seed in keys
    ]
    return sorted(out, key=lambda job: job.key not in trained)  # one pass trains the ensemble: its jobs first


def run(*, seed=0, device=None, done=None, on_result=None, ensemble=None, **sizes) -> dict:
    """Train the :data:`MODELS` for every seed of the :data:`SIZES` given and measure them
    (:func:`jobs`); results keyed ``"<model>/seed <s>"``, each with the clean accuracy, the training
    trace (loss of a fixed probe of 500 training images every ``trace_every`` batches), the time,
    the smoothness, the weights of a few entries along ``t``, the minimal adversarial norms of both
    attacks on the first ``attack_images`` test images, ``‖Ξ(T)‖₂`` statistics and the noise
    propagation. Results in ``done`` are kept, and ``on_result(key, result)`` is called after each
    new run (:func:`labkit.chapters.execute`; ``python -m labkit.chapters ch03`` keeps a partial
    record with them). ``device``: default the runtime's (a GPU when there is one). ``seed`` is
    unused: the seeds are the size ``seeds``."""
    s = given(sizes, SIZES)
    out = execute(jobs(s, device=device, ensemble=ensemble, done=done), done=done, on_result=on_result)
    return {f"{name}/seed {run_seed}": out[f"{name}/seed {run_seed}"] for run_seed in s.seeds for name in MODELS}


def _measure(model, te, s, seed, trace, seconds) -> dict:
    model.eval()
    dev = model.W.device
    clean = train.evaluate(model, te, device=dev)["accuracy"]
    x_img, y = te.tensors[0][: s.attack_images].to(dev), te.tensors[1][: s.attack_images].to(dev)
    x0 = model.encode(x_img)
    sens = snode.sensitivity_attack(
        model, x0, y, steps=s.attack_steps, step_size=s.step_size, generator=torch.Generator().manual_seed(seed)
    )
    pgd = attacks.minimal_l2(
        model,
        x_img,
        y,
        s.radii,
        steps=s.pgd_steps,
        bisections=s.bisections,
        generator=torch.Generator().manual_seed(seed),
    )
    Xi = snode.input_jacobian(model, model.encode(te.tensors[0][: s.jacobian_images].to(dev)))
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
            "reach": {"sensitivity": s.attack_steps * s.step_size, "pgd": s.radii[-1]},
            "pgd_search": f"grid and {s.bisections} bisections",
        },
        "jacobian": {"state": xi_norms.tolist(), "logits": logit_norms.tolist()},
        "propagation": propagation(model, te.tensors[0][0].to(dev), s.noise, s.mc_samples, seed),
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
    noisy = x0 + noise * torch.randn(samples, x0.shape[1], generator=g, dtype=x0.dtype).to(x0.device)
    with torch.no_grad():
        out = model.flow(noisy)[:, : model.classes]
    return {
        "linear": cov.diagonal().sqrt().tolist(),
        "monte_carlo": out.std(0).tolist(),
        "noise": noise,
        "samples": samples,
    }


def attacked(r: dict) -> dict:
    """The minimal-norm statistics of one run (§3.5), over the correctly classified attacked images
    only, the same images for both attacks: per attack (``"sensitivity"``, ``"pgd"``) and for the
    per-image minimum of the two (``"both"``), the median minimal norm
    (:func:`~labkit.attacks.median_minimal_norm`, an image the attack never flipped counted as
    above its reach), the share of images flipped (``"<attack>_found"``) and the reach; and
    ``"accuracy"``, the share of attacked images classified correctly. Records made before the
    attacks named their reach get the reference code's 0.03 per step and the grid's last radius."""
    a = r["attack"]
    sens = [math.inf if v is None else v for v in a["sensitivity"]]
    pgd = [math.inf if v is None else v for v in a["pgd"]]
    both = [min(u, v) for u, v in zip(sens, pgd)]
    reach = a.get("reach", {"sensitivity": 0.03 * a["steps"], "pgd": None})
    out = {"accuracy": sum(v > 0 for v in sens) / len(sens)}
    for name, norms in (("sensitivity", sens), ("pgd", pgd), ("both", both)):
        correct = [v for v in norms if v > 0]
        out[name] = attacks.median_minimal_norm(norms)
        out[f"{name}_found"] = sum(math.isfinite(v) for v in correct) / max(len(correct), 1)
    out["reach"] = {**reach, "both": reach["pgd"]}
    return out


def _median_text(value, reach) -> str:
    if math.isinf(value):
        return f"> {reach:.2f}" if reach else "above reach"
    return "–" if math.isnan(value) else f"{value:.2f}"


def verify(results: dict) -> None:
    """Raise ``AssertionError`` if a training trace is not finite, if a reported attack norm is
    negative, or if a linearised or Monte Carlo standard deviation is not a finite positive number.
    How far the two lie apart is a finding about the network at that noise level, not an error:
    :func:`record_note` reports it (a trained network can be nonlinear at the noise of §3.5)."""
    for key, r in results.items():
        assert all(math.isfinite(v) for _, v in r["trace"]), f"{key}: a non-finite loss in the trace"
        for attack in ("sensitivity", "pgd"):
            assert all(v is None or v >= 0 for v in r["attack"][attack]), f"{key}: a negative {attack} norm"
        for kind in ("linear", "monte_carlo"):
            values = r["propagation"][kind]
            assert all(math.isfinite(v) and v > 0 for v in values), f"{key}: a {kind} standard deviation {values}"


def _row(key, r):
    name, seed = key.split("/")
    a = attacked(r)
    return {
        "model": name,
        "seed": seed.split()[-1],
        "clean": r["clean"],
        "seconds": r["seconds"],
        "smooth": r["smoothness"],
        "sens": a["sensitivity"],
        "sens_reach": a["reach"]["sensitivity"],
        "pgd_reach": a["reach"]["pgd"],
        "both_reach": a["reach"]["both"],
        "sens_text": _median_text(a["sensitivity"], a["reach"]["sensitivity"]),
        "sens_found": a["sensitivity_found"],
        "pgd": a["pgd"],
        "pgd_text": _median_text(a["pgd"], a["reach"]["pgd"]),
        "pgd_found": a["pgd_found"],
        "both": a["both"],
        "both_text": _median_text(a["both"], a["reach"]["both"]),
        "attacked_accuracy": a["accuracy"],
        "xi": statistics.median(r["jacobian"]["state"]),
        "xi_logits": statistics.median(r["jacobian"]["logits"]),
    }


def _search(results: dict) -> str:
    searches = {r["attack"].get("pgd_search", "a grid of radii 0.05 apart") for r in results.values()}
    return "; ".join(sorted(searches))


def table(results: dict) -> report.Table:
    """§3.5's table: per model and seed, accuracy, training time, smoothness, the medians of the
    minimal adversarial norms (:func:`attacked`) and of ``‖Ξ(T)‖₂``."""
    return report.table(
        [_row(k, r) for k, r in results.items()],
        [
            ("model", "model"),
            ("seed", "seed"),
            ("clean", "clean", "{:.3f}"),
            ("training", "seconds", "{:.0f} s"),
            ("∫‖∂ₜW‖²", "smooth", "{:.3g}"),
            ("sensitivity attack: median ‖δ‖", "sens_text"),
            ("flipped", "sens_found", "{:.0%}"),
            ("PGD search: median ‖δ‖", "pgd_text"),
            ("flipped", "pgd_found", "{:.0%}"),
            ("either: median ‖δ‖", "both_text"),
            ("median ‖Ξ(T)‖₂", "xi", "{:.2f}"),
            ("logit rows", "xi_logits", "{:.2f}"),
        ],
        caption="Minimal adversarial ℓ2 norms in the 14×14 pixel space: medians over the correctly classified "
        "attacked images, the same images for both attacks; an image an attack never flipped counts as above the "
        "attack's reach ('> r' where that decides the median); 'either' takes per image the smaller of the two "
        "norms; 'flipped' is the share of those images an attack flipped. PGD's search: " + _search(results) + ".",
    )


def values(results: dict) -> dict:
    """The numbers the prose quotes, ``{"<model>/<what>": value}`` for the first seed of each
    model, ``what`` one of clean, smooth, sens, pgd, both (the medians of :func:`attacked`; with
    ``_text`` appended, as the table prints them, ``"> r"`` for a median above the reach),
    sens_found, pgd_found, attacked_accuracy, xi, xi_logits, seconds, propagation_gap."""
    out = {}
    tags = {"sNODE, L²": "l2", "sNODE, Sobolev": "sobolev", "ResNet, Adam": "adam"}
    for key, r in results.items():
        name = key.split("/")[0]
        if f"{tags[name]}/clean" in out:
            continue
        row = _row(key, r)
        for what in (
            "clean",
            "smooth",
            "sens",
            "pgd",
            "both",
            "sens_text",
            "pgd_text",
            "both_text",
            "xi",
            "xi_logits",
            "seconds",
            "sens_found",
            "pgd_found",
            "attacked_accuracy",
        ):
            out[f"{tags[name]}/{what}"] = row[what]
        lin, mc = r["propagation"]["linear"], r["propagation"]["monte_carlo"]
        out[f"{tags[name]}/propagation_gap"] = max(abs(a - b) / b for a, b in zip(lin, mc))
    return out


def claim(results: dict) -> str:
    """One Markdown paragraph on the paper's qualitative claim (§3.7), from the results: the median
    minimal adversarial norms of each sNODE against the ResNet analogue (means over seeds of the
    per-seed medians of :func:`attacked`: over the correctly classified attacked images, per attack
    and for the per-image minimum of the two), with their clean accuracies; the verdict is read from
    the per-image minimum, the best estimate of each image's minimal norm that the two attacks
    give, and says whether each attack alone orders the models the same way."""
    by_model = {}
    for key, r in results.items():
        by_model.setdefault(key.split("/")[0], []).append(_row(key, r))
    mean = lambda rows, what: statistics.fmean(r[what] for r in rows)  # noqa: E731
    text = lambda rows, what: _median_text(mean(rows, what), rows[0][f"{what}_reach"])  # noqa: E731
    if "ResNet, Adam" not in by_model:
        return "The ResNet analogue was not run, so the claim cannot be tested here."
    ref = by_model["ResNet, Adam"]
    seeds = len(ref)
    parts, verdicts, agree = [], [], []
    for name in ("sNODE, L²", "sNODE, Sobolev"):
        if name not in by_model:
            continue
        rows = by_model[name]
        verdicts.append(mean(rows, "both") > mean(ref, "both"))
        # an attack that leaves both medians beyond its reach orders nothing
        ordered = [a for a in ("sens", "pgd") if not (math.isinf(mean(rows, a)) and math.isinf(mean(ref, a)))]
        agree.append(all((mean(rows, a) > mean(ref, a)) == verdicts[-1] for a in ordered))
        parts.append(
            f"{name}: {text(rows, 'both')} ({text(rows, 'sens')} by the sensitivity attack, "
            f"{text(rows, 'pgd')} by PGD) at {mean(rows, 'clean'):.1%} clean accuracy"
        )
    base = f"ResNet analogue: {text(ref, 'both')} ({text(ref, 'sens')}, {text(ref, 'pgd')}) at {mean(ref, 'clean'):.1%}"
    if all(verdicts):
        verdict = "both sNODE variants have the larger median minimal norm"
    elif any(verdicts):
        verdict = "only one sNODE variant has the larger median minimal norm"
    else:
        verdict = "no sNODE variant has the larger median minimal norm"
    verdict += (
        ", and each attack alone that orders them (a median beyond an attack's reach orders nothing) "
        "orders them the same way"
        if all(agree)
        else "; the two attacks alone do not always order them the same way"
    )
    return (
        f"**The paper's claim, tested.** Median minimal adversarial ℓ2 norms over the correctly classified "
        f"attacked images, per image the smaller of the two attacks' norms ({seeds} seed(s)): "
        + "; ".join(parts)
        + f"; {base}. In this run {verdict}. The models are compared after the same "
        "number of epochs, not at equal clean accuracy; the medians leave out the misclassified images, "
        "so a less accurate model is measured on fewer images, without those it already gets wrong, which are "
        "likely the ones closest to its decision boundary."
    )


def record_note(record: dict, *, close: float = 0.05) -> str:
    """Markdown on a full-mode record (§3.7): how long it ran and on what; for each network whether
    the linearised noise propagation is within ``close`` (relative) of Monte Carlo or not; and how
    the sNODEs' order under the sensitivity attack compares with the statistic of earlier editions
    (the median of the norms found, misclassified images counted as 0, images never flipped
    dropped), which it reverses on the record of one epoch."""
    results = record["results"]
    lines = [
        f"This record ran on {record.get('device_name', record.get('device'))} "
        f"({record.get('threads', '?')} threads) in {record['seconds'] / 60:.0f} minutes, training and "
        f"measurement, at commit {str(record.get('commit'))[:10]}"
        + (" (a tree with uncommitted changes)" if record.get("dirty") else "")
        + f"; it holds {len(results)} training(s)."
    ]
    near, far = [], []
    for key, r in results.items():
        lin, mc = r["propagation"]["linear"], r["propagation"]["monte_carlo"]
        gap = max(abs(a - b) / b for a, b in zip(lin, mc))
        (near if gap <= close else far).append(f"{key} ({gap:.1%})")
    if near:
        lines.append(f"The linearised noise propagation is within {close:.0%} of Monte Carlo for {', '.join(near)}.")
    if far:
        lines.append(
            "It is further off for "
            + ", ".join(far)
            + (": that network is" if len(far) == 1 else ": those networks are")
            + " nonlinear at this noise level, and the Monte Carlo estimate is the one to trust."
        )
    rows = {key.split("/")[0]: r for key, r in results.items() if key.endswith("seed 0")}
    if {"sNODE, L²", "sNODE, Sobolev"} <= set(rows):

        def old(r):
            found = [v for v in r["attack"]["sensitivity"] if v is not None]
            return statistics.median(found) if found else math.inf

        new = {n: attacked(rows[n])["sensitivity"] for n in ("sNODE, L²", "sNODE, Sobolev")}
        reach = attacked(rows["sNODE, L²"])["reach"]["sensitivity"]
        was = {n: old(rows[n]) for n in new}
        order = lambda d: "L² above Sobolev" if d["sNODE, L²"] > d["sNODE, Sobolev"] else "Sobolev above L²"  # noqa: E731
        shown = {n: _median_text(v, reach) if math.isinf(v) else f"{v:.3f}" for n, v in new.items()}
        was_text = f"{was['sNODE, L²']:.3f} and {was['sNODE, Sobolev']:.3f}"
        if all(math.isinf(v) for v in new.values()):
            lines.append(
                f"Under the sensitivity attack both sNODEs' medians lie beyond its reach of {reach:.2f} (it flips "
                f"fewer than half of the correct images), so this attack alone does not order them; the "
                f"statistic of earlier editions, which dropped the images never flipped, would have given "
                f"{was_text}, an order read from the flipped images alone."
            )
        else:
            same = order(new) == order(was)
            lines.append(
                f"Under the sensitivity attack the sNODEs' medians are {shown['sNODE, L²']} (L²) and "
                f"{shown['sNODE, Sobolev']} (Sobolev), {order(new)}; the statistic of earlier editions of this "
                f"book, which counted misclassified images as 0 and dropped those never flipped, gave "
                f"{was_text}, "
                + ("the same order." if same else f"{order(was)}: the order reverses with the statistic.")
            )
    return " ".join(lines)


def missing_note(bench: dict | None) -> str:
    """What the full-mode record would cost on the machine of a ``bench_snode.py`` record (§3.7),
    for the banner shown when the record is missing."""
    if bench is None:
        return "Its cost on this machine: run scripts/bench_snode.py for an estimate."
    cost = full_cost(bench)
    return (
        f"On {bench['device_name']} ({bench['threads']} threads) one NCG epoch of all 60 000 images at 150 steps "
        f"takes about {cost['ncg_epoch_minutes']:.1f} minutes per model, and the whole record about "
        f"{cost['hours']:.0f} hours of training (the benchmark below)."
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
    return {
        "ncg_epoch_minutes": ncg / 60,
        "adam_epoch_minutes": adam / 60,
        "hours": (2 * ncg + adam) * full["epochs"] * len(full["seeds"]) / 3600,
    }


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


def overhead_table(record: dict) -> report.Table:
    """The record of ``scripts/bench_ncg_overhead.py`` (§3.7): per NCG iteration, the time and the
    operator calls of the reference composition and of the batched iteration, side by side."""
    z = record["sizes"]
    return report.table(
        record["results"],
        [
            ("iteration", "what"),
            ("time per iteration", lambda r: f"{1e3 * r['seconds_per_iteration']:.2f} ms"),
            ("operator calls per iteration", "operator_calls_per_iteration", "{:,.0f}"),
        ],
        caption=f"d = {z['dim']}, N = {z['steps']}, batch {z['batch']}; {record['device_name']}, {record['threads']} "
        f"threads, {record['created'][:10]}, commit {str(record['commit'])[:10]}; the weights of the two differ by "
        f"{record['relative_difference']:.1e} (relative) at the end",
    )


def bench_methods() -> list[bench.Method]:
    """The chapter's trainings on the bench (§6.1): the Sobolev NCG sNODE and the Adam ResNet
    analogue, :func:`build` and :func:`train_model` with the chapter's ``T``, activation, loss,
    iterations and learning rate but ``N = 4`` Euler steps (the bench's budget), on the images
    averaged to 14×14 and scored on full-size images (:class:`labkit.snode.OnImages`)."""
    full = pick(SIZES, "full")
    net = {"T": full["T"], "steps": 4, "activation": full["activation"], "loss": full["loss"]}

    def trainer(name):
        def train_(ctx):
            x, y = ctx.train.tensors
            tr = TensorDataset(snode.downsample(x, full["factor"]), y)
            model = build(tr.tensors[0][0].numel(), **net, seed=ctx.seed, device=ctx.device)
            hist = train_model(
                model,
                tr,
                name,
                epochs=ctx.s.epochs,
                batch_size=ctx.s.batch_size,
                iterations=full["iterations"],
                lr=full["adam_lr"],
                seed=ctx.seed,
                progress=ctx.progress,
            )
            return snode.OnImages(model, full["factor"]), {"history": hist.as_dict()}

        return train_

    common = {
        "chapter": "ch03",
        "kinds": bench.DENSE,
        "certifies": False,
        "paper": "sensitivity",
        "guarantee": "none; Π(1 + h‖W_k‖) computed after training",
        "bound": bench.network_bound,
    }
    return [
        bench.Method(
            name="snode",
            title="sNODE of N = 4 Euler steps (Chapter 3: 30 to 150), NCG with Sobolev gradients",
            train=trainer("sNODE, Sobolev"),
            **common,
        ),
        bench.Method(
            name="snode-resnet", title="sNODE's ResNet analogue (N = 4), Adam", train=trainer("ResNet, Adam"), **common
        ),
    ]


def size_values(sizes: dict) -> dict:
    """The sizes the prose quotes: every number of ``sizes``, the sensitivity attack's reach
    (``attack_steps · step_size``) and the PGD grid of radii as text."""
    reach = sizes["attack_steps"] * sizes["step_size"]
    return {**report.numbers(sizes), "reach": reach, "radii_text": ", ".join(f"{r:g}" for r in sizes["radii"])}


def rough_snode(steps: int = 60) -> snode.SNODE:
    """§3.1's network: an sNODE on 14×14 images with ``steps`` steps whose weights are drawn
    independently for every step, at the ``1/√d`` scale of ResNet layers (seeded)."""
    model = snode.SNODE(196, T=3.0, steps=steps, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        model.W.normal_(0, 1 / math.sqrt(196), generator=torch.Generator().manual_seed(1))
    return model


def _rough(g) -> float:
    return float((g[1:] - g[:-1]).pow(2).sum() / g.pow(2).sum())


def roughness_values(gW, vW) -> dict:
    """The step-to-step change of the L² and the Sobolev gradient relative to their size, over all
    entries (``mot_rough_l2``, ``mot_rough_sob``)."""
    return {"mot_rough_l2": _rough(gW), "mot_rough_sob": _rough(vW)}


def plot_profiles(model, gW, vW):
    """§3.1's figure: along the depth, the entry of the L² gradient ``gW`` with the largest total
    size, and the same entry of the Sobolev gradient ``vW``, each scaled to its maximum."""
    import matplotlib.pyplot as plt
    import numpy as np

    t = (np.arange(model.steps) + 0.5) * model.h
    i, j = np.unravel_index(int(gW.abs().sum(0).argmax()), gW.shape[1:])
    fig, ax = plt.subplots(figsize=(6, 3.2))
    ax.plot(t, gW[:, i, j] / gW[:, i, j].abs().max(), label="$L^2$ gradient (scaled)")
    ax.plot(t, vW[:, i, j] / vW[:, i, j].abs().max(), label="Sobolev gradient (scaled)")
    ax.set(xlabel="depth t", title=f"one entry of ∂E/∂W(t), W[{i}, {j}]")
    ax.legend(fontsize=8)
    fig.tight_layout()
    return fig


def gradient_comparison() -> list:
    """§3.3's comparison on a small float64 sNODE (7×7 images, 30 steps): the exact gradient of the
    Euler network by the discrete adjoint against autograd through it, against dopri5 with the
    continuous adjoint at tolerances 1e-3, 1e-6 and 1e-9, and against backpropagation through
    dopri5 at 1e-9. Rows with the relative difference to the exact and to the continuous gradient."""
    small = snode.SNODE(49, T=3.0, steps=30, classes=10, generator=torch.Generator().manual_seed(1)).double()
    imgs = dataset(True, 32, 4)
    x0, y = small.encode(imgs.tensors[0]).double(), imgs.tensors[1]
    exact = snode.adjoint_gradient(small, x0, y)[0]
    rows = [{"how": "autograd through the Euler network", "g": snode.autograd_gradient(small, x0, y)[0]}]
    for tol in (1e-3, 1e-6, 1e-9):
        g = snode.adaptive_gradient(small, x0, y, rtol=tol, atol=tol)[0]
        rows.append({"how": f"dopri5 + continuous adjoint, tol {tol:g}", "g": g})
    g = snode.adaptive_gradient(small, x0, y, rtol=1e-9, atol=1e-9, adjoint=False)[0]
    rows.append({"how": "dopri5 + backprop through the solver, tol 1e-9", "g": g})
    tight = rows[3]["g"]
    for r in rows:
        r["exact"] = float((r["g"] - exact).norm() / exact.norm())
        r["continuous"] = float((r["g"] - tight).norm() / tight.norm())
    return rows


def gradient_table(rows: list) -> report.Table:
    """The table of :func:`gradient_comparison`."""
    return report.table(
        rows,
        [
            ("gradient", "how"),
            ("relative difference to the exact Euler gradient", "exact", "{:.1e}"),
            ("to the continuous gradient (tol 1e-9)", "continuous", "{:.1e}"),
        ],
    )


def gradient_values(rows: list) -> dict:
    """The differences the prose quotes: autograd's from the exact gradient, the loose continuous
    adjoint's from the tight one, and the tight one's from the exact (the model error)."""
    return {"dto_autograd": rows[0]["exact"], "otd_loose": rows[1]["continuous"], "otd_model": rows[3]["exact"]}


def bench_values(record: dict) -> dict:
    """The ratios of the benchmark ``record`` the prose quotes: the adjoint's time over autograd's
    and an NCG epoch's over an Adam epoch's."""
    rows = {r["what"].split()[0]: r for r in record["results"]}
    return {
        "adjoint_ratio": rows["adjoint"]["seconds"] / rows["autograd"]["seconds"],
        "epoch_ratio": rows["NCG"]["seconds"] / rows["Adam"]["seconds"],
    }
