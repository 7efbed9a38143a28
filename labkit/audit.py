"""An independent audit of certificates (§4.4): the certified points are attacked by a library that
labkit does not write, the Adversarial Robustness Toolbox (ART), with its AutoPGD in ℓ2 at a fraction
of each point's certified radius. A sound certificate loses no point; a flipped one means the
certificate, or the bound it rests on, is wrong.

Why ART: it is maintained, has AutoPGD with both the cross-entropy and the DLR loss (and FAB,
DeepFool and AutoAttack, which the bench of Chapter 6 needs) in one package, runs PyTorch models on
the CPU and the GPU, and installs beside the book's tools with ``pip check`` clean. ``torchattacks``
3.5.1 pins ``requests~=2.25.1``, below what Sphinx needs, so it cannot share the book's
environment.
"""

from __future__ import annotations

import numpy as np
import torch

from . import _validate, attacks

__all__ = ["certificates"]


def _library():
    # imported here: ART takes two seconds to import, and only an audit needs it
    import art
    from art.attacks.evasion.auto_projected_gradient_descent import AutoProjectedGradientDescent
    from art.estimators.classification.pytorch import PyTorchClassifier

    return art.__version__, AutoProjectedGradientDescent, PyTorchClassifier


def certificates(model, x, y, radii, *, fraction: float = 0.99, steps: int = 50, restarts: int = 1,
                 clamp=(0.0, 1.0), limit: int | None = None, seed: int = 0) -> dict:  # fmt: skip
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
    radii = torch.as_tensor(radii, dtype=torch.float64).flatten()
    if radii.shape[0] != x.shape[0] or not bool(torch.isfinite(radii).all()):
        raise ValueError(f"radii must be {x.shape[0]} finite values, one per point, got {tuple(radii.shape)}.")
    version, APGD, Classifier = _library()
    with torch.no_grad(), attacks.frozen(model):
        classes = int(model(x[:1]).shape[1])
    kind = "gpu" if next(model.parameters()).device.type == "cuda" else "cpu"
    clf = Classifier(model=model, loss=torch.nn.CrossEntropyLoss(), input_shape=tuple(x.shape[1:]),
                     nb_classes=classes, clip_values=tuple(clamp), device_type=kind)  # fmt: skip
    losses = ["cross_entropy"] + (["difference_logits_ratio"] if classes >= 3 else [])
    index = torch.nonzero(radii > 0).flatten()[:limit].tolist()
    np.random.seed(seed)  # ART draws its random starts from NumPy's global generator
    flipped = []
    with attacks.frozen(model):
        for i in index:
            eps = fraction * float(radii[i])
            point, label = x[i : i + 1].detach().cpu().numpy(), np.eye(classes)[[int(y[i])]]
            for loss in losses:
                apgd = APGD(clf, norm=2, eps=eps, eps_step=eps / 4, max_iter=steps, nb_random_init=restarts,
                            batch_size=1, loss_type=loss, verbose=False)  # fmt: skip
                adv = torch.as_tensor(apgd.generate(point, y=label), dtype=x.dtype, device=x.device)
                with torch.no_grad():
                    if int(model(adv).argmax(1)[0]) != int(y[i]):
                        flipped.append(i)
                        break
    attack = {"library": f"adversarial-robustness-toolbox {version}", "attack": "AutoPGD, l2", "losses": losses,
              "steps": steps, "restarts": restarts, "fraction": fraction}  # fmt: skip
    return {"points": len(index), "flipped": len(flipped), "flipped_index": flipped, "attack": attack}
