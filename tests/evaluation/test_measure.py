"""advlab.evaluation.measure: one cell's numbers; bf16 cells judged in fp32, batch_size = "auto",
the clean side shared between cells of a model, the adaptive attack on a defense with a detector."""
from __future__ import annotations

import logging

import numpy as np
import pytest
import torch
from torch import nn

import advlab
from advlab import attacks, zoo
from advlab.evaluation import measure, metrics, results
from advlab.evaluation.measure import CellPlan
from advlab.evaluation.measure import measure as evaluate
from testkit import tiny_setup


def test_bf16_cell_is_judged_in_fp32() -> None:
    net = zoo.build("digits-mlp", seed=0).eval()
    x = torch.rand(40, 1, 8, 8, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        y = net(x).argmax(1)
    plan = CellPlan(attacks.PGD(eps=0.1, steps=5, seed=0), shifts=(), noise=(), gallery=2,
                    batch_size=16, precision="bf16")
    rec = evaluate(plan, net, x, y)
    assert rec.info["precision"] == "bf16"
    advs = torch.stack([torch.from_numpy(xa) for _, _, xa in rec.gallery])
    idx = [i for i, _, _ in rec.gallery]
    with torch.no_grad():
        pred = net(advs).argmax(1).numpy()
    assert (rec.examples["adv_pred"][idx] == pred).all()
    assert (rec.examples["success"] == (rec.examples["adv_pred"] != y.numpy())).all()


class OutOfMemoryAbove(nn.Module):
    """A model that raises CUDA's out-of-memory error on batches larger than ``limit``."""

    def __init__(self, model: nn.Module, limit: int) -> None:
        super().__init__()
        self.model, self.limit, self.sizes = model, limit, []

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.sizes.append(len(x))
        if len(x) > self.limit:
            raise torch.cuda.OutOfMemoryError("CUDA out of memory (test)")
        return self.model(x)


def test_auto_batch_size_halves_on_out_of_memory(caplog: pytest.LogCaptureFixture) -> None:
    base = zoo.build("digits-mlp", seed=0).eval()
    x = torch.rand(300, 1, 8, 8, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        y = base(x).argmax(1)
    net = OutOfMemoryAbove(base, limit=100).eval()
    plan = CellPlan(attacks.PGD(eps=0.1, steps=3, seed=0), shifts=(1,), noise=(0.05,),
                    gallery=2, batch_size="auto")
    with caplog.at_level(logging.WARNING, logger="advlab.evaluation.measure"):
        rec = evaluate(plan, net, x, y)
    assert rec.info["batch_size"] == 64  # 1024 -> 512 -> 256 -> 128 -> 64
    assert [r.getMessage() for r in caplog.records].count(
        "CUDA out of memory: batch size halved to 64, batch retried") == 1
    assert np.array_equal(rec.examples["idx"], np.arange(300))
    assert max(net.sizes[-10:]) <= 100
    fixed = evaluate(CellPlan(attacks.PGD(eps=0.1, steps=3, seed=0), shifts=(1,),
                              noise=(0.05,), gallery=2, batch_size=64), base, x, y)
    for k in ("clean_pred", "adv_pred", "success"):
        assert np.array_equal(rec.examples[k], fixed.examples[k])
    with pytest.raises(torch.cuda.OutOfMemoryError):  # a fixed batch size is not changed
        evaluate(CellPlan(attacks.FGSM(eps=0.1), batch_size=128), net, x, y)


def test_clean_side_is_computed_once_per_model(tiny_factory) -> None:  # noqa: ANN001
    # cells on the same model share the clean logits, probes and detector scores; the
    # measurements equal those computed without the memo
    models, (x, y) = tiny_setup(tiny_factory)
    model, other = models["a"], models["b"]
    seen: list[torch.Tensor] = []
    hook = model.register_forward_pre_hook(lambda m, args: seen.append(args[0]))

    class Score:
        calls = 0

        def score(self, v: torch.Tensor) -> torch.Tensor:
            Score.calls += 1
            return v.flatten(1).mean(1)

    det = Score()  # one fitted detector per model and run

    def plan(name: str, memo: dict | None) -> measure.CellPlan:
        atk = advlab.attacks.get(name, eps=0.1, **({"steps": 3} if name == "pgd" else {}))
        return measure.CellPlan(atk, transfer={"b": other}, detectors={"d": det},
                               batch_size=10, clean=memo)

    def flat(rec: measure.CellRecord) -> dict[str, np.ndarray]:
        out = dict(rec.examples)
        for part in ("probes", "scores"):
            for name, cols in getattr(rec, part).items():
                out.update({f"{part}:{name}:{k}": v for k, v in cols.items()})
        return out

    memo: dict = {}
    # clean forwards of the first batch: the memo's (first cell only) and FGSM's own step
    # from x (PGD starts at a random point); detector scores: clean (first cell) and adv
    for name, expected in (("fgsm", (2, 6)), ("pgd", (0, 3))):
        plain = flat(measure.measure(plan(name, None), model, x, y))
        seen.clear()
        Score.calls = 0
        shared = flat(measure.measure(plan(name, memo), model, x, y))
        assert (sum(v.shape == x[:10].shape and torch.equal(v, x[:10]) for v in seen),
                Score.calls) == expected
        assert plain.keys() == shared.keys()
        assert all(np.array_equal(plain[k], shared[k]) for k in plain)
    hook.remove()


def test_adaptive_attack_on_a_defense_with_a_detector(tiny_factory) -> None:  # noqa: ANN001
    # MagNet's reformer rejects inputs with its detector: the adaptive attack evades both, at
    # the threshold that flags DETECTION_FPR of the clean images
    from advlab.defenses import MagNet
    from advlab.detectors import DetectorAwarePGD

    models, (x, _) = tiny_setup(tiny_factory, n=40)
    model = models["a"]
    with torch.no_grad():
        y = model(x).argmax(1)
    det = MagNet(components=("l2",), epochs=2, seed=0).fit(model, x, y)
    name, atk, surrogate = measure.adaptive_attack(det.reformer(), 0.3, "linf", 0, 1.0,
                                                   lambda: x)
    assert name == "detector-aware-pgd" and isinstance(atk, DetectorAwarePGD)
    assert atk.tau == metrics.calibrate_threshold(det.score(x), results.DETECTION_FPR)
    res = atk(surrogate, x[:8], y[:8])
    assert torch.equal(res.info["evaded"], res.success & (det.score(res.x_adv) <= atk.tau))
