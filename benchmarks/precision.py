"""Mixed precision: what bf16 (or fp16) autocast does to attack strength and time.

    python benchmarks/precision.py [--n 500] [--device cpu] [--precisions fp32 bf16]
                                   [--model mnist-cnn] [--batch 500] [--throughput]

PGD-40 and APGD-CE at L-inf eps 0.1 and 0.3 on the first ``n`` mnist5k test images, the
attack's forward and backward under ``torch.autocast`` (advlab.models.autocast), every
returned image judged on the fp32 model (as ``advlab run`` does with ``precision``). Prints
robust accuracy per precision, the number of images whose outcome differs from fp32, and the
time ratio to fp32 measured in this process (the precisions of a row run back to back).

``--throughput``: PGD-40 images x steps per second at ``--batch`` with early stopping off, on
mnist-cnn and, when torchvision is installed, an untrained torchvision ResNet-18 (3 x 32 x 32,
10 classes; speed only).
"""
from __future__ import annotations

import argparse
import time

import torch
from torch import nn

import advlab
from advlab.evaluation.measure import CellPlan
from advlab.evaluation.measure import measure as evaluate


def strength(model: nn.Module, x: torch.Tensor, y: torch.Tensor, precisions: list[str],
             batch: int) -> None:
    print(f"{'attack':10} {'eps':>4} " + " ".join(f"{p:>14}" for p in precisions)
          + "  differ  time ratio to fp32")
    for name, kw in (("pgd", {"steps": 40}), ("apgd-ce", {})):
        for eps in (0.1, 0.3):
            accs, times, succ = [], [], []
            for p in precisions:
                plan = CellPlan(advlab.attacks.get(name, eps=eps, seed=0, **kw), shifts=(),
                                noise=(), gallery=0, batch_size=batch, precision=p)
                t0 = time.perf_counter()
                rec = evaluate(plan, model, x, y)
                times.append(time.perf_counter() - t0)
                right = rec.examples["adv_pred"] == rec.examples["label"]
                accs.append(right.mean())
                succ.append(right)
            differ = [int((s != succ[0]).sum()) for s in succ[1:]]
            print(f"{name:10} {eps:4.1f} " + " ".join(f"{100 * a:13.1f}%" for a in accs)
                  + f"  {differ}  " + " ".join(f"{t / times[0]:.2f}" for t in times[1:])
                  + f"  (fp32 {times[0]:.1f} s)")


def throughput(model: nn.Module, x: torch.Tensor, y: torch.Tensor, precisions: list[str],
               label: str, rounds: int = 3) -> None:
    """PGD-40 without early stopping, the precisions in interleaved rounds (best round kept,
    so the load of other processes falls on all of them alike)."""
    atk = advlab.attacks.PGD(eps=0.1, steps=40, early_stop=False, seed=0)
    nets = {p: advlab.models.autocast(model, p) for p in precisions}
    best = dict.fromkeys(precisions, float("inf"))
    for p in precisions:
        atk(nets[p], x[:8], y[:8])  # warm-up
    for _ in range(rounds):
        for p in precisions:
            if x.is_cuda:
                torch.cuda.synchronize()
            t0 = time.perf_counter()
            atk(nets[p], x, y)
            if x.is_cuda:
                torch.cuda.synchronize()
            best[p] = min(best[p], time.perf_counter() - t0)
    for p in precisions:
        print(f"{label:12} {p}: PGD-40 batch {len(x)}: {len(x) * 40 / best[p]:,.0f} "
              f"images x steps / s ({best[p]:.2f} s, best of {rounds}; "
              f"{best[p] / best[precisions[0]]:.2f} x {precisions[0]})")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=500)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--model", default="mnist-cnn")
    ap.add_argument("--batch", type=int, default=500)
    ap.add_argument("--precisions", nargs="+", default=["fp32", "bf16"])
    ap.add_argument("--throughput", action="store_true")
    ap.add_argument("--threads", type=int, default=None)
    a = ap.parse_args()
    if a.threads:
        torch.set_num_threads(a.threads)
    dev = torch.device(a.device)
    x, y = advlab.data.load("mnist5k", "test", n=a.n)
    x, y = x.to(dev), y.to(dev)
    model = advlab.zoo.load(a.model, device=dev)
    print(f"{a.model} on {dev} ({torch.cuda.get_device_name(dev) if dev.type == 'cuda' else ''}"
          f"), torch {torch.__version__}, {len(x)} mnist5k test images, "
          f"{torch.get_num_threads()} thread(s)")
    if a.throughput:
        xb, yb = x[:a.batch].repeat(-(-a.batch // len(x)), 1, 1, 1)[:a.batch], \
            y.repeat(-(-a.batch // len(x)))[:a.batch]
        throughput(model, xb, yb, a.precisions, a.model)
        try:
            import torchvision
        except ImportError:
            print("torchvision not installed: no ResNet-18 row")
        else:
            net = torchvision.models.resnet18(num_classes=10).to(dev).eval()
            xr = torch.rand(a.batch, 3, 32, 32, device=dev,
                            generator=torch.Generator(device=dev).manual_seed(0))
            throughput(net, xr, yb, a.precisions, "resnet18")
        return
    strength(model, x, y, a.precisions, a.batch)


if __name__ == "__main__":
    main()
