"""labkit.chapters and labkit.report: one table of sizes per mode, one report helper."""

import pytest
import torch

from labkit import chapters, data, report, runtime
from labkit.chapters import ch00, ch01, ch02, ch04, ch05

#: Every chapter of the registry, so that a new chapter is tested without a list to keep in sync.
EXPERIMENTS = [chapters.get(name) for name in chapters.CHAPTERS]


@pytest.mark.parametrize("chapter", EXPERIMENTS, ids=lambda m: m.__name__.rsplit(".", 1)[-1])
def test_every_mode_has_the_same_sizes_and_the_page_reads_the_current_mode(chapter, monkeypatch):
    keys = [set(chapter.SIZES[m]) for m in runtime.MODES]
    assert keys[0] == keys[1] == keys[2], "a size missing in one mode would fall back silently"
    for mode in runtime.MODES:
        monkeypatch.setenv("LABKIT_MODE", mode)
        assert chapter.sizes() == chapter.SIZES[mode]  # the page's sizes are the table's
    assert chapter.sizes("full") is not chapter.SIZES["full"]  # a copy: a page may change it


@pytest.mark.parametrize("chapter", EXPERIMENTS, ids=lambda m: m.__name__.rsplit(".", 1)[-1])
def test_every_chapter_keeps_the_protocol(chapter, monkeypatch):
    """The protocol of labkit.chapters: sizes per mode, jobs with distinct keys built without running
    anything, and a smoke run whose results verify and make the table and the glue values."""
    monkeypatch.setenv("LABKIT_MODE", "smoke")
    for name in ("SIZES", "sizes", "jobs", "run", "verify", "table", "values"):
        assert callable(getattr(chapter, name)) or name == "SIZES", name
    assert (getattr(chapter, "RECORD", None) is None) != (getattr(chapter, "RECORDS", None) is None) or chapter is ch00
    s = chapters.given(chapter.sizes("smoke"), chapter.SIZES)
    jobs = chapter.jobs(s)
    assert jobs and all(isinstance(j, chapters.Job) for j in jobs)
    keys = [j.key for j in jobs]
    assert len(set(keys)) == len(keys), "two jobs with one key would share a record"
    results = chapter.run(**chapter.sizes("smoke"))
    assert sorted(results) == sorted(keys)
    chapter.verify(results)
    assert str(chapter.table(results)).strip()
    values = chapter.values(results)
    assert values and all(isinstance(k, str) for k in values)


def test_execute_skips_what_is_done_seeds_each_job_and_reports_each_result():
    reported = []

    def job(key, seed):
        return chapters.Job(key, lambda: (torch.rand(1).item(), {}), lambda model, kept, sec: {"draw": model}, seed)

    jobs = [job("a", 3), job("b", 3), job("c", 4)]
    out = chapters.execute(jobs, done={"b": {"draw": -1.0}}, on_result=lambda k, r: reported.append(k))
    assert list(out) == ["a", "b", "c"] and out["b"] == {"draw": -1.0} and reported == ["a", "c"]
    again = chapters.execute([job("a", 3)])
    assert again["a"] == out["a"]  # seeded on its own: the same draw whatever ran before


def test_full_mode_of_the_page_and_of_the_command_are_the_same_experiment(monkeypatch):
    """`LABKIT_MODE=full make book` and `make full CH=chNN` run chNN.run(**chNN.sizes()) with the
    same sizes: the ones python -m labkit.chapters saves in the record."""
    seen = {}

    def run(*, done=None, on_result=None, **sizes):
        seen.setdefault("command", sizes)
        return {}

    monkeypatch.setattr(ch01, "run", run)
    monkeypatch.setattr(chapters, "DATA", None)
    from labkit import experiment

    monkeypatch.setattr(experiment, "save_record", lambda *a, **kw: seen.setdefault("record", kw))
    chapters.main(["ch01", "--out", "/tmp/unused-record.json"])
    monkeypatch.setenv("LABKIT_MODE", "full")
    assert seen["command"] == ch01.sizes() == seen["record"]["sizes"]


