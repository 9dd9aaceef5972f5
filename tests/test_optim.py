"""advlab.optim: the minibatch fit (equal to a hand-written loop, resumable) and RowAdam
(equal to torch.optim.Adam row by row)."""
from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from advlab import optim
from advlab.errors import InputError, ModelFileError


def _data() -> tuple[Tensor, Tensor]:
    g = torch.Generator().manual_seed(0)
    return torch.randn(50, 4, generator=g), torch.randint(0, 3, (50,), generator=g)


def _net() -> nn.Module:
    torch_g = torch.Generator().manual_seed(1)
    net = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Dropout(0.2), nn.Linear(8, 3))
    with torch.no_grad():
        for p in net.parameters():
            p.copy_(torch.randn(p.shape, generator=torch_g) * 0.3)
    return net


def _fit(net: nn.Module, x: Tensor, y: Tensor, **kw) -> torch.optim.Optimizer:  # noqa: ANN003
    return optim.fit(net, lambda s: F.cross_entropy(net(x[s.idx]), y[s.idx]), len(x),
                     **{"epochs": 3, "lr": 0.05, "batch_size": 16, "schedule": "cosine",
                        "global_seed": 0, **kw, "generator": torch.Generator().manual_seed(2)})


def test_fit_equals_the_hand_written_loop() -> None:
    x, y = _data()
    ref = _net()
    opt = torch.optim.Adam(ref.parameters(), lr=0.05)
    g = torch.Generator().manual_seed(2)
    steps = 3 * math.ceil(50 / 16)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        t = 0
        for _ in range(3):
            ref.train()
            for idx in torch.randperm(50, generator=g).split(16):
                for group in opt.param_groups:
                    group["lr"] = 0.05 * 0.5 * (1 + math.cos(math.pi * t / steps))
                loss = F.cross_entropy(ref(x[idx]), y[idx])
                opt.zero_grad()
                loss.backward()
                opt.step()
                t += 1
    net = _net()
    state = torch.get_rng_state()
    _fit(net, x, y)
    assert torch.equal(torch.get_rng_state(), state)  # the global RNG is untouched
    assert not net.training and all(p.grad is None for p in net.parameters())
    for a, b in zip(net.parameters(), ref.parameters()):
        assert torch.equal(a, b)


def test_fit_resumes_from_its_checkpoint(tmp_path: Path) -> None:
    x, y = _data()
    whole = _net()
    _fit(whole, x, y)
    ck = optim.Checkpoint(tmp_path / "ck.safetensors", {"run": "a"})
    part = _net()
    _fit(part, x, y, on_epoch=lambda e: e.epoch == 2, checkpoint=ck)  # interrupted
    resumed = _net()
    _fit(resumed, x, y, checkpoint=ck)
    for a, b in zip(whole.parameters(), resumed.parameters()):
        assert torch.equal(a, b)
    with pytest.raises(ModelFileError, match="another run"):
        _fit(_net(), x, y, checkpoint=optim.Checkpoint(ck.path, {"run": "b"}))


def test_fit_full_batch_and_errors() -> None:
    w = torch.zeros(3, requires_grad=True)
    target = torch.tensor([1.0, -2.0, 3.0])
    seen = []
    optim.fit([w], lambda s: (w - target).pow(2).sum(), 1, epochs=300, lr=0.1,
              on_batch=lambda s, loss, sec: seen.append(len(s.idx)))
    assert torch.allclose(w, target, atol=1e-3) and set(seen) == {1} and w.grad is None
    with pytest.raises(InputError, match="generator"):
        optim.fit([w], lambda s: w.sum(), 4, epochs=1, lr=0.1, batch_size=2)
    with pytest.raises(InputError, match="schedule"):
        optim.fit([w], lambda s: w.sum(), 4, epochs=1, lr=0.1, schedule="warp")
    with pytest.raises(InputError, match="optimizer"):
        optim.fit([w], lambda s: w.sum(), 4, epochs=1, lr=0.1, optimizer="lion")


def test_row_adam_equals_torch_adam_per_row() -> None:
    g = torch.Generator().manual_seed(0)
    w0 = torch.randn(3, 5, generator=g, dtype=torch.float64)
    grads = [torch.randn(3, 5, generator=g, dtype=torch.float64) for _ in range(6)]
    ours = optim.RowAdam.like(w0, 0.1)
    w = w0.clone()
    live = [torch.tensor([0, 1, 2])] * 3 + [torch.tensor([0, 2])] * 3  # row 1 leaves
    for gr, idx in zip(grads, live):
        w[idx] = ours.step(w[idx], gr[idx], idx)
    for r in range(3):
        p = w0[r].clone().requires_grad_(True)
        ref = torch.optim.Adam([p], lr=0.1)
        for gr, idx in zip(grads, live):
            if r in idx.tolist():
                p.grad = gr[r].clone()
                ref.step()
        assert torch.allclose(w[r], p.detach(), rtol=0, atol=1e-12)
    ours.reset(torch.tensor([0]))
    assert ours.t[0].item() == 0 and (ours.m[0] == 0).all() and ours.t[2].item() == 6


def test_row_adam_per_entry_counts_each_coordinate() -> None:
    w = torch.zeros(2, 4)
    opt = optim.RowAdam.like(w, 0.5, per_entry=True)
    r, c = torch.tensor([0, 1]), torch.tensor([3, 0])
    w[r, c] = opt.step(w[r, c], torch.tensor([1.0, -1.0]), (r, c))
    assert opt.t.sum().item() == 2 and opt.t[0, 3] == 1 and opt.t[1, 0] == 1
    assert torch.allclose(w[r, c], torch.tensor([-0.5, 0.5]))  # first Adam step: lr * sign
