"""The experiment runner: exact numbers, resume after interruption or kill."""
from __future__ import annotations

import functools
import signal
import sqlite3
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest
import torch

import advlab
from advlab.errors import UnknownNameError
from advlab.evaluation import inputs, measure, metrics, results, runner
from advlab.evaluation.config import (
    RunConfig,
    config_from_dict,
)
from advlab.evaluation.plan import plan_cells
from advlab.evaluation.store import Store
from testkit import BITDEPTH, tiny_config, tiny_setup

TESTS = Path(__file__).resolve().parents[1]


class Counter:
    """Counts the cells the runner computes and stores (by attack; an adaptive cell by the
    attack it ran), wherever they are computed."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.calls: list[str] = []
        real = Store.write_cell

        def counting(store: Store, rec, *a, **kw):  # noqa: ANN001, ANN002, ANN003, ANN202
            self.calls.append(rec.info.get("adaptive_attack") or rec.spec["attack"])
            return real(store, rec, *a, **kw)

        monkeypatch.setattr(Store, "write_cell", counting)


# ----------------------------------------------------------------------------- exact numbers


def test_run_matches_direct_computation(tiny_run) -> None:  # noqa: ANN001
    root, models, (x, y), rec, _ = tiny_run
    assert len(rec["cells"]) == 6
    with Store(root / "advlab.sqlite") as store:
        res = results.collect(store, "t")
        for key, spec in rec["cells"]:
            m = models[spec["model"]["name"]]
            atk = advlab.attacks.get(spec["attack"], eps=spec["params"]["eps"], seed=0,
                                     **{k: v for k, v in spec["params"].items()
                                        if k not in ("eps", "target")})
            direct = atk(m, x, y)
            ex = store.examples(key)
            assert np.array_equal(ex["adv_pred"], direct.logits.argmax(1).numpy())
            assert np.array_equal(ex["success"], direct.success.numpy())
            assert np.allclose(ex["linf"], direct.norms["linf"].numpy(), atol=1e-6)
            assert np.allclose(ex["ssim"], metrics.ssim(x, direct.x_adv).numpy(), atol=1e-6)
            probes = store.probes(key)
            other = "b" if spec["model"]["name"] == "a" else "a"
            with torch.no_grad():
                assert np.array_equal(probes[f"transfer:{other}"]["adv_pred"],
                                      models[other](direct.x_adv).argmax(1).numpy())
                assert np.array_equal(probes["shift:1"]["adv_pred"],
                                      m(metrics.translate(direct.x_adv, 1)).argmax(1).numpy())
            summary = next(c for c in res["cells"] if c["key"] == key)
            assert summary["robust_accuracy"] == pytest.approx(
                (direct.logits.argmax(1) == y).float().mean().item())
            gal = store.gallery(key)
            assert 0 < len(gal) <= 3
            for idx, xi, xa in gal:
                assert np.array_equal(xi, x[idx].numpy())
                assert np.allclose(xa, direct.x_adv[idx].numpy())
    a_cells = [c for c in res["cells"] if c["model"] == "a"]
    assert all(c["clean_accuracy"] == 1.0 for c in a_cells)
    assert res["missing"] == []


def test_models_of_the_caller_untouched(tiny_run) -> None:  # noqa: ANN001
    _, models, _, _, before = tiny_run
    for k, m in models.items():
        assert not m.training and all(p.grad is None for p in m.parameters())
        assert all(torch.equal(a, b) for a, b in zip(before[k], m.state_dict().values(),
                                                     strict=True))


# ----------------------------------------------------------------------------- resume


def test_rerun_skips_finished_cells(tmp_path: Path, tiny_factory,  # noqa: ANN001
                                    monkeypatch: pytest.MonkeyPatch) -> None:
    models, data = tiny_setup(tiny_factory)
    count = Counter(monkeypatch)
    cfg = tiny_config(attacks=[{"name": "fgsm", "eps": [0.02, 0.1]}])
    runner.run(cfg, root=tmp_path, models=models, data=data)
    assert len(count.calls) == 4
    with Store(tmp_path / "advlab.sqlite") as s:
        stamps = {k: s.cell(k)["finished"] for k, _ in s.run("t")["cells"]}
    events = []
    runner.run(cfg, root=tmp_path, models=models, data=data, progress=events.append)
    assert len(count.calls) == 4                       # nothing recomputed
    assert [e.event for e in events] == ["plan"] + ["skip"] * 4
    with Store(tmp_path / "advlab.sqlite") as s:
        assert {k: s.cell(k)["finished"] for k in stamps} == stamps
    # one more eps: only the new cells run
    more = tiny_config(attacks=[{"name": "fgsm", "eps": [0.02, 0.1, 0.3]}])
    runner.run(more, root=tmp_path, models=models, data=data)
    assert count.calls[4:] == ["fgsm", "fgsm"]


def test_interrupted_run_loses_only_the_cell_in_flight(  # noqa: ANN001
        tmp_path: Path, tiny_factory, monkeypatch: pytest.MonkeyPatch) -> None:
    models, data = tiny_setup(tiny_factory)
    count = Counter(monkeypatch)
    cfg = tiny_config(batch_size=10, workers=1,        # 3 batches per cell, 4 cells
                      attacks=[{"name": "fgsm", "eps": [0.02, 0.1]}])

    def stop(p: runner.Progress) -> None:
        if p.event == "batch" and p.cell == 3 and p.batch == 2:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        runner.run(cfg, root=tmp_path, models=models, data=data, progress=stop)
    with Store(tmp_path / "advlab.sqlite") as s:
        keys = [k for k, _ in s.run("t")["cells"]]
        assert s.finished(keys) == set(keys[:2])
        assert len(s.examples(keys[2])["idx"]) == 0
    runner.run(cfg, root=tmp_path, models=models, data=data)
    assert len(count.calls) == 2 + 2    # 2 stored before the stop, then the other 2


def test_workers_store_what_one_process_stores_and_resume(  # noqa: ANN001
        tmp_path: Path, tiny_factory) -> None:
    models, data = tiny_setup(tiny_factory)
    one, two = tmp_path / "one", tmp_path / "two"
    runner.run(tiny_config(workers=1), root=one, models=models, data=data)
    stored = []

    def stop(p: runner.Progress) -> None:  # interrupt the parallel run after 2 stored cells
        assert p.event in ("plan", "skip", "done")   # workers report no batches
        stored.append(p.event)
        if stored.count("done") == 2:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        runner.run(tiny_config(workers=2), root=two, models=models, data=data, progress=stop)
    with Store(two / "advlab.sqlite") as s:
        assert len(s.finished(k for k, _ in s.run("t")["cells"])) == 2
    runner.run(tiny_config(workers=2), root=two, models=models, data=data)
    with Store(one / "advlab.sqlite") as a, Store(two / "advlab.sqlite") as b:
        keys = [k for k, _ in a.run("t")["cells"]]
        assert [k for k, _ in b.run("t")["cells"]] == keys and b.finished(keys) == set(keys)
        for k in keys:
            ea, eb = a.examples(k), b.examples(k)
            for col in ("idx", "label", "clean_pred", "adv_pred", "success"):
                assert np.array_equal(ea[col], eb[col]), (k, col)
            np.testing.assert_allclose(ea["linf"].astype(float), eb["linf"].astype(float),
                                       atol=1e-6)


@pytest.mark.slow
def test_killed_process_resumes(tmp_path: Path, tiny_factory,  # noqa: ANN001
                                monkeypatch: pytest.MonkeyPatch) -> None:
    """SIGKILL a real `advlab run`-like process mid-run; the rerun computes only the rest."""
    script = tmp_path / "job.py"
    script.write_text(textwrap.dedent(f"""
        import sys, time
        sys.path[:0] = [{str(TESTS)!r}, {str(TESTS / 'evaluation')!r},
                        {str(Path(advlab.__file__).parents[1])!r}]
        import torch
        torch.set_num_threads(1)
        from conftest import make_tiny
        from testkit import tiny_config, tiny_setup
        from advlab.evaluation import runner
        models, data = tiny_setup(make_tiny)
        slow = lambda p: time.sleep(0.15) if p.event == "batch" else None
        runner.run(tiny_config(batch_size=4, workers=1), root={str(tmp_path)!r}, models=models,
                   data=data, progress=slow)
    """))
    proc = subprocess.Popen([sys.executable, str(script)], cwd=tmp_path)
    db = tmp_path / "advlab.sqlite"
    deadline = time.time() + 60
    stored = 0
    while time.time() < deadline and stored < 2 and proc.poll() is None:
        time.sleep(0.05)
        if db.exists():
            try:
                with sqlite3.connect(db, timeout=5) as con:
                    stored = con.execute("SELECT count(*) FROM cells").fetchone()[0]
            except sqlite3.OperationalError:
                continue    # tables not created yet
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert proc.returncode == -signal.SIGKILL, "the job finished before it could be killed"
    models, data = tiny_setup(tiny_factory)
    with Store(db) as s:
        keys = [k for k, _ in s.run("t")["cells"]]
        done = s.finished(keys)
        assert 2 <= len(done) < 6
        for k in keys:   # no partial cell: a cell has all its rows, or none
            assert len(s.examples(k)["idx"]) == (24 if k in done else 0)
    count = Counter(monkeypatch)
    runner.run(tiny_config(batch_size=4), root=tmp_path, models=models, data=data)
    assert len(count.calls) == 6 - len(done)


# ----------------------------------------------------------------------------- plugins


def test_unknown_defense_name(tmp_path: Path, tiny_factory) -> None:  # noqa: ANN001
    models, data = tiny_setup(tiny_factory)
    cfg = tiny_config(defenses=["none", "magic"], attacks=[{"name": "fgsm", "eps": 0.1}])
    with pytest.raises(UnknownNameError, match="unknown defense 'magic'; available: "):
        runner.run(cfg, root=tmp_path, models=models, data=data)


class DistanceDetector:
    """Test detector: distance to the mean training image (higher = more unusual)."""

    def __init__(self, power: float = 2.0) -> None:
        self.power = power

    def fit(self, model, x, y):  # noqa: ANN001, ANN201
        self.mean = x.mean(0, keepdim=True)
        return self

    def score(self, x):  # noqa: ANN001, ANN201
        return (x - self.mean).abs().pow(self.power).flatten(1).sum(1)


def test_detector_scores_and_auc(tmp_path: Path, tiny_factory,  # noqa: ANN001
                                 monkeypatch: pytest.MonkeyPatch) -> None:
    from advlab.detectors import registry

    monkeypatch.setattr(registry, "_REGISTRY", dict(registry._REGISTRY))
    registry.register("distance-detector", evidence="inputs")(DistanceDetector)
    models, data = tiny_setup(tiny_factory)
    x_tr = torch.rand(30, 1, 8, 8, generator=torch.Generator().manual_seed(9))
    cfg = tiny_config(detectors=[{"name": "distance-detector", "params": {"power": 1.0}}],
                      attacks=[{"name": "fgsm", "eps": 0.3}])
    runner.run(cfg, root=tmp_path, models=models, data=data,
               train_data=(x_tr, torch.zeros(30, dtype=torch.int64)))
    det = DistanceDetector(1.0).fit(None, x_tr, None)
    with Store(tmp_path / "advlab.sqlite") as s:
        res = results.collect(s, "t")
        cell = res["cells"][0]
        ex, sc = s.examples(cell["key"]), s.scores(cell["key"])["distance-detector"]
    x, y = data
    x_adv = advlab.attacks.get("fgsm", eps=0.3)(models["a"], x, y).x_adv
    assert np.allclose(sc["clean"], det.score(x).numpy())
    assert np.allclose(sc["adv"], det.score(x_adv).numpy(), rtol=1e-5)
    fooled = ex["success"] & (ex["clean_pred"] == ex["label"])
    auc = cell["detectors"]["distance-detector"]["auc"]
    assert auc == pytest.approx(metrics.roc_auc(sc["clean"], sc["adv"][fooled]))
    assert auc > 0.5   # better than chance: eps 0.3 sign noise moves away from the mean


def test_unknown_detector_name(tmp_path: Path, tiny_factory) -> None:  # noqa: ANN001
    models, data = tiny_setup(tiny_factory)
    cfg = tiny_config(detectors=["nope"], attacks=[{"name": "fgsm", "eps": 0.3}])
    with pytest.raises(UnknownNameError, match="unknown detector 'nope'.*activation-knn"):
        runner.run(cfg, root=tmp_path, models=models, data=data, train_data=data)


# ----------------------------------------------------------------------------- sanity adapter


def test_sanity_adapter_reuses_rates_and_caches(tmp_path: Path, tiny_factory,  # noqa: ANN001
                                                monkeypatch: pytest.MonkeyPatch) -> None:
    calls = []

    def run_all(model, x, y, *, eps, norm, results, max_examples, blackbox_queries, seed,  # noqa: ANN001, ANN202
                ladder):
        calls.append({"model": model, "eps": eps, "norm": norm, "results": results,
                      "n": max_examples, "q": blackbox_queries})
        return [{"check": "softmax", "level": "ok", "message": "logits"},
                {"check": "unbounded", "level": "warning", "message": "PGD fails",
                 "attack": "apgd-dlr", "attack_kwargs": {"steps": 100}}]

    monkeypatch.setattr(measure.sanity, "run_all", run_all)
    models, data = tiny_setup(tiny_factory)
    cfg = tiny_config(attacks=[{"name": "fgsm", "eps": [0.02, 0.1]},
                               {"name": "bim", "eps": 0.1, "params": {"steps": 3}}],
                      report={"eps": 0.1}, sanity={"enabled": True, "max_examples": 10,
                                                   "blackbox_queries": 7},
                      workers=1)  # the patched checks record their calls in this process
    rec = runner.run(cfg, root=tmp_path, models=models, data=data)
    # the reference eps first; a check fired there, so the checks run at 0.02 too
    assert [(c["model"], c["eps"]) for c in calls] == [
        (models["a"], 0.1), (models["b"], 0.1), (models["a"], 0.02), (models["b"], 0.02)]
    assert all(set(c["results"]) == {"fgsm"} for c in calls[2:])  # what ran at 0.02
    with Store(tmp_path / "advlab.sqlite") as s:
        for call, name in zip(calls[:2], "ab", strict=True):
            assert call["eps"] == 0.1 and call["norm"] == "linf" and call["n"] == 10
            assert call["q"] == 7 and set(call["results"]) == {"fgsm", "bim"}
            for attack, rate in call["results"].items():
                key = next(k for k, sp in rec["cells"] if sp["model"]["name"] == name
                           and sp["attack"] == attack and sp["params"]["eps"] == 0.1)
                assert rate == pytest.approx(s.examples(key)["success"][:10].mean())
    groups = rec["env"]["sanity"]
    assert [(g["model"], g["eps"], len(g["findings"])) for g in groups] == [
        ("a", 0.1, 2), ("b", 0.1, 2), ("a", 0.02, 2), ("b", 0.02, 2)]
    # the fired finding's attack ran as a cell of its own, on the checks' 10 images
    specs = dict(rec["cells"])
    for g in groups:
        spec = specs[g["findings"][1]["cell"]]
        assert (spec["model"]["name"], spec["attack"], spec["params"]) == (
            g["model"], "apgd-dlr", {"steps": 100, "eps": g["eps"], "target": None})
        assert spec["adaptive"] == {"against": "sanity", "surrogate": False}
        assert spec["data"]["subset"] == 10 and "cell" not in g["findings"][0]
    count = Counter(monkeypatch)
    rec = runner.run(cfg, root=tmp_path, models=models, data=data)
    assert len(calls) == 4 and rec["env"]["sanity"] == groups    # stored, not rerun
    assert count.calls == []                                     # the cells too
    runner.run(config_from_dict({**_raw(cfg), "sanity": {"enabled": False}}), root=tmp_path,
               models=models, data=data)
    assert len(calls) == 4


def _raw(cfg: RunConfig) -> dict:
    d = cfg.to_dict()
    d["data"] = {k: v for k, v in d["data"].items() if v is not None}
    d["models"] = [m["name"] for m in d["models"]]
    for a in d["attacks"]:
        a.pop("target")
    d.pop("device")
    return d


def test_real_detector_through_the_adapter(tmp_path: Path, tiny_factory) -> None:  # noqa: ANN001
    """advlab.detectors.ActivationKNN by its config name, fitted on a worker and scored by
    the runner; the model need not be picklable (the fitted detector comes back without
    it)."""
    from advlab.detectors import ActivationKNN

    models, data = tiny_setup(tiny_factory)
    models["a"].not_picklable = lambda: None
    train = (torch.rand(40, 1, 8, 8, generator=torch.Generator().manual_seed(2)),
             torch.randint(0, 10, (40,), generator=torch.Generator().manual_seed(3)))
    cfg = tiny_config(models=["a"], workers=2,  # the fit runs next to the unscored cell
                      attacks=[{"name": "fgsm", "eps": 0.3},
                               {"name": "bim", "eps": 0.1, "detectors": []}],
                      detectors=[{"name": "activation-knn",
                                  "params": {"layers": ["fc"], "k": 3}}])
    runner.run(cfg, root=tmp_path, models=models, data=data, train_data=train)
    det = ActivationKNN(layers=["fc"], k=3).fit(models["a"], *train)
    with Store(tmp_path / "advlab.sqlite") as s:
        cells = s.run("t")["cells"]
        assert [sp["attack"] for _, sp in cells] == ["fgsm", "bim", "detector-aware-pgd"]
        assert s.finished(k for k, _ in cells) == {k for k, _ in cells}
        sc = s.scores(cells[0][0])["activation-knn"]
    assert np.allclose(sc["clean"], det.score(data[0]).double().numpy(), rtol=1e-5)


def test_real_transformed_defense(tmp_path: Path, tiny_factory) -> None:  # noqa: ANN001
    """defense = transformed (advlab.defenses.Transformed with a Translate), attacked naively:
    the stored clean predictions are the defended model's; transfer to the bare model."""
    from advlab.defenses import Transformed, Translate

    models, data = tiny_setup(tiny_factory)
    cfg = tiny_config(models=["a"], attacks=[{"name": "fgsm", "eps": 0.1}], defenses=[
        "none", {"name": "transformed", "params": {"transforms": [
            {"name": "Translate", "dx": 1.0}]}}])
    rec = runner.run(cfg, root=tmp_path, models=models, data=data)
    defended = Transformed(models["a"], [Translate(1.0)], seed=0).eval()
    with Store(tmp_path / "advlab.sqlite") as s:
        (k0, _), (k1, spec1), (k2, spec2) = s.run("t")["cells"]
        assert spec2["adaptive"] == {"against": "defense"}
        assert spec1["defense"]["name"] == "transformed"
        with torch.no_grad():
            assert np.array_equal(s.examples(k1)["clean_pred"],
                                  defended(data[0]).argmax(1).numpy())
        assert "transfer:a" in s.probes(k1) and "transfer:a" not in s.probes(k0)
    assert rec["env"]["skipped"] == {}