def test_given_refuses_missing_and_misspelt_sizes_before_any_work():
    sizes = ch04.sizes("smoke")
    sizes["n_trian"] = sizes.pop("n_train")
    with pytest.raises(TypeError, match=r"missing \['n_train'\], unknown \['n_trian'\]"):
        ch04.run(**sizes)
    with pytest.raises(TypeError, match="missing"):
        ch01.run(n_train=10)


def test_per_mode_builds_one_table_per_mode_and_refuses_a_short_row():
    table = chapters.per_mode({"n": (1, 2, 3), "lists": ([1], [2], [3])}, fixed=[0])
    assert table == {
        "smoke": {"fixed": [0], "n": 1, "lists": [1]},
        "book": {"fixed": [0], "n": 2, "lists": [2]},
        "full": {"fixed": [0], "n": 3, "lists": [3]},
    }
    table["smoke"]["fixed"].append(1)
    assert table["book"]["fixed"] == [0]  # the common values are not shared between modes
    with pytest.raises(ValueError, match="one value per mode"):
        chapters.per_mode({"n": (1, 2)})
    with pytest.raises(ValueError, match="mode"):
        chapters.pick(table, "huge")


def test_get_names_the_chapters_that_exist():
    assert chapters.get("ch02") is ch02
    with pytest.raises(ValueError, match="ch00, ch01, ch02, ch03, ch04, ch05, ch06"):
        chapters.get("ch07")


@pytest.mark.parametrize("chapter, fit", [(ch04, "labkit.convex.fit"), (ch05, "labkit.structured.fit")])
def test_cifar_chapters_refuse_the_subset_in_full_mode_before_training(chapter, fit, monkeypatch):
    trained = []
    monkeypatch.setattr(fit, lambda *a, **k: trained.append(1))
    real_load = data.load

    def subset(name, train=True, limit=None, **kw):  # the 5 000 / 1 000 images of the subset
        ds = real_load(name, train=train, limit=min(limit or 10**9, 50 if train else 20), **kw)
        return ds

    monkeypatch.setattr(data, "load", subset)
    with pytest.raises(data.DataNotFoundError, match="50 000"):
        chapter.run(**chapter.sizes("full"))
    assert trained == []


def test_chapter_tables_and_values_from_a_committed_record():
    from labkit.experiment import load_record

    record = load_record(chapters.DATA / ch02.RECORD)
    table = ch02.table(record["results"])
    assert table.splitlines()[0].startswith("| data | setting | training | clean |")
    assert len(table.splitlines()) == 2 + len(record["results"])
    values = ch02.values(record["results"])
    names = {report.glue_name(k) for k in values}
    assert "mnist_paper_hi_pgd_sphere" in names and len(names) == len(values)
    ch02.verify(record["results"])
    broken = {k: {**r, "pair_ascent": r["lipschitz"]["upper"] * 2} for k, r in record["results"].items()}
    with pytest.raises(AssertionError, match="bounds crossed"):
        ch02.verify(broken)


# -- report --------------------------------------------------------------------------------------------


def test_table_formats_rows_and_names_a_missing_key():
    rows = [{"name": "a", "x": 0.12345, "y": None}, {"name": "b", "x": 1.0, "y": 2}]
    t = report.table(
        rows, [("name", "name"), ("x", "x", "{:.2f}"), ("twice x", lambda r: 2 * r["x"], "{:.1f}"), ("y", "y")]
    )
    assert t == "| name | x | twice x | y |\n|---|---|---|---|\n| a | 0.12 | 0.2 | – |\n| b | 1.00 | 2.0 | 2 |"
    assert t._repr_markdown_() == str(t)
    assert report.table(rows[:1], [("n", "name")], caption="Caption").startswith("Caption\n\n| n |")
    with pytest.raises(KeyError, match="row 1 has no 'z'"):
        report.table([{"z": 1}, {}], [("z", "z")])
    with pytest.raises(ValueError, match="column"):
        report.table(rows, [("only a header",)])
    with pytest.raises(ValueError, match="at least one column"):
        report.table(rows, [])


