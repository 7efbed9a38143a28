"""An independent audit of certificates (§4.4): the certified points are attacked by a library that
labkit does not write, the Adversarial Robustness Toolbox (ART), with its AutoPGD in ℓ2 at a fraction
of each point's certified radius. A sound certificate loses no point; a flipped one means the
certificate, or the bound it rests on, is wrong.

The bench of §6 uses the same library for its empirical numbers: AutoPGD with the cross-entropy and
the DLR loss in ℓ2 and ℓ∞ (:func:`apgd_robust`), DeepFool for minimal perturbations
(:func:`deepfool_norms`) and a batched audit at each point's own radius (:func:`certificates_batch`),
all through ART's public classes.

Why ART: it is maintained, has AutoPGD with both losses, DeepFool and AutoAttack in one package,
runs PyTorch models on the CPU and the GPU, and installs beside the book's tools with ``pip check``
clean. ``torchattacks``
3.5.1 pins ``requests~=2.25.1``, below what Sphinx needs, so it cannot share the book's
environment.
"""

from __future__ import annotations

import numpy as np
import torch

from . import _validate, attacks

__all__ = [
    "CHECKS",
    "check",
    "certificates",
    "certificates_batch",
    "apgd_robust",
    "apgd_accuracy",
    "deepfool_norms",
    "library",
]

#: The largest batch the batched attacks hand to ART at once (they attack every point; this bounds the memory).
BATCH = 1024


def _library():
    # imported here: ART takes two seconds to import, and only an audit needs it
    import art
    from art.attacks.evasion import AutoProjectedGradientDescent
    from art.estimators.classification import PyTorchClassifier

    return art.__version__, AutoProjectedGradientDescent, PyTorchClassifier


def library() -> str:
    """The independent library and its version, as the records name it."""
    return f"adversarial-robustness-toolbox {_library()[0]}"


def _classifier(model, x, clamp):
    """``(ART classifier, number of classes)`` for ``model`` on inputs shaped like ``x``."""
    _, _, Classifier = _library()
    with torch.no_grad(), attacks.frozen(model):
        classes = int(model(x[:1]).shape[1])
    kind = "gpu" if next(model.parameters()).device.type == "cuda" else "cpu"
    clf = Classifier(
        model=model,
        loss=torch.nn.CrossEntropyLoss(),
        input_shape=tuple(x.shape[1:]),
        nb_classes=classes,
        clip_values=tuple(clamp),
        device_type=kind,
    )
    return clf, classes


def _radii(radii, x) -> torch.Tensor:
    """The certified radii as float64, one finite value per point of ``x``; ``ValueError`` otherwise."""
    radii = torch.as_tensor(radii, dtype=torch.float64).flatten()
    if radii.shape[0] != x.shape[0] or not bool(torch.isfinite(radii).all()):
        raise ValueError(f"radii must be {x.shape[0]} finite values, one per point, got {tuple(radii.shape)}.")
    return radii


def _predict(model, adv, like) -> torch.Tensor:
    with torch.no_grad(), attacks.frozen(model):
        t = torch.as_tensor(adv, dtype=like.dtype, device=like.device)
        return torch.cat([model(b).argmax(1) for b in t.split(512)])


def apgd_accuracy(model, x, y, eps: float, **options) -> float:
    """Accuracy of ``model`` on ``(x, y)`` under ART's AutoPGD at radius ``eps``: the mean of
    :func:`apgd_robust` (same options)."""
    return float(apgd_robust(model, x, y, eps, **options).float().mean())


def apgd_robust(
    model, x, y, eps: float, *, norm: str = "l2", steps: int = 20, restarts: int = 1, clamp=(0.0, 1.0), seed: int = 0
) -> torch.Tensor:
    """Which points of ``(x, y)`` stay correctly classified under ART's AutoPGD at radius ``eps`` in
    ``norm`` (``"l2"`` or ``"linf"``), the AutoAttack pair (§6.2): a point counts as robust only if
    neither the cross-entropy nor the DLR loss (three classes or more) flips it, each with ``steps``
    iterations and ``restarts`` random starts, batched. ``eps = 0`` gives the clean predictions."""
    if norm not in attacks.NORMS:
        raise ValueError(f"norm must be one of {attacks.NORMS}, got {norm!r}.")
    eps = _validate.nonneg(eps, "eps")
    steps, restarts = _validate.positive_int(steps, "steps"), _validate.positive_int(restarts, "restarts")
    _validate.batch(x, y)
    ok = _predict(model, x, x) == y
    if eps == 0 or not bool(ok.any()):
        return ok
    _, APGD, _ = _library()
    clf, classes = _classifier(model, x, clamp)
    losses = ["cross_entropy"] + (["difference_logits_ratio"] if classes >= 3 else [])
    np.random.seed(seed)
    with attacks.frozen(model):
        for loss in losses:
            idx = torch.nonzero(ok).flatten()
            if idx.numel() == 0:
                break
            apgd = APGD(
                clf,
                norm=2 if norm == "l2" else np.inf,
                eps=eps,
                eps_step=eps / 4 if norm == "l2" else eps / 2,
                max_iter=steps,
                nb_random_init=restarts,
                batch_size=min(len(idx), BATCH),
                loss_type=loss,
                verbose=False,
            )
            point = x[idx].detach().cpu().numpy()
            adv = apgd.generate(point, y=np.eye(classes)[y[idx].cpu().numpy()])
            ok[idx] = _predict(model, adv, x) == y[idx]
    return ok