def test_trained_defense_is_cached_under_advlab_home(tmp_path: Path, tiny_factory,  # noqa: ANN001
                                                     monkeypatch: pytest.MonkeyPatch,
                                                     caplog: pytest.LogCaptureFixture) -> None:
    from advlab import defenses

    monkeypatch.setenv("ADVLAB_HOME", str(tmp_path / "home"))
    trained = []
    real = defenses.distill

    @functools.wraps(real)  # its parameters, which the recipe checks
    def counting(*a, **kw):  # noqa: ANN002, ANN003, ANN202
        trained.append(1)
        return real(*a, **kw)

    monkeypatch.setattr(defenses.registry, "distill", counting)
    models, data = tiny_setup(tiny_factory)
    cfg = tiny_config(models=["a"], attacks=[{"name": "fgsm", "eps": 0.1}], adaptive={
        "enabled": False}, defenses=[{"name": "distillation", "params": {
            "temperature": 10, "epochs": 1}}])

    def student() -> dict[str, torch.Tensor]:
        r = inputs.Inputs(cfg, torch.device("cpu"), models=models, data=data, train_data=data)
        return r.defended("a", models["a"], cfg.defenses[0]).state_dict()

    first = student()
    (path,) = (tmp_path / "home" / "defenses").iterdir()
    assert student().keys() == first.keys() and len(trained) == 1  # loaded, not trained
    assert all(torch.equal(first[k], v) for k, v in student().items())
    path.write_bytes(b"not a safetensors file")
    assert all(torch.equal(first[k], v) for k, v in student().items())  # retrained
    assert len(trained) == 2 and "unusable cache file" in caplog.text