def test_glue_names_are_stable_and_clashes_are_refused(monkeypatch):
    assert report.glue_name("mnist/δ = 0.5", "clean") == "mnist_delta_0_5_clean"
    assert report.glue_name("fashion_mnist/CLIP high", "pgd_l2") == "fashion_mnist_clip_high_pgd_l2"
    assert report.glue_name("L_upper") == "l_upper"
    with pytest.raises(ValueError):
        report.glue_name("/", "—")
    glued = {}
    import myst_nb

    monkeypatch.setattr(myst_nb, "glue", lambda name, value, display: glued.update({name: value}))
    report.glue_all({"a/b": 1, "c": 2}, prefix="full")
    assert glued == {"full_a_b": 1, "full_c": 2}
    import numpy as np

    report.glue_all({"np": np.float64(2.25), "t": torch.tensor(3.5), "v": [1, 2]})
    assert type(glued["np"]) is float and glued["np"] == 2.25 and glued["t"] == 3.5 and glued["v"] == [1, 2]
    with pytest.raises(ValueError, match="both glue as 'a_b'"):
        report.glue_all({"a/b": 1, "a b": 2})


def test_banner_says_where_a_record_ran_or_how_to_make_one():
    assert report.banner(None, command="make full CH=ch09") == "*No full-mode record yet: run `make full CH=ch09`.*"
    record = {
        "device": "cuda",
        "device_name": "H200",
        "created": "2026-11-30T10:00:00+00:00",
        "seconds": 9000,
        "torch": "2.11",
        "commit": "0123456789abcdef",
        "dirty": True,
        "resumed": {"runs": ["a", "b"], "commit": "fedcba9876543210"},
    }
    line = report.banner(record, command="unused")
    assert line == (
        "Full mode: cuda (H200), 2026-11-30, 2.5 h, torch 2.11, commit 0123456789 (with local changes); "
        "resumed after an interruption, 2 run(s) from commit fedcba9876."
    )
    assert "150 min" not in line and "1 min" in report.banner({**record, "seconds": 60, "resumed": None}, command="")


def test_changed_sizes_names_exactly_the_sizes_that_differ():
    full = {"epochs": 20, "seeds": [0, 1, 2], "n_test": None}
    assert report.changed_sizes(full, full) == "The record ran with the full-mode sizes."
    line = report.changed_sizes({**full, "epochs": 5, "seeds": [0]}, full)
    assert line == "Sizes changed from the full-mode table: epochs = 5, seeds = [0]."
    assert "n_test" not in line and report.changed_sizes(None, full).startswith("The record ran")


def test_runtime_resolve_device_names_the_argument():
    assert runtime.resolve_device("cpu") == torch.device("cpu")
    with pytest.raises(ValueError, match="device='gpu0' is not a torch device"):
        runtime.resolve_device("gpu0")
    if not torch.cuda.is_available():
        with pytest.raises(ValueError, match="asks for CUDA"):
            runtime.resolve_device("cuda")


def test_import_labkit_reaches_every_module():
    import subprocess
    import sys

    code = "import labkit; [getattr(labkit, m) for m in ('convex', 'clip', 'lognorm', 'chapters', 'report', 'course')]"
    assert subprocess.run([sys.executable, "-c", code], capture_output=True).returncode == 0


def test_ch01_tail_cost_from_the_benchmark_record():
    bench = {"results": {"delta": 0.5, "rows": [{"n": 4, "stabilize": {"norm": 0.5}}, {"n": 8, "stabilize": None}]}}
    A = ch01.bench_matrix(4)
    assert torch.equal(A, ch01.bench_matrix(4)) and A.dtype == torch.float64
    v = ch01.tail_cost(bench, n=4, violation=1e-3)
    assert v["A"] == pytest.approx(float(A.norm()))
    assert v["sum"] == pytest.approx(v["A"] - 0.5)
    assert v["cost"] == pytest.approx(1e-3 / 0.5 * (v["A"] - 0.5) / 0.5)
    with pytest.raises(ValueError, match="n = 8"):
        ch01.tail_cost(bench, n=8)


