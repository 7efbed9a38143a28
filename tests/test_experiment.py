"""labkit.experiment: robustness curves and full-mode records."""
import json
import sys

import pytest
import torch
from torch.utils.data import TensorDataset

from labkit import experiment


def _data(n=64, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.rand(n, 1, 4, 4, generator=g)
    return TensorDataset(x, (x.flatten(1).sum(1) > 8).long())


def test_robustness_curves_start_at_clean_accuracy_and_pgd_is_strongest():
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(16, 2))
    test = _data()
    r = experiment.robustness(model, test, [0.0, 0.1, 0.3], pgd_steps=10, device="cpu")
    assert r["eps"] == [0.0, 0.1, 0.3]
    for name in ("noise", "fgsm", "pgd"):
        assert len(r[name]) == 3 and r[name][0] == pytest.approx(r["clean"])
    # PGD starts at FGSM's direction and iterates: never weaker than FGSM on a linear model
    assert all(p <= f + 1e-9 for p, f in zip(r["pgd"], r["fgsm"]))
    assert r["fgsm"][-1] < r["clean"]
    with pytest.raises(ValueError):
        experiment.robustness(model, test, [-0.1], device="cpu")


def test_record_roundtrip_and_provenance(tmp_path):
    path = tmp_path / "sub" / "rec.json"
    assert experiment.load_record(path) is None
    experiment.save_record(path, {"a": [1, 2]}, mode="full", seconds=3.5, device="cpu", sizes={"epochs": 2})
    rec = experiment.load_record(path)
    assert rec["results"] == {"a": [1, 2]} and rec["mode"] == "full" and rec["seconds"] == 3.5
    assert rec["sizes"] == {"epochs": 2} and rec["device"] == "cpu"
    for key in ("created", "torch", "labkit", "python", "commit", "dirty", "device_name", "threads"):
        assert key in rec


def test_record_is_atomic_and_rejects_non_json(tmp_path):
    path = tmp_path / "rec.json"
    experiment.save_record(path, {"ok": 1}, mode="full", seconds=1.0, device="cpu")
    before = path.read_text()
    with pytest.raises(TypeError):
        experiment.save_record(path, {"bad": object()}, mode="full", seconds=1.0, device="cpu")
    assert path.read_text() == before and json.loads(before)["results"] == {"ok": 1}
    assert [p.name for p in tmp_path.iterdir()] == ["rec.json"]  # no temporary left behind


def test_main_rejects_unknown_chapter():
    with pytest.raises(SystemExit):
        experiment.main(["ch99"])


def test_main_keeps_finished_runs_and_resumes_after_a_crash(tmp_path, monkeypatch):
    import types

    calls = []

    def run(*, n, done=None, on_result=None, crash_at=None):
        out = {}
        for i in range(n):
            key = f"run{i}"
            if done and key in done:
                out[key] = done[key]
                continue
            if i == crash_at:
                raise KeyboardInterrupt
            calls.append(key)
            out[key] = {"value": i * i}
            on_result(key, out[key])
        return out

    fake = types.ModuleType("fake_chapter")
    fake.full_sizes = lambda: {"n": 3}

    def chapter_experiment(*, n, done=None, on_result=None):
        return run(n=n, done=done, on_result=on_result, crash_at=fake.crash_at)

    fake.experiment = chapter_experiment
    monkeypatch.setitem(sys.modules, "fake_chapter", fake)
    out = tmp_path / "rec.json"
    monkeypatch.setitem(experiment.EXPERIMENTS, "chX", ("fake_chapter", out))

    fake.crash_at = 2
    with pytest.raises(KeyboardInterrupt):
        experiment.main(["chX"])
    assert not out.exists()
    part = experiment.load_record(experiment.partial_path(out))
    assert part["mode"] == "partial" and sorted(part["results"]) == ["run0", "run1"]

    fake.crash_at = None
    assert experiment.main(["chX"]) == 0
    assert calls == ["run0", "run1", "run2"]  # the finished runs were not repeated
    rec = experiment.load_record(out)
    assert rec["results"] == {f"run{i}": {"value": i * i} for i in range(3)}
    assert rec["resumed"]["runs"] == ["run0", "run1"]
    assert not experiment.partial_path(out).exists()

    experiment.main(["chX", "--restart"])  # a finished record leaves nothing to resume
    assert calls[3:] == ["run0", "run1", "run2"] and "resumed" not in experiment.load_record(out)