# ----------------------------------------------------------------------------- scope, adaptive


def test_attack_n_takes_the_first_images_and_keys_the_cell(tmp_path: Path,  # noqa: ANN001
                                                            tiny_factory) -> None:
    models, (x, y) = tiny_setup(tiny_factory)
    cfg = tiny_config(models=["a"], attacks=[{"name": "fgsm", "eps": 0.3},
                                             {"name": "fgsm", "eps": 0.3, "n": 10},
                                             {"name": "fgsm", "eps": 0.3, "n": 99}])
    cells = plan_cells(cfg, {"a": "1"}, "d", len(x))
    assert [c.n for c in cells] == [None, 10]      # n >= the data: the same cell as no n
    assert cells[1].spec["data"]["subset"] == 10 and "subset" not in cells[0].spec["data"]
    rec = runner.run(cfg, root=tmp_path, models=models, data=(x, y))
    assert len(rec["cells"]) == 2
    with Store(tmp_path / "advlab.sqlite") as s:
        ex = s.examples(rec["cells"][1][0])
    direct = advlab.attacks.get("fgsm", eps=0.3, seed=0)(models["a"], x[:10], y[:10])
    assert list(ex["idx"]) == list(range(10))
    assert np.array_equal(ex["adv_pred"], direct.logits.argmax(1).numpy())