def test_ch02_penalty_free_finds_clip_runs_equal_to_no_regularisation():
    def result(clean, q, best=3):
        return {
            "clean": clean,
            "noise": {"accuracy": 0.1},
            "pair_ascent": q,
            "lipschitz": {"upper": 9.0},
            "best_epoch": best,
            "radii": [2.0],
            "empirical": {"pgd_l2": [0.01], "pgd_sphere": [0.02]},
        }

    runs = {
        "mnist/paper/none": result(0.2, 0.005),
        "mnist/paper/CLIP low": result(0.2, 0.005),
        "mnist/paper/CLIP high": result(0.2, 0.005, best=4),  # another kept epoch: not the same run
        "mnist/standard/none": result(0.9, 2.0),
        "mnist/standard/CLIP low": result(0.8, 1.0),
    }
    assert ch02.penalty_free(runs) == ["mnist/paper/CLIP low"]
    note = ch02.penalty_note(runs, lam=0.1)
    assert "mnist in the paper setting" in note and "2.5e-06" in note
    assert "acted in every setting" in ch02.penalty_note({k: v for k, v in runs.items() if "standard" in k})


def test_ch04_bench_values_and_table():
    bench = {
        "results": [{"what": "train", "seconds": 10.0, "images_per_second": 25.0}],
        "sizes": {"preset": "cpl-s", "batch": 256, "parameters": 41_000_000},
        "device_name": "cpu",
        "threads": 2,
        "created": "2026-11-30T00:00:00",
        "commit": "abc",
    }
    v = ch04.bench_values(bench, epochs=200)
    numbers = {k: x for k, x in v.items() if k != "best"}
    assert numbers == pytest.approx(
        {
            "parameters": 41.0,
            "images_per_second": 25.0,
            "epoch_seconds": 2000.0,
            "epoch_minutes": 2000 / 60,
            "run_hours": 2000 * 200 / 3600,
            "best_epoch_seconds": 2000.0,
        }
    )
    assert v["best"] == "the plain step"
    assert "cpl-s" in ch04.bench_table(bench)
    rows = [
        *bench["results"],
        {"what": "evaluation forward", "seconds": 1.0, "images_per_second": 250.0},
        {"what": "train step, bf16", "seconds": 5.0, "images_per_second": 50.0},
        {"what": "train step, tf32", "seconds": 8.0, "images_per_second": 31.25},
    ]
    v = ch04.bench_values({**bench, "results": rows}, epochs=200)
    assert v["epoch_seconds"] == pytest.approx(2000.0)  # the plain step, not the evaluation forward
    assert v["best"] == "bf16" and v["best_epoch_seconds"] == pytest.approx(1000.0)
    with pytest.raises(ValueError, match="non-positive"):
        ch04.bench_values({**bench, "results": [{"what": "train", "images_per_second": 0.0}]}, epochs=1)
    with pytest.raises(ValueError, match=r"non-positive speed \(0.0\)"):  # a variant's, not the first row's
        ch04.bench_values(
            {**bench, "results": [*rows, {"what": "train step, bf16", "images_per_second": 0.0}]}, epochs=1
        )


