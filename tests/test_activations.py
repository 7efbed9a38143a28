"""labkit.activations: one table of the activations, checked against autograd and sampled slopes."""

import pytest
import torch

from labkit import activations


@pytest.mark.parametrize("name", sorted(activations.TABLE))
def test_each_derivative_is_autograds_and_the_slopes_bound_it(name):
    a = activations.get(name)
    z = torch.linspace(-8, 8, 4001, dtype=torch.float64, requires_grad=True)
    (grad,) = torch.autograd.grad(a.fn(z).sum(), z)
    keep = z.detach().abs() > 1e-9  # ReLU's derivative at 0 is a convention
    assert torch.allclose(a.derivative(z.detach())[keep], grad[keep], atol=1e-12)
    lo, hi = a.slopes
    assert lo <= float(grad.min()) and float(grad.max()) <= hi
    assert float(grad.max()) > 0.99 * hi  # the upper slope is reached (to the grid)
    assert a.lipschitz == max(abs(lo), abs(hi))
    assert isinstance(activations.module(name), a.module)
    assert torch.allclose(a.module()(z.detach()), a.fn(z.detach()))


def test_an_unknown_name_is_refused_with_the_known_ones():
    with pytest.raises(ValueError, match="relu"):
        activations.get("swish")
