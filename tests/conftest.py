import pytest
import torch


@pytest.fixture(autouse=True)
def _seed_torch():
    """Every test starts from the same global random state, whatever ran before it on its worker."""
    torch.manual_seed(0)
    yield