def deepfool_norms(model, x, y, *, max_iter: int = 50, overshoot: float = 0.02, clamp=(0.0, 1.0)) -> torch.Tensor:
    """ART's DeepFool (a minimal-norm attack in ℓ2, §6.2) on ``(x, y)``: per point the ℓ2 norm of the
    adversarial perturbation it found (an upper estimate of the minimal adversarial norm), 0 for a
    point misclassified already, ``inf`` where it did not change the prediction within
    ``max_iter`` iterations (``overshoot`` pushes each step slightly past the boundary)."""
    from art.attacks.evasion import DeepFool

    _validate.batch(x, y)
    clf, classes = _classifier(model, x, clamp)
    pred = _predict(model, x, x)
    out = torch.where(pred != y, 0.0, float("inf")).to(torch.float64)
    idx = torch.nonzero(pred == y).flatten()
    if idx.numel():
        attack = DeepFool(
            clf,
            max_iter=_validate.positive_int(max_iter, "max_iter"),
            epsilon=_validate.nonneg(overshoot, "overshoot"),
            nb_grads=classes,
            batch_size=min(len(idx), BATCH),
            verbose=False,
        )
        with attacks.frozen(model):
            adv = attack.generate(x[idx].detach().cpu().numpy())
        fooled = (_predict(model, adv, x) != y[idx]).cpu()
        dist = torch.linalg.vector_norm(
            torch.as_tensor(adv, dtype=torch.float64) - x[idx].detach().cpu().double(), dim=tuple(range(1, x.ndim))
        )
        out[idx.cpu()] = torch.where(fooled, dist, torch.full_like(dist, float("inf")))
    return out


def certificates_batch(model, x, y, radii, *, fraction: float = 0.99, steps: int = 20, clamp=(0.0, 1.0)) -> dict:
    """The batched audit of every certified point (§6.2): ART's PGD in ℓ2 with a per-point radius,
    ``fraction`` of each point's certified radius in ``radii`` (points with radius 0 are not
    attacked), ``steps`` iterations of a quarter of the radius from the point itself (ART draws no random start
    for per-point ℓ2 radii), inside the box ``clamp``. Returns ``{"points", "flipped", "flipped_index", "attack"}`` as
    :func:`certificates` does; a sound certificate flips none."""
    from art.attacks.evasion import ProjectedGradientDescent

    fraction = _validate.positive(fraction, "fraction")
    steps = _validate.positive_int(steps, "steps")
    _validate.batch(x, y)
    radii = _radii(radii, x).cpu()
    idx = torch.nonzero(radii > 0).flatten()
    flipped = []
    if idx.numel():
        clf, classes = _classifier(model, x, clamp)
        eps = (fraction * radii[idx]).numpy().astype(np.float32).reshape(-1, *([1] * (x.ndim - 1)))
        attack = ProjectedGradientDescent(
            clf,
            norm=2,
            eps=eps,
            eps_step=eps / 4,
            max_iter=steps,
            num_random_init=0,
            batch_size=min(len(idx), BATCH),
            verbose=False,
        )
        sel = idx.to(x.device)
        with attacks.frozen(model):
            adv = attack.generate(x[sel].detach().cpu().numpy(), y=np.eye(classes)[y[sel].cpu().numpy()])
        bad = (_predict(model, adv, x) != y[sel]).cpu()
        flipped = idx[bad].tolist()
    attack = {
        "library": library(),
        "attack": "PGD, l2, per-point radius",
        "steps": steps,
        "restarts": 0,
        "fraction": fraction,
    }
    return {"points": int(idx.numel()), "flipped": len(flipped), "flipped_index": flipped, "attack": attack}


