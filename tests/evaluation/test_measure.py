"""advlab.evaluation.measure: one cell's numbers; bf16 cells judged in fp32, batch_size = "auto"."""
from __future__ import annotations

import logging

import numpy as np
import pytest
import torch
from torch import nn

from advlab import attacks, zoo
from advlab.evaluation.measure import CellPlan
from advlab.evaluation.measure import measure as evaluate


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
