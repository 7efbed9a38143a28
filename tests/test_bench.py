"""labkit.bench and Chapter 6: the registry, one smoke-size grid over every method written as records
by the command line, resume after a killed run, shards, the soundness audit's teeth, and bad input."""

import json
import math
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from labkit import audit, bench, certify, chapters, lipschitz, snode, structured
from labkit.chapters import ch06

ROOT = Path(__file__).resolve().parents[1]
#: What changes from one run of the same seed to the next: times, and what the training kept (it has times).
VOLATILE = {"seconds", "throughput", "training", "record"}


def _stable(result: dict) -> dict:
    return {k: v for k, v in result.items() if k not in VOLATILE}


def _close(a, b, path=""):
    """Equal records up to float rounding (1e-5), recursively."""
    if isinstance(a, dict):
        assert set(a) == set(b), f"{path}: keys {sorted(set(a) ^ set(b))}"
        for k in a:
            _close(a[k], b[k], f"{path}/{k}")
    elif isinstance(a, list):
        assert len(a) == len(b), path
        for i, (u, v) in enumerate(zip(a, b)):
            _close(u, v, f"{path}[{i}]")
    elif isinstance(a, float) and isinstance(b, float):
        assert math.isclose(a, b, rel_tol=1e-5, abs_tol=1e-6) or (math.isnan(a) and math.isnan(b)), f"{path}: {a} {b}"
    else:
        assert a == b, f"{path}: {a!r} != {b!r}"


def test_the_registry_has_every_method_of_the_book_and_the_grid_respects_what_applies():
    owners = {m.chapter for m in ch06.METHODS.values()}
    assert owners == {"ch01", "ch02", "ch03", "ch04", "ch05"}
    assert {
        "plain",
        "weight-decay",
        "clip",
        "lognorm",
        "lognorm-unit",
        "snode",
        "snode-resnet",
        "cpl",
        "sll",
        "sp-certified",
    } <= set(ch06.METHODS)
    assert {f"sp-{p}" for p in structured.PRESETS} <= set(ch06.METHODS)
    runs = ch06.grid(seeds=[0, 1])
    dense_only = [m for m, v in ch06.METHODS.items() if "conv" not in v.kinds]
    assert len(runs) == 2 * (2 * len(ch06.METHODS) + len(ch06.METHODS) - len(dense_only))
    assert not any(d == "cifar10" and m in dense_only for d, m, _ in runs)
    assert len(set(runs)) == len(runs)
    for m in ch06.METHODS.values():
        assert m.certifies == (m.name in {"lognorm-unit", "cpl", "sll", "sp-certified"}), m.name


@pytest.mark.parametrize("n", [1, 2, 3, 5, 40])
def test_shards_cover_the_grid_exactly_once(n):
    runs = ch06.grid(seeds=[0, 1, 2])
    parts = [chapters.shard(runs, f"{i}/{n}") for i in range(1, n + 1)]
    flat = [r for p in parts for r in p]
    assert sorted(flat) == sorted(runs) and len(flat) == len(set(flat))
    assert max(map(len, parts)) - min(map(len, parts)) <= 1


@pytest.mark.parametrize("spec", ["0/2", "3/2", "a/b", "1-2", "1/0", "2", ""])
def test_a_malformed_shard_is_refused(spec):
    with pytest.raises(ValueError, match="i/n"):
        chapters.shard([1, 2, 3], spec)


def _linear_pair(d=20, n=200, seed=0):
    """A classifier whose certificate is exact: rows ``w`` and ``-w`` (and eight hopeless classes), so
    the certified radius is the distance to the decision boundary (exercise ex6-linear)."""
    gen = torch.Generator().manual_seed(seed)
    w = torch.randn(d, generator=gen)
    layer = torch.nn.Linear(d, 10)
    with torch.no_grad():
        layer.weight.zero_()
        layer.weight[0], layer.weight[1] = w, -w
        layer.bias.fill_(-100.0)
        layer.bias[0], layer.bias[1] = -(0.5 * w).sum(), (0.5 * w).sum()
    x = 0.25 + 0.5 * torch.rand(n, d, generator=gen)
    y = ((x - 0.5) @ w < 0).long()
    return layer, x, y, w, float(torch.linalg.matrix_norm(layer.weight.double(), 2))


