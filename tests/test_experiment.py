"""labkit.experiment: robustness curves and full-mode records."""

import json
import os
import sys

import pytest
import torch
from torch.utils.data import TensorDataset

from labkit import chapters, experiment


def _data(n=64, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.rand(n, 1, 4, 4, generator=g)
    return TensorDataset(x, (x.flatten(1).sum(1) > 8).long())


def test_robustness_curves_start_at_clean_accuracy_and_pgd_is_strongest():
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(16, 2))
    test = _data()
    r = experiment.robustness(model, test, [0.0, 0.1, 0.3], pgd_steps=10, device="cpu")
    assert r["radii"] == [0.0, 0.1, 0.3] and r["norm"] == "linf" and r["certified"] is None
    assert r["attack"]["pgd"] == {"steps": 10, "restarts": 1, "points": len(test)}
    for name in ("noise", "fgsm", "pgd"):
        curve = r["empirical"][name]
        assert len(curve) == 3 and curve[0] == pytest.approx(r["clean"])
    # on a linear two-class model the sign of the input gradient is the same all over the ball (per
    # example), so the worst point of box ∩ l∞ ball is the clamped corner x + ε·sign(g): FGSM takes it
    # in one step, PGD's ten sign steps of 2.5ε/10 reach it from any start, and no point of the
    # path is worse than the corner; the two curves are therefore equal
    assert r["empirical"]["pgd"] == pytest.approx(r["empirical"]["fgsm"], abs=1e-12)
    assert r["empirical"]["fgsm"][-1] < r["clean"]
    assert experiment.at(r, "pgd", 0.1) == r["empirical"]["pgd"][1]
    with pytest.raises(ValueError):
        experiment.robustness(model, test, [-0.1], device="cpu")


def test_result_schema_refuses_misaligned_curves_and_at_names_what_exists():
    r = experiment.result(
        radii=[0.5, 1.0],
        clean=0.9,
        empirical={"pgd": [0.5, 0.25]},
        certified=[0.4, 0.1],
        lipschitz={"upper": 1.0},
        norm="l2",
        seconds=3.0,
        history=[1],
    )
    assert r["lipschitz"] == {"lower": None, "upper": 1.0, "map": "network"} and r["history"] == [1]
    assert experiment.at(r, "certified", 1.0) == 0.1 and experiment.at(r, "pgd", 0.5) == 0.5
    with pytest.raises(KeyError, match="pgd"):
        experiment.at(r, "fgsm", 0.5)
    with pytest.raises(KeyError, match="0.5, 1.0"):
        experiment.at(r, "pgd", 0.7)
    with pytest.raises(ValueError, match="pgd has 1 values for 2 radii"):
        experiment.result(radii=[0.5, 1.0], clean=0.9, empirical={"pgd": [0.5]})
    with pytest.raises(ValueError, match="certified has 3 values"):
        experiment.result(radii=[0.5, 1.0], clean=0.9, certified=[1, 2, 3])
    with pytest.raises(ValueError, match="norm"):
        experiment.result(radii=[0.5], clean=0.9, norm="l1")


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
        chapters.main(["ch99"])


def test_main_runs_a_chapter_at_the_sizes_of_the_mode_given(tmp_path, monkeypatch):
    import types

    seen = {}
    fake = types.ModuleType("labkit.chapters.chY")
    fake.RECORD = "chY.json"
    fake.sizes = lambda mode=None: {"n": {"smoke": 1, "book": 2, "full": 3}[mode]}

    def run(*, n, done=None, on_result=None):
        seen.update(n=n, mode=os.environ.get("LABKIT_MODE"))
        return {"run": {"n": n}}

    fake.run = run
    monkeypatch.setitem(sys.modules, "labkit.chapters.chY", fake)
    monkeypatch.setattr(chapters, "CHAPTERS", (*chapters.CHAPTERS, "chY"))
    monkeypatch.setattr(chapters, "DATA", tmp_path)
    monkeypatch.setenv("LABKIT_MODE", "full")
    assert chapters.main(["chY", "--mode", "smoke", "--out", str(tmp_path / "y.json")]) == 0
    rec = experiment.load_record(tmp_path / "y.json")
    assert seen == {"n": 1, "mode": "smoke"} and rec["mode"] == "smoke" and rec["sizes"] == {"n": 1}
    with pytest.raises(SystemExit):
        chapters.main(["chY", "--mode", "tiny"])


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

    fake = types.ModuleType("labkit.chapters.chX")
    fake.RECORD = "chX.json"
    fake.sizes = lambda mode=None: {"n": 3} if mode == "full" else {"n": 1}

    def chapter_run(*, n, done=None, on_result=None):
        return run(n=n, done=done, on_result=on_result, crash_at=fake.crash_at)

    fake.run = chapter_run
    monkeypatch.setitem(sys.modules, "labkit.chapters.chX", fake)
    monkeypatch.setattr(chapters, "CHAPTERS", (*chapters.CHAPTERS, "chX"))
    monkeypatch.setattr(chapters, "DATA", tmp_path)
    out = tmp_path / "chX.json"

    fake.crash_at = 2
    with pytest.raises(KeyboardInterrupt):
        chapters.main(["chX"])
    assert not out.exists()
    part = experiment.load_record(experiment.partial_path(out))
    assert part["mode"] == "partial" and sorted(part["results"]) == ["run0", "run1"]

    fake.crash_at = None
    assert chapters.main(["chX"]) == 0
    assert calls == ["run0", "run1", "run2"]  # the finished runs were not repeated
    rec = experiment.load_record(out)
    assert rec["results"] == {f"run{i}": {"value": i * i} for i in range(3)}
    assert rec["resumed"]["runs"] == ["run0", "run1"]
    assert not experiment.partial_path(out).exists()

    chapters.main(["chX", "--restart"])  # a finished record leaves nothing to resume
    assert calls[3:] == ["run0", "run1", "run2"] and "resumed" not in experiment.load_record(out)


def test_main_refuses_an_unwritable_out_before_running(tmp_path, monkeypatch):
    ran = []
    monkeypatch.setattr(chapters.get("ch02"), "run", lambda **kw: ran.append(kw) or {})
    blocker = tmp_path / "file"
    blocker.write_text("not a folder")
    with pytest.raises(OSError, match="cannot write the record"):
        chapters.main(["ch02", "--out", str(blocker / "rec.json")])
    assert ran == [] and blocker.read_text() == "not a folder"


def test_load_record_names_a_corrupt_file(tmp_path):
    bad = tmp_path / "rec.json"
    bad.write_text("{not json")
    with pytest.raises(ValueError, match="rec.json"):
        experiment.load_record(bad)


def test_main_set_changes_a_size_in_the_run_and_the_record_and_refuses_unknown_ones(tmp_path, monkeypatch, capsys):
    seen = []
    monkeypatch.setattr(chapters.get("ch05"), "run", lambda **kw: seen.append(kw) or {})
    out = tmp_path / "rec.json"
    chapters.main(["ch05", "--out", str(out), "--set", "epochs=3", "--set", "widths=[4, 8, 8]"])
    assert seen[0]["epochs"] == 3 and seen[0]["widths"] == [4, 8, 8]
    assert experiment.load_record(out)["sizes"]["epochs"] == 3
    for bad in ("epoch=3", "epochs"):
        with pytest.raises(SystemExit):
            chapters.main(["ch05", "--out", str(tmp_path / "other.json"), "--set", bad])
        assert "SIZE=VALUE" in capsys.readouterr().err
    assert len(seen) == 1 and not (tmp_path / "other.json").exists()
