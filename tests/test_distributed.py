"""Data-parallel full mode: labkit's training loop under torchrun and DistributedDataParallel (gloo on
CPUs) ends with the weights of one process with the same global batch, and rank 0 alone writes."""

import os
import subprocess
import sys
import textwrap

import pytest
import torch

SCRIPT = textwrap.dedent(
    """
    import sys
    import torch
    from torch.utils.data import TensorDataset
    from labkit import runtime, train

    rank, world = runtime.init_distributed()
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(96, 6, generator=gen)
    y = (x[:, 0] + x[:, 1] > 0).long()
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(6, 8), torch.nn.Tanh(), torch.nn.Linear(8, 2))
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    train.fit(model, TensorDataset(x, y), 3, batch_size=32, optimizer=opt, seed=1, device="cpu",
              progress=False, checkpoint=sys.argv[2])
    torch.save(model.state_dict(), f"{sys.argv[1]}.rank{rank}")
    """
)


def _run(cmd, tmp_path):
    env = dict(os.environ, LABKIT_DEVICE="cpu", OMP_NUM_THREADS="1")
    return subprocess.run(cmd, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=240)


def test_two_processes_under_torchrun_end_with_the_weights_of_one(tmp_path):
    script = tmp_path / "tiny.py"
    script.write_text(SCRIPT)
    one = _run([sys.executable, str(script), str(tmp_path / "one"), str(tmp_path / "one.ckpt")], tmp_path)
    assert one.returncode == 0, one.stderr[-2000:]
    torchrun = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2"]
    two = _run([*torchrun, str(script), str(tmp_path / "two"), str(tmp_path / "two.ckpt")], tmp_path)
    assert two.returncode == 0, two.stderr[-2000:]
    ref = torch.load(tmp_path / "one.rank0")
    for rank in (0, 1):  # both ranks hold the same weights, those of the single process
        got = torch.load(tmp_path / f"two.rank{rank}")
        for k in ref:
            assert torch.allclose(got[k], ref[k], atol=1e-6), (rank, k, float((got[k] - ref[k]).abs().max()))
    assert (tmp_path / "two.ckpt").exists()  # written by rank 0
    state = torch.load(tmp_path / "two.ckpt", weights_only=True)
    assert state["epoch"] == 3 and all(torch.allclose(state["model"][k], ref[k], atol=1e-6) for k in ref)


def test_refuses_a_global_batch_that_the_ranks_cannot_share(monkeypatch):
    from labkit import train

    monkeypatch.setattr(train, "distributed", lambda: (0, 3))
    data = torch.utils.data.TensorDataset(torch.zeros(8, 2), torch.zeros(8, dtype=torch.long))
    with pytest.raises(ValueError, match="divisible by the 3 ranks"):
        train.fit(torch.nn.Linear(2, 2), data, 1, batch_size=8, progress=False)