def test_the_soundness_audit_passes_a_sound_bound_and_fails_a_halved_one():
    model, x, y, w, L = _linear_pair()
    with torch.no_grad():
        logits = model(x)
    for factor, sound in [(1.0, True), (0.5, False)]:
        radii = certify.certified_radius(logits, y, L * factor)
        minimal = audit.deepfool_norms(model, x, y)
        lower = lipschitz.lower_bound(model, x[:8], steps=30, generator=torch.Generator().manual_seed(0))
        report = bench.soundness(model, x, y, radii, lower=lower, bound=L * factor, minimal=minimal, steps=10, n_apgd=2)
        assert report["points"] == len(y)
        assert report["sound"] is sound, report
        if not sound:  # every part of the audit catches it on this classifier
            assert report["flipped"] > 0.9 * len(y) and report["deepfool_below_radius"] and report["lower_above_bound"]


def test_the_independent_attacks_are_exact_on_a_linear_classifier():
    model, x, y, w, _ = _linear_pair()
    distance = ((x - 0.5) @ w).abs().double() / w.norm().double()  # to the hyperplane; the box is not reached
    norms = audit.deepfool_norms(model, x, y, overshoot=0.02)
    assert torch.all(norms >= distance * (1 - 1e-4)) and torch.all(norms <= distance * 1.03 + 1e-4)
    linf_distance = ((x - 0.5) @ w).abs().double() / w.abs().sum().double()  # the ℓ1 norm is the dual norm
    for eps in (0.05, 0.2):  # exact up to a band of 2 % around the radius (10 steps end a little short of it)
        for norm, dist, e in (("l2", distance, eps), ("linf", linf_distance, eps / 4)):
            robust = audit.apgd_robust(model, x, y, e, norm=norm, steps=10)
            clear = (dist - e).abs() > 0.02 * e
            assert clear.sum() > 150 and torch.equal(robust[clear], (dist > e)[clear]), norm
    assert audit.apgd_accuracy(model, x, y, 0.0) == 1.0
    cert = audit.certificates_batch(model, x, y, 0.5 * distance, steps=5)
    assert cert["points"] == len(y) and cert["flipped"] == 0 and cert["attack"]["fraction"] == 0.99


