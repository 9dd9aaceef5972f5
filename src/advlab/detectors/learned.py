"""What supervised detectors share: adversarial training data and a small learned classifier.

Feature distance spaces, LID and Mahalanobis map an input to a few numbers (distances to class
centroids, local intrinsic dimensionalities, Mahalanobis confidences) and learn, from clean and
adversarial examples, which numbers mean "adversarial". Here live the default attacks that make
those examples, and the seeded logistic regression / small MLP that learns the rule.
"""
from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from advlab import optim
from advlab.attacks.base import Attack
from advlab.attacks.gradient import BIM, FGSM, PGD
from advlab.detectors.detector import Detector, Model
from advlab.errors import InputError


def default_attacks() -> list[Attack]:
    """FGSM and PGD at eps=0.3 (high confidence, far from the boundary) and an early-stopped
    BIM with small steps (minimal, low confidence, like C&W and L-BFGS examples)."""
    return [FGSM(eps=0.3), PGD(eps=0.3, steps=20), BIM(eps=0.3, steps=100, alpha=0.005)]


def craft(model: nn.Module, x: Tensor, y: Tensor, attacks: Sequence[Attack], n: int,
          generator: torch.Generator) -> Tensor:
    """Adversarial examples for training a detector: n inputs drawn from x (without
    replacement, by ``generator``), split in equal parts, one per attack; only the successful
    ones are kept.

    Returns:
        M x C x H x W successful adversarial images (M <= N).
    """
    if not attacks:
        raise InputError("need at least one attack to craft adversarial training examples")
    idx = torch.randperm(len(x), generator=generator, device=generator.device)[:n].to(x.device)
    x, y = x[idx], y[idx]
    out = []
    for xs, ys, atk in zip(x.chunk(len(attacks)), y.chunk(len(attacks)), attacks):
        res = atk(model, xs, ys)
        out.append(res.x_adv[res.success])
    x_adv = torch.cat(out)
    if len(x_adv) < 2:
        raise InputError("the attacks found fewer than 2 adversarial examples to learn from")
    return x_adv


class BinaryClassifier(nn.Module):
    """Standardise features, then a linear layer (logistic regression) or a one-hidden-layer
    MLP; outputs the logit of "adversarial" (N,).

    Args:
        mean, std: feature standardisation (D,).
        hidden: 0 for logistic regression, else the MLP's hidden width.
        generator: draws the initial weights (no global RNG).
    """

    def __init__(self, mean: Tensor, std: Tensor, hidden: int,
                 generator: torch.Generator) -> None:
        super().__init__()
        d = len(mean)
        self.register_buffer("mean", mean)
        self.register_buffer("std", std)
        widths = [d, hidden, 1] if hidden else [d, 1]
        layers: list[nn.Module] = []
        for i, (a, b) in enumerate(zip(widths[:-1], widths[1:])):
            lin = nn.utils.skip_init(nn.Linear, a, b).to(mean)  # no global RNG
            with torch.no_grad():
                lin.weight.copy_(torch.randn(b, a, generator=generator,
                                             device=generator.device).to(mean) / math.sqrt(a))
                lin.bias.zero_()
            layers.append(lin)
            if i < len(widths) - 2:
                layers.append(nn.ReLU())
        self.net = nn.Sequential(*layers)
        self.eval()

    def forward(self, f: Tensor) -> Tensor:
        return self.net((f - self.mean) / self.std).squeeze(1)


def train_binary(clean: Tensor, adv: Tensor, *, hidden: int = 0, epochs: int = 300,
                 lr: float = 0.05, weight_decay: float = 1e-4, seed: int = 0) -> BinaryClassifier:
    """Fit a :class:`BinaryClassifier` separating adversarial features (label 1) from clean
    ones (label 0) by full-batch Adam on the class-balanced logistic loss.

    Args:
        clean: Nc x D features of clean inputs.
        adv: Na x D features of adversarial inputs.
        hidden: 0 (logistic regression) or the MLP width.
        epochs: full-batch steps.
        seed: seeds the initial weights.

    Returns:
        the trained classifier, in eval mode, its parameters detached from training.
    """
    if clean.dim() != 2 or adv.dim() != 2 or clean.shape[1] != adv.shape[1]:
        raise InputError(f"features must be Nc x D and Na x D, got {tuple(clean.shape)}, "
                         f"{tuple(adv.shape)}")
    f = torch.cat([clean, adv]).detach()
    t = torch.cat([torch.zeros(len(clean)), torch.ones(len(adv))]).to(f)
    w = torch.where(t > 0, len(f) / (2.0 * len(adv)), len(f) / (2.0 * len(clean)))
    g = torch.Generator(device="cpu").manual_seed(seed)
    clf = BinaryClassifier(f.mean(0), f.std(0).clamp_min(1e-6), hidden, g)
    optim.fit(list(clf.parameters()),
              lambda s: F.binary_cross_entropy_with_logits(clf(f[s.idx]), t[s.idx],
                                                           weight=w[s.idx]),
              len(f), epochs=epochs, lr=lr, weight_decay=weight_decay)  # full batch
    for p in clf.parameters():
        p.requires_grad_(False)
    return clf.eval()


class LearnedDetector(Detector):
    """A detector that scores with ``classifier_`` on per-input features.

    Subclasses fit ``classifier_`` (with :func:`train_binary`) and implement
    ``_features_of(model, x)``, differentiable in x so that adaptive attacks can use it.
    """

    batch_size: int
    classifier_: nn.Module

    def _features_of(self, model: Model, x: Tensor) -> Tensor:
        raise NotImplementedError

    def features(self, x: Tensor, model: Model | None = None, *,
                 _checked: bool = False) -> Tensor:
        """The features the classifier reads, N x F, computed in batches without autograd."""
        fitted = model if _checked else self.check_model(model)
        if not _checked:
            self.check_inputs(x)
        with torch.no_grad():
            return torch.cat([self._features_of(fitted, b) for b in x.split(self.batch_size)])

    def _score(self, model: Model, x: Tensor, generator: torch.Generator) -> Tensor:
        return self.classifier_(self._features_of(model, x))

    def _score_torch(self, model: Model, x: Tensor, generator: torch.Generator) -> Tensor:
        return self.classifier_(self._features_of(model, x))