def test_ch04_cifar_values_read_the_cpls_record():
    from labkit.chapters import ch04

    run = {
        "radii": [0.1, 0.2, 0.3],
        "clean": 0.5,
        "certified": [0.4, 0.3, 0.2],
        "empirical": {"pgd": [0.45, 0.4, 0.3]},
        "lipschitz": {"lower": 0.6, "upper": 1.0},
        "n_attack": 1000,
        "seconds": 1440.0,
        "sizes": {"n_audit": 50},
        "audit": {"points": 50, "flipped": 0},
    }
    record = {"results": {"cifar10/cpl": run}, "sizes": {"cifar_epochs": 1}, "device": "cpu", "device_name": "x86_64"}
    v = ch04.cifar_values(record)
    assert v["epochs"] == "1 epoch" and v["minutes"] == pytest.approx(24.0)
    assert v["where"] == "the CPU of this book (x86_64)" and (v["audited"], v["flipped"]) == (50, 0)
    assert v["cifar10/cpl/cert0"] == 0.4 and v["n_attack"] == 1000
    gpu = ch04.cifar_values({**record, "sizes": {"cifar_epochs": 20}, "device": "cuda", "device_name": "H200"})
    assert gpu["epochs"] == "20 epochs" and gpu["where"] == "a GPU (H200)"


def _ch03_result(sens, pgd, clean=0.9, gap=0.0):
    return {
        "clean": clean,
        "seconds": 1.0,
        "trace": [(0, 2.0), (5, 1.0)],
        "smoothness": 3.0,
        "attack": {"sensitivity": sens, "pgd": pgd, "steps": 30, "pgd_steps": 20, "images": len(sens)},
        "jacobian": {"state": [1.0, 2.0, 3.0], "logits": [0.5, 1.0, 1.5]},
        "propagation": {"linear": [1.0 + gap, 2.0], "monte_carlo": [1.0, 2.0], "noise": 0.05, "samples": 10},
    }


def test_ch03_claim_table_and_verify_from_synthetic_results():
    from labkit.chapters import ch03

    results = {
        "sNODE, L²/seed 0": _ch03_result([0.4, 0.6, None, 0.0], [0.5, 0.7, 0.9, 0.0]),
        "sNODE, Sobolev/seed 0": _ch03_result([0.2, 0.3, 0.3], [0.5, 0.8, 0.9]),
        "ResNet, Adam/seed 0": _ch03_result([0.3, 0.4, 0.5], [0.4, 0.6, 0.8], clean=0.8),
    }
    ch03.verify(results)
    text = ch03.claim(results)
    assert "only one sNODE variant" in text and "0.60 (0.60 by the sensitivity attack" in text and "1 seed(s)" in text
    assert "do not always order them the same way" in text  # Sobolev: below by one attack, above by PGD
    rows = {r["model"]: r for r in (ch03._row(k, r) for k, r in results.items())}
    # the misclassified image (0) is left out, the failure (None) counted above the reach
    assert rows["sNODE, L²"]["sens"] == 0.6 and rows["sNODE, L²"]["sens_found"] == pytest.approx(2 / 3)
    assert rows["sNODE, L²"]["attacked_accuracy"] == 0.75 and rows["sNODE, L²"]["both"] == 0.6
    assert "median ‖Ξ(T)‖₂" in ch03.table(results) and ch03.values(results)["l2/xi"] == 2.0
    ch03.verify({"x/seed 0": _ch03_result([0.1], [0.1], gap=0.9)})  # a nonlinear network is a finding
    assert "further off for x/seed 0 (90.0%)" in ch03.record_note(
        {"results": {"x/seed 0": _ch03_result([0.1], [0.1], gap=0.9)}, "seconds": 60, "commit": "abc"}
    )
    # an attack that flips fewer than half the correct images: a censored median, shown as beyond its
    # reach, which orders nothing
    beyond = {
        "sNODE, L²/seed 0": _ch03_result([0.2, None, None], [0.5, 0.7, 0.9]),
        "sNODE, Sobolev/seed 0": _ch03_result([0.3, None, None], [0.6, 0.8, 0.9]),
        "ResNet, Adam/seed 0": _ch03_result([0.1, None, None], [0.4, 0.6, 0.8]),
    }
    note = ch03.record_note({"results": beyond, "seconds": 60, "commit": "abc"})
    assert "beyond its reach of 0.90" in note and "does not order them" in note
    claim = ch03.claim(beyond)
    assert "> 0.90 by the sensitivity attack" in claim and "each attack alone that orders them" in claim
    broken = _ch03_result([0.1], [0.1])
    broken["propagation"]["monte_carlo"] = [float("nan"), 2.0]
    with pytest.raises(AssertionError, match="monte_carlo standard deviation"):
        ch03.verify({"x/seed 0": broken})
    bench = {
        "results": [
            {
                "what": "adjoint gradient",
                "seconds": 0.1,
                "images_per_second": 1000.0,
                "peak_mb": 700.0,
                "before_mb": 600.0,
            }
        ],
        "sizes": {"dim": 196, "steps": 150, "batch": 100, "images": 1000},
        "device_name": "cpu",
        "threads": 2,
        "created": "2026-11-30T00:00:00",
        "commit": "abc",
    }
    assert "d = 196, N = 150" in ch03.bench_table(bench)
    speeds = {
        "results": [
            {"what": "NCG epoch", "images_per_second": 100.0},
            {"what": "Adam epoch", "images_per_second": 300.0},
        ]
    }
    cost = ch03.full_cost(speeds, images=60_000)  # 600 s and 200 s per epoch; 2 NCG + 1 Adam, 10 epochs, 3 seeds
    assert cost == pytest.approx({"ncg_epoch_minutes": 10.0, "adam_epoch_minutes": 200 / 60, "hours": 1400 * 30 / 3600})
    with pytest.raises(ValueError, match="non-positive"):
        ch03.full_cost(
            {"results": [{"what": "NCG", "images_per_second": 0.0}, {"what": "Adam", "images_per_second": 1.0}]}
        )