def test_the_snode_bound_is_above_every_jacobian_norm():
    model = snode.SNODE(16, T=2.0, steps=5, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        model.W.mul_(3)
    wrapped = snode.OnImages(model, 2)
    x = torch.rand(12, 1, 8, 8)
    J = torch.func.vmap(torch.func.jacrev(lambda t: wrapped(t[None])[0]))(x).reshape(12, 10, 64)
    norms = torch.linalg.matrix_norm(J, 2)
    assert float(norms.max()) <= wrapped.lipschitz_bound() * (1 + 1e-6)
    assert wrapped.lipschitz_bound() == pytest.approx(snode.lipschitz_bound(model) / 2)
    assert lipschitz.lower_bound(wrapped, x, steps=30) <= wrapped.lipschitz_bound()


@pytest.fixture(scope="module")
def smoke(tmp_path_factory):
    """The command line over every method at smoke size (MNIST and CIFAR-10), and its records."""
    folder = tmp_path_factory.mktemp("bench") / "results"
    assert chapters.main(["ch06", "--mode", "smoke", "--out", str(folder)]) == 0
    return folder, ch06.collect(folder)


def test_a_smoke_grid_over_every_method_writes_one_valid_record_per_run(smoke):
    folder, results = smoke
    runs = ch06.grid(None, ch06.sizes("smoke")["datasets"], [0])
    assert sorted(results) == sorted(f"{d}/{m}/seed {s}" for d, m, s in runs)
    assert len(list(folder.glob("*.json"))) == len(runs) and not list(folder.glob(".*.tmp"))
    for key, r in results.items():
        data = key.split("/")[0]
        assert r["record"]["mode"] == "smoke" and r["radii"] == list(bench.RADII[data]["l2"])
        assert r["linf"]["radii"] == list(bench.RADII[data]["linf"]) and r["linf"]["norm"] == "linf"
        assert 0 <= r["clean"] <= 1 and r["parameters"] > 0 and r["seconds"] > 0 and r["throughput"] > 0
        for curve in (*r["empirical"].values(), *r["linf"]["empirical"].values(), r["certified"]):
            assert all(0 <= v <= 1 for v in curve) and list(curve) == sorted(curve, reverse=True), (key, curve)
        # a sound certificate is never above what an attack leaves, on the same points
        assert all(c <= a + 1e-9 for c, a in zip(r["attacked"]["certified"], r["empirical"]["apgd"])), key
        assert r["lipschitz"]["lower"] <= r["lipschitz"]["upper"] * (1 + 1e-6), key
        assert r["audit"]["sound"] and r["audit"]["points"] == r["certified_points"], key
        assert r["attack"]["apgd"]["library"].startswith("adversarial-robustness-toolbox")
        assert {"steps", "restarts", "points"} <= set(r["attack"]["apgd"]) and r["attack"]["pgd"]["steps"] > 0
        if r["certifies"] and data == "mnist":  # at smoke size CIFAR-10 models may classify no test point right
            assert r["audit"]["points"] >= 1, key
    ch06.verify(results, min_checked=ch06.sizes("smoke")["min_checked"])


def test_the_chapter_tables_figures_and_values_come_from_the_records(smoke, capsys):
    import matplotlib

    matplotlib.use("Agg")
    _, results = smoke
    assert "sp-certified" in ch06.table(results) and "AutoPGD" in ch06.table(results)
    assert "VIOLATION" not in ch06.audit_table(results) and "sound" in ch06.audit_table(results)
    assert "sphere" in ch06.paper_table(results) and "certified" in ch06.paper_table(results)
    assert "cpl" in ch06.when_table(results) and "Prach" in ch06.literature_table(results, where="CPU")
    assert "ours; CPU" in ch06.literature_table(results, where="CPU")
    assert "convex potential" in ch06.methods_table()
    banner = ch06.full_banner(results)  # these are smoke records: the banner names every size that differs
    assert f"{len(results)} runs" in banner and "epochs = 1" in banner and "n_train = 200" in banner
    assert "No full-mode record" in ch06.full_banner({})
    values = ch06.values(results)
    assert values["runs"] == len(results) and values["violations"] == 0 and values["flipped"] == 0
    assert values["audited"] == sum(r["audit"]["points"] for r in results.values())
    b = ch06.budget(results)["mnist"]
    assert b["ratio"] >= b["ratio_without_lognorm"] >= 1 and b["epochs"] == [ch06.sizes("smoke")["epochs"]]
    for draw in (
        lambda: ch06.plot_curves(results, "mnist"),
        lambda: ch06.plot_pareto(results),
        lambda: ch06.plot_gap(results),
        lambda: ch06.plot_paper(results),
    ):
        assert draw() is not None
    assert chapters.main(["ch06", "--mode", "smoke", "--out", str(smoke[0]), "--summary"]) == 0
    assert "audit" in capsys.readouterr().out


def test_verify_has_teeth(smoke):
    _, results = smoke
    key = next(k for k, r in results.items() if r["certifies"])
    flipped = json.loads(json.dumps(results[key]))
    flipped["audit"].update(flipped=1, flipped_index=[0], sound=False)
    with pytest.raises(AssertionError, match="flipped"):
        ch06.verify({key: flipped})
    crossed = json.loads(json.dumps(results[key]))
    crossed["audit"]["lower_above_bound"] = True
    with pytest.raises(AssertionError, match="exceeds"):
        ch06.verify({key: crossed})
    with pytest.raises(AssertionError, match="audited"):
        ch06.verify({key: results[key]}, min_checked=10**6)


#: The grid of one run, the plain network on MNIST.
PLAIN = ["--set", 'methods=["plain"]', "--set", 'datasets=["mnist"]']


def _cli(*args, **kw):
    env = {**os.environ, "OMP_NUM_THREADS": "1", "LABKIT_MODE": "smoke"}
    return subprocess.Popen(
        [sys.executable, "-m", "labkit.chapters", "ch06", *args],
        cwd=ROOT,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        **kw,
    )


def test_a_killed_grid_resumes_to_the_same_merged_results(tmp_path):
    grid = ["--set", 'methods=["plain", "cpl", "sll"]', "--set", 'datasets=["mnist"]', "--mode", "smoke"]
    reference = _cli(*grid, "--out", str(tmp_path / "ref"))
    killed = _cli(*grid, "--out", str(tmp_path / "cut"))
    first = tmp_path / "cut" / "mnist__plain__seed0.json"
    deadline = time.monotonic() + 120
    while not first.exists() and killed.poll() is None and time.monotonic() < deadline:
        time.sleep(0.05)
    os.kill(killed.pid, signal.SIGKILL)
    killed.wait()
    done = sorted(p.name for p in (tmp_path / "cut").glob("*.json"))
    assert "mnist__plain__seed0.json" in done and len(done) < 3, done
    stamp = first.stat().st_mtime_ns
    resumed = _cli(*grid, "--out", str(tmp_path / "cut"))
    assert resumed.wait(timeout=300) == 0 and reference.wait(timeout=300) == 0, resumed.stderr.read()
    assert first.stat().st_mtime_ns == stamp  # the finished run was read, not run again
    a, b = ch06.collect(tmp_path / "ref"), ch06.collect(tmp_path / "cut")
    assert list(a) == list(b) and len(a) == 3
    _close({k: _stable(v) for k, v in a.items()}, {k: _stable(v) for k, v in b.items()})


def test_bad_input_gets_a_clear_error_and_writes_nothing(tmp_path, capsys):
    out = tmp_path / "results"
    for args, message in [
        (["--set", 'methods=["resnet-9000"]'], "unknown method 'resnet-9000'"),
        (["--set", 'datasets=["svhn"]'], "unknown data set 'svhn'"),
        (["--shard", "3/2"], "i/n"),
        (["--set", 'methods=["clip"]', "--set", 'datasets=["cifar10"]'], "no method"),
        (["--set", "seeds=[-1]"], "non-negative"),
        (["--set", "warp=9"], "give SIZE=VALUE"),
    ]:
        with pytest.raises(SystemExit) as err:
            chapters.main(["ch06", "--mode", "smoke", "--out", str(out), *args])
        assert err.value.code == 2 and message in capsys.readouterr().err
        assert not out.exists()
    blocker = tmp_path / "file"
    blocker.write_text("not a folder")
    with pytest.raises(SystemExit) as err:
        chapters.main(["ch06", "--mode", "smoke", *PLAIN, "--out", str(blocker / "sub")])
    assert err.value.code == 2 and "cannot write the results folder" in capsys.readouterr().err
    assert blocker.read_text() == "not a folder"


def test_records_that_differ_only_in_the_grid_are_reused_and_the_banner_groups_by_sizes(smoke, tmp_path):
    source, results = smoke
    folder = tmp_path / "results"
    folder.mkdir()
    path = chapters.record_path(folder, "mnist/plain/seed 0")
    path.write_bytes(chapters.record_path(source, "mnist/plain/seed 0").read_bytes())
    before = path.read_bytes()
    # the same run chosen through another grid (seeds given as a size): read, not run again
    assert (
        chapters.main(
            ["ch06", "--mode", "smoke", *PLAIN, "--set", "seeds=[7, 0]", "--shard", "2/2", "--out", str(folder)]
        )
        == 0
    )
    assert path.read_bytes() == before and sorted(folder.iterdir()) == [path]
    assert chapters.run_sizes({"seeds": [1], "epochs": 2}, ch06.GRID_SIZES) == {"epochs": 2}
    # records with other sizes are shown on lines of their own, each with what changed
    mixed = {k: json.loads(json.dumps(r)) for k, r in results.items()}
    key = next(k for k in mixed if k.startswith("cifar10/"))
    mixed[key]["record"]["sizes"]["epochs"] = 9
    banner = str(ch06.full_banner(mixed))
    assert banner.count("Sizes changed") == 2 and "epochs = 9" in banner and "cifar10: 1 run," in banner
    assert f"{len(mixed) - 1} runs" in banner


def test_records_made_with_other_sizes_are_not_mixed_in(tmp_path, capsys):
    folder = tmp_path / "results"
    folder.mkdir()
    path = chapters.record_path(folder, "mnist/plain/seed 0")
    path.write_text(json.dumps({"mode": "book", "sizes": ch06.sizes("book"), "results": {}}))
    with pytest.raises(SystemExit):
        chapters.main(["ch06", "--mode", "smoke", *PLAIN, "--out", str(folder)])
    assert "other sizes" in capsys.readouterr().err and sorted(folder.iterdir()) == [path]