def certificates(
    model,
    x,
    y,
    radii,
    *,
    fraction: float = 0.99,
    steps: int = 50,
    restarts: int = 1,
    clamp=(0.0, 1.0),
    limit: int | None = None,
    seed: int = 0,
) -> dict:
    """Attack each of the (first ``limit``) points of ``x`` with a positive certified radius in
    ``radii`` by ART's AutoPGD in ℓ2 at ``fraction`` of its radius, with the cross-entropy loss and,
    for three classes or more, the DLR loss, each with ``steps`` iterations and ``restarts`` random
    starts, inside the box ``clamp``. Returns ``{"points", "flipped", "flipped_index", "attack"}``:
    the points attacked, how many the attacks flipped (0 for a sound certificate), which, and the
    attacks' description (library and version, losses, steps, restarts, fraction). The model is
    evaluated in eval mode; its parameters are not changed."""
    fraction = _validate.positive(fraction, "fraction")
    steps, restarts = _validate.positive_int(steps, "steps"), _validate.positive_int(restarts, "restarts")
    _validate.batch(x, y)
    radii = _radii(radii, x)
    version, APGD, _ = _library()
    clf, classes = _classifier(model, x, clamp)
    losses = ["cross_entropy"] + (["difference_logits_ratio"] if classes >= 3 else [])
    index = torch.nonzero(radii > 0).flatten()[:limit].tolist()
    np.random.seed(seed)  # ART draws its random starts from NumPy's global generator
    flipped = []
    with attacks.frozen(model):
        for i in index:
            eps = fraction * float(radii[i])
            point, label = x[i : i + 1].detach().cpu().numpy(), np.eye(classes)[[int(y[i])]]
            for loss in losses:
                apgd = APGD(
                    clf,
                    norm=2,
                    eps=eps,
                    eps_step=eps / 4,
                    max_iter=steps,
                    nb_random_init=restarts,
                    batch_size=1,
                    loss_type=loss,
                    verbose=False,
                )
                adv = torch.as_tensor(apgd.generate(point, y=label), dtype=x.dtype, device=x.device)
                with torch.no_grad():
                    if int(model(adv).argmax(1)[0]) != int(y[i]):
                        flipped.append(i)
                        break
    attack = {
        "library": f"adversarial-robustness-toolbox {version}",
        "attack": "AutoPGD, l2",
        "losses": losses,
        "steps": steps,
        "restarts": restarts,
        "fraction": fraction,
    }
    return {"points": len(index), "flipped": len(flipped), "flipped_index": flipped, "attack": attack}


#: The attacks of :func:`check`, labkit's own PGD, ART's batched PGD (:func:`certificates_batch`) and
#: ART's AutoPGD point by point (:func:`certificates`).
CHECKS = ("labkit", "art-pgd", "art-apgd")


def check(
    model,
    x,
    y,
    radii,
    *,
    attack: str = "labkit",
    steps: int = 50,
    limit: int | None = None,
    fraction: float = 0.99,
    seed: int = 0,
    **options,
) -> dict:
    """The soundness check of certificates (§4.4, §6.2), whichever library attacks: each of the (first
    ``limit``) points of ``x`` with a positive certified radius in ``radii`` is attacked in ℓ2 at
    ``fraction`` of its own radius by ``attack`` (one of :data:`CHECKS`) with ``steps`` iterations.
    ``"labkit"``: :func:`labkit.attacks.pgd` with a random start from a generator seeded ``seed``;
    the ART attacks take their own ``options``. Returns ``{"points", "flipped", "flipped_index",
    "attack"}``; a sound certificate flips none."""
    if attack == "art-pgd":
        return certificates_batch(model, x, y, radii, fraction=fraction, steps=steps, **options)
    if attack == "art-apgd":
        return certificates(model, x, y, radii, fraction=fraction, steps=steps, limit=limit, seed=seed, **options)
    if attack != "labkit":
        raise ValueError(f"attack must be one of {CHECKS}, got {attack!r}.")
    fraction = _validate.positive(fraction, "fraction")
    _validate.batch(x, y)
    radii = _radii(radii, x).to(x.device)
    idx = torch.nonzero(radii > 0).flatten()[:limit]
    gen = torch.Generator().manual_seed(seed)
    adv = attacks.pgd(model, x[idx], y[idx], fraction * radii[idx].to(x.dtype), norm="l2", steps=steps, generator=gen)
    with torch.no_grad(), attacks.frozen(model):
        bad = model(adv).argmax(1) != y[idx]
    description = {
        "library": "labkit",
        "attack": "PGD, l2, per-point radius",
        "steps": steps,
        "restarts": 1,
        "fraction": fraction,
    }
    return {
        "points": int(idx.numel()),
        "flipped": int(bad.sum()),
        "flipped_index": idx[bad].tolist(),
        "attack": description,
    }