def test_adaptive_cell_for_a_defended_model(tmp_path: Path, tiny_factory,  # noqa: ANN001
                                            monkeypatch: pytest.MonkeyPatch) -> None:
    """1-bit depth reduction: FGSM through it sees a zero gradient and changes nothing; the
    defense's adaptive attack (PGD through the BPDA surrogate) is run, judged on the real
    defended model, stored as its own cell, and not recomputed on a rerun."""
    from advlab.defenses import Transformed
    from advlab.transforms import BitDepth

    models, (x, y) = tiny_setup(tiny_factory)
    cfg = tiny_config(models=["a"], defenses=["none", BITDEPTH],
                      attacks=[{"name": "fgsm", "eps": 0.3, "n": 16}])
    count = Counter(monkeypatch)
    rec = runner.run(cfg, root=tmp_path, models=models, data=(x, y))
    assert sorted(count.calls) == ["fgsm", "fgsm", "pgd"]
    (k0, s0), (k1, s1), (k2, s2) = rec["cells"]
    assert (s1["defense"]["name"], s2["defense"]["name"]) == ("transformed", "transformed")
    assert s2["adaptive"] == {"against": "defense"} and s2["data"]["subset"] == 16
    defended = Transformed(models["a"], [BitDepth(1)], seed=0).eval()
    a = defended.adaptive()
    direct = advlab.attacks.get(a.attack, **a.attack_kwargs, eps=0.3, seed=0)(
        a.model, x[:16], y[:16])
    with torch.no_grad():
        want = defended(direct.x_adv).argmax(1).numpy()
        clean = defended(x[:16]).argmax(1).numpy()
    with Store(tmp_path / "advlab.sqlite") as s:
        naive, adaptive = s.examples(k1), s.examples(k2)
        assert np.array_equal(adaptive["adv_pred"], want)
        assert np.array_equal(adaptive["success"], want != y[:16].numpy())
        assert np.array_equal(naive["adv_pred"], clean)        # zero gradient: unchanged
        res = results.collect(s, "t")
    summary = {c["key"]: c for c in res["cells"]}
    assert summary[k1]["success_rate"] == 0.0 and summary[k2]["success_rate"] > 0.5
    assert summary[k2]["adaptive"]["attack"] == "pgd" and summary[k2]["adaptive"]["surrogate"]
    assert summary[k2]["label"] == "adaptive pgd on the BPDA/EOT surrogate [n=16]"
    events: list = []
    before = len(count.calls)
    runner.run(cfg, root=tmp_path, models=models, data=(x, y), progress=events.append)
    assert len(count.calls) == before and [e.event for e in events] == ["plan"] + ["skip"] * 3