def test_ch01_certification_of_the_unit_norm_classifier_is_sound():
    torch.manual_seed(0)
    from labkit import lognorm

    model = lognorm.ODEClassifier(in_features=784, width=6, T=1.0, steps=5, unit_norm=True).eval()
    for layer in (model.lift, model.head):  # the norms are pinned to at most 1 whatever the weights
        W = model._linear(layer, torch.eye(layer.in_features)).T - layer.bias[:, None]
        assert float(torch.linalg.matrix_norm(W.detach().double(), 2)) <= 1.0
    te = data.load("mnist", train=False, limit=40)
    c = ch01.certification(model, te, [0.01, 0.05], n_audit=20, steps=10)
    assert c["audit"]["flipped"] == 0 and c["audit"]["points"] > 0
    assert c["lower"] <= c["bound"] == model.certificate()["lipschitz_bound"]
    assert c["certified"][0] >= c["certified"][1]  # fewer points certified at a larger radius


def test_ch01_labels_tables_and_comparison():
    assert ch01.label(None) == "classical" and ch01.label(0.5, "unit norm") == "δ = 0.5, unit norm"

    def result(clean, pgd, cert):
        return {
            "clean": clean,
            "radii": [0.0, 0.1],
            "empirical": {"pgd": [clean, pgd]},
            "certification": {
                "radii": [0.1, 0.3],
                "certified": [cert + 0.1, cert],
                "bound": 2.0,
                "lower": 1.0,
                "audit": {"points": 5, "flipped": 0},
            },
        }

    runs = {
        "mnist/classical": result(0.9, 0.05, 0.1),
        "mnist/δ = 0.2": result(0.9, 0.04, 0.1),
        "mnist/classical, unit norm": result(0.85, 0.4, 0.6),
        "mnist/δ = 0.2, unit norm": result(0.84, 0.5, 0.7),
    }
    text = ch01.comparison(runs)
    assert "free lift and head, stabilisation made the classifier more robust" in text and "on 0 of 1" in text
    assert "unit norm lift and head, stabilisation made the classifier more robust" in text and "on 1 of 1" in text
    assert "5.0% (free) against 40.0% (unit norm)" in text
    assert "0 / 5" in ch01.certified_table(runs)
    assert "predates" in ch01.certified_table({"mnist/classical": {"clean": 0.9}})


