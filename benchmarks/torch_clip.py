"""The minimum-norm attacks on the torch this runs on: the figures that torch 2.14's clamp
gradient moved (C&W L2, C&W Linf, L-BFGS), and torch's own clamp gradient at the boundary.

    python benchmarks/torch_clip.py            # run it once per installed torch, compare

mnist-mlp, the first 40 correctly classified test images of mnist5k, default settings; L-BFGS
aims at the class DeepFool reaches (as in tests/attacks/test_lbfgs.py).
"""
from __future__ import annotations

import torch

import advlab
from advlab.attacks import LBFGS, CarliniWagnerL2, CarliniWagnerLinf, DeepFool


def main() -> None:
    torch.set_num_threads(1)
    v = torch.tensor([0.0, 0.5, 1.0], requires_grad=True)
    (g,) = torch.autograd.grad(v.clamp(0, 1).sum(), v)
    (c,) = torch.autograd.grad(advlab.threat.clip_box(v).sum(), v)
    print(f"torch {torch.__version__}: clamp grad at [0, .5, 1] = {g.tolist()}, "
          f"advlab clip_box grad = {c.tolist()}")
    model = advlab.zoo.load("mnist-mlp")
    x, y = advlab.data.load("mnist5k", split="test")
    with torch.no_grad():
        ok = model(x).argmax(1) == y
    x, y = x[ok][:40], y[ok][:40]
    df = DeepFool()(model, x, y)
    rows = {
        "cw-l2 median L2": (CarliniWagnerL2()(model, x, y), "l2"),
        "cw-linf median Linf": (CarliniWagnerLinf()(model, x, y), "linf"),
        "lbfgs median L2 (target: DeepFool's class)":
            (LBFGS()(model, x, y, target=df.logits.argmax(1)), "l2"),
        "deepfool median L2": (df, "l2"),
    }
    for name, (res, norm) in rows.items():
        print(f"{name:45s} {res.norms[norm].median().item():.4f}  "
              f"success {res.success.float().mean().item():.1%}")


if __name__ == "__main__":
    main()