def test_detector_aware_cell(tmp_path: Path, tiny_factory) -> None:  # noqa: ANN001
    """A differentiable detector gets an adaptive cell: DetectorAwarePGD against it and the
    threshold at 5% FPR on the cell's clean images, its scores stored; a detector that the
    attack's scope leaves out gets neither."""
    from advlab.detectors import ActivationKNN, DetectorAwarePGD

    models, (x, y) = tiny_setup(tiny_factory)
    x_tr = torch.rand(40, 1, 8, 8, generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        train = (x_tr, models["a"](x_tr).argmax(1))
    params = {"layers": ["fc"], "k": 3, "surrogate_neighbours": 2}
    knn = {"name": "activation-knn", "params": params}
    cfg = tiny_config(models=["a"], detectors=[knn, {"name": "feature-squeezing"}],
                      attacks=[{"name": "fgsm", "eps": 0.3, "detectors": ["activation-knn"]}],
                      adaptive={"steps": 5, "lam": 2.0})
    rec = runner.run(cfg, root=tmp_path, models=models, data=(x, y), train_data=train)
    (k0, _), (k1, s1) = rec["cells"]
    assert s1["attack"] == "detector-aware-pgd" and s1["params"]["steps"] == 5
    assert s1["adaptive"]["detector"]["name"] == "activation-knn"
    det = ActivationKNN(**params).fit(models["a"], *train)
    calibrated = det.calibrated(x, 0.05)     # the attacker knows the threshold
    assert calibrated.threshold_ == metrics.calibrate_threshold(det.score(x), 0.05)
    assert det.threshold_ is None  # the fitted detector itself is untouched
    direct = DetectorAwarePGD(calibrated, lam=2.0, eps=0.3, steps=5, seed=0)(
        models["a"], x, y)
    assert direct.success.any()
    with Store(tmp_path / "advlab.sqlite") as s:
        assert set(s.scores(k0)) == {"activation-knn"}
        sc = s.scores(k1)["activation-knn"]
        assert np.allclose(sc["adv"], det.score(direct.x_adv).double().numpy(), atol=1e-6)
        assert np.array_equal(s.examples(k1)["success"], direct.success.numpy())
        cell = next(c for c in results.collect(s, "t")["cells"] if c["key"] == k1)
    d = cell["detectors"]["activation-knn"]
    fooled = direct.success.numpy()
    thr = metrics.calibrate_threshold(sc["clean"], 0.05)
    assert d["undetected"] == pytest.approx((fooled & (sc["adv"] <= thr)).mean())
    assert d["auc"] == pytest.approx(metrics.roc_auc(sc["clean"], sc["adv"][fooled]))