def test_ch05_smoke_run_is_verified_tabled_resumed_and_its_verify_has_teeth(monkeypatch):
    monkeypatch.setenv("LABKIT_MODE", "smoke")
    sizes = {**ch05.sizes("smoke"), "presets": ["switching", "certified"]}
    seen = {}
    results = ch05.run(**sizes, progress=False, on_result=seen.__setitem__)
    assert set(results) == {"cifar10/switching", "cifar10/certified", "sir"} and set(seen) == set(results)
    ch05.verify(results)
    cert = results["cifar10/certified"]
    assert cert["check"]["flipped"] == 0 and cert["audit"]["flipped"] == 0
    assert cert["lipschitz"]["upper"] <= (1 / min(ch05.structured.CIFAR_STD)) * (1 + 1e-5)
    assert all(b <= a + 1e-12 for a, b in zip(cert["empirical"]["strong"], cert["empirical"]["strong"][1:]))
    assert max(results["sir"]["mass"]["drift"]) < 1e-12 < max(results["sir"]["plain"]["drift"])
    assert "switching, certified (ours)" in ch05.table(results) and "repository" in ch05.paper_table(results)
    values = ch05.values(results)
    assert values["certified/flipped"] == 0 and "sir/mass/drift" in values
    again = ch05.run(**sizes, progress=False, done=results)  # nothing left to run: the same results
    assert again == results
    bad = {**cert, "check": {**cert["check"], "flipped": 1}}
    with pytest.raises(AssertionError, match="flipped 1 certified"):
        ch05.verify({"cifar10/certified": bad})
    low = {**cert, "lipschitz": {**cert["lipschitz"], "upper": cert["lipschitz"]["lower"] / 2}}
    with pytest.raises(AssertionError, match="lower bound above"):
        ch05.verify({"cifar10/certified": low})


def test_ch04_resumes_run_by_run_and_leaves_cifar_out_without_layers(monkeypatch):
    sizes = {
        **ch04.sizes("smoke"),
        "datasets": ["mnist"],
        "dense_layers": ["cpl", "sll"],
        "cifar_layers": [],
        "n_train": 100,
        "n_test": 40,
    }
    seen = {}
    results = ch04.run(**sizes, progress=False, on_result=seen.__setitem__)
    assert list(results) == ["mnist/cpl", "mnist/sll", "mnist/baseline"] and seen == results  # no CIFAR-10 run
    ch04.verify(results)
    assert results["mnist/sll"]["lipschitz"]["upper"] == 1.0 and results["mnist/sll"]["parameters"] > 0
    trained = []
    monkeypatch.setattr("labkit.convex.fit", lambda *a, **k: trained.append(1))
    partial = {k: v for k, v in results.items() if k != "mnist/baseline"}
    with pytest.raises(AttributeError):  # the stub returns no history: only the missing run is trained
        ch04.run(**sizes, progress=False, done=partial)
    assert trained == [1]
    assert ch04.run(**sizes, progress=False, done=results) == results and trained == [1]
    with pytest.raises(ValueError, match="dense_layers"):
        ch04.run(**{**sizes, "dense_layers": ["cpl", "aol"]}, progress=False)


def test_ch03_ensemble_path_equals_the_runs_one_by_one():
    from labkit.chapters import ch03

    sizes = {**ch03.sizes("smoke"), "seeds": [0, 1], "attack_images": 4, "jacobian_images": 2, "mc_samples": 20}
    one = ch03.run(**sizes, ensemble=False)
    seen = []
    together = ch03.run(**sizes, ensemble=True, on_result=lambda k, r: seen.append(k))
    assert list(together) == list(one)  # the same keys in the same order
    assert seen[:4] == ["sNODE, L²/seed 0", "sNODE, Sobolev/seed 0", "sNODE, L²/seed 1", "sNODE, Sobolev/seed 1"]
    for key, r in one.items():
        t = together[key]
        assert t["clean"] == r["clean"] and t.get("ensemble") == (4 if key.startswith("sNODE") else None)
        assert t["smoothness"] == pytest.approx(r["smoothness"], rel=1e-4)
        assert [v for _, v in t["trace"]] == pytest.approx([v for _, v in r["trace"]], rel=1e-4)
