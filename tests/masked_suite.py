"""A suite of gradient-masking defenses advlab never saw, each with a hand-made adaptive attack.

Every member is an ordinary ``nn.Module`` mapping [0, 1] images to logits, written the way
their papers' code is written (inline preprocessing, submodules, global randomness), around a
classifier ``base`` (the zoo's mnist-cnn in the tests and benchmarks). None of them carries an
``adaptive()`` method: the ladder (:mod:`advlab.evaluation.ladder`) must break them without
knowing them. Each member's ``reference`` is the adaptive attack a person who read the defense
would write (Athalye et al. 2018; Tramer et al. 2020): BPDA through the part they know is
non-differentiable, EOT over the randomness they know of, a soft kNN for a kNN vote, the
detector and the classifier attacked together. Its examples are judged on the real defense
with :func:`advlab.evaluation.ladder.judge`, like the ladder's.

Families (Athalye, Carlini & Wagner 2018, arXiv:1802.00420; Tramer, Carlini, Brendel &
Madry 2020, arXiv:2002.08347; Carlini et al.'s self-study course of breakable defenses):
vanishing gradients (saturated softmax, steep sigmoid), shattered gradients (bit depth,
thermometer code, quantised activations, the same with a binarised input written inline in
forward, argmax one-hot), randomness (noise, random
translation, stochastic activation pruning, randomised discretisation), votes and
nearest-neighbour heads (majority vote over translations, kNN vote), input purification
(median purifier under no_grad), detectors (feature-squeezing detector with a reformer).

Imported by tests (``import masked_suite``) and by benchmarks/ladder_suite.py.
"""
from __future__ import annotations

import copy
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from advlab import attacks
from advlab.attacks.eot import eot
from advlab.evaluation.ladder import judge


def _ste(x: Tensor, fx: Tensor) -> Tensor:
    """fx forward, identity backward (the hand-written BPDA)."""
    return x + (fx - x).detach()


def _median3(x: Tensor) -> Tensor:
    p = F.pad(x, (1, 1, 1, 1), mode="replicate").unfold(2, 3, 1).unfold(3, 3, 1)
    return p.reshape(*x.shape, 9).median(-1).values


def _shift(x: Tensor, dx: int, dy: int) -> Tensor:
    """Translate by (dx, dy) pixels, zero fill."""
    h, w = x.shape[-2:]
    p = F.pad(x, (3, 3, 3, 3))
    return p[..., 3 - dy:3 - dy + h, 3 - dx:3 - dx + w]


# ----------------------------------------------------------------------------- the defenses


class SaturatedSoftmax(nn.Module):
    """Defensive distillation's failure mode: logits scaled by T = 1000 (log-softmax), so the
    cross-entropy's gradient is exactly 0 in float32 (Papernot et al. 2016, broken by Carlini
    & Wagner 2016, arXiv:1607.04311)."""

    def __init__(self, base: nn.Module, temperature: float = 1000.0) -> None:
        super().__init__()
        self.base, self.t = base, temperature

    def forward(self, x: Tensor) -> Tensor:
        return (self.base(x) * self.t).log_softmax(1)


class SteepSigmoid(nn.Module):
    """A steep sigmoid 'contrast' preprocessing: sigmoid(200 (x - 0.5)), whose derivative
    underflows to 0 away from 0.5 (vanishing gradients, Athalye et al. 2018, Section 3)."""

    def __init__(self, base: nn.Module) -> None:
        super().__init__()
        self.base = base

    def forward(self, x: Tensor) -> Tensor:
        return self.base(torch.sigmoid(200 * (x - 0.5)))


class BitDepth(nn.Module):
    """Bit-depth reduction inline in forward (Xu et al. 2018, feature squeezing; Guo et al.
    2018): round(x (2^b - 1)) / (2^b - 1)."""

    def __init__(self, base: nn.Module, bits: int = 2) -> None:
        super().__init__()
        self.base, self.levels = base, 2 ** bits - 1

    def forward(self, x: Tensor) -> Tensor:
        return self.base(torch.round(x * self.levels) / self.levels)


class ThermometerEncode(nn.Module):
    """Thermometer code (Buckman et al. 2018): channel k is 1[x > k / L], k = 0..L-1."""

    def __init__(self, levels: int = 16) -> None:
        super().__init__()
        self.register_buffer("edges", torch.arange(levels).float() / levels)

    def forward(self, x: Tensor) -> Tensor:
        return (x[:, :, None] > self.edges[:, None, None]).float().flatten(1, 2)


class Thermometer(nn.Module):
    """Thermometer-encoded input, decoded by a fixed 1 x 1 convolution (the mean of the
    levels) for the classifier: a discretised input with a non-differentiable code."""

    def __init__(self, base: nn.Module, levels: int = 16) -> None:
        super().__init__()
        self.encode = ThermometerEncode(levels)
        self.decode = nn.Conv2d(levels, 1, 1, bias=False)
        with torch.no_grad():
            self.decode.weight.fill_(1.0 / levels)
        self.base = base

    def forward(self, x: Tensor) -> Tensor:
        return self.base(self.decode(self.encode(x)))


class Quantize(nn.Module):
    """floor(h q) / q: a quantised activation."""

    def __init__(self, q: float = 2.0) -> None:
        super().__init__()
        self.q = q

    def forward(self, h: Tensor) -> Tensor:
        return torch.floor(h * self.q) / self.q


def quantized_activations(base: nn.Sequential, q: float = 2.0) -> nn.Sequential:
    """The base network with its first ReLU's output quantised (shattered inside the net)."""
    net = copy.deepcopy(base)
    layers = list(net.named_children())
    i = next(k for k, (n, _) in enumerate(layers) if n.startswith("relu"))
    layers.insert(i + 1, ("quantize", Quantize(q)))
    return nn.Sequential(OrderedDict(layers))


class InlineQuantized(nn.Module):
    """The base network run layer by layer, its first ReLU's output quantised *inline*
    (``torch.floor`` in this forward, not a submodule), its input binarised inline
    (``(x > 0.5).float()``): nothing a submodule probe can see.

    Args:
        straight_through: the reference's BPDA by hand (the same steps, identity backward).
    """

    def __init__(self, base: nn.Sequential, q: float = 2.0, *,
                 straight_through: bool = False) -> None:
        super().__init__()
        self.layers = nn.ModuleList(base.children())
        self.q, self.ste = q, straight_through
        self.at = next(k for k, (n, _) in enumerate(base.named_children())
                       if n.startswith("relu"))

    def forward(self, x: Tensor) -> Tensor:
        b = (x > 0.5).float()
        h = _ste(x, b) if self.ste else b
        for k, layer in enumerate(self.layers):
            h = layer(h)
            if k == self.at:
                f = torch.floor(h * self.q) / self.q
                h = _ste(h, f) if self.ste else f
        return h


class ArgmaxOneHot(nn.Module):
    """Outputs 10 x one-hot(argmax): a hard-label head (shattered at the output)."""

    def __init__(self, base: nn.Module) -> None:
        super().__init__()
        self.base = base

    def forward(self, x: Tensor) -> Tensor:
        z = self.base(x)
        return 10.0 * F.one_hot(z.argmax(1), z.shape[1]).float()


class GaussianNoise(nn.Module):
    """Random noise on the input at test time (random self-ensemble, Liu et al. 2018)."""

    def __init__(self, base: nn.Module, sigma: float = 0.25) -> None:
        super().__init__()
        self.base, self.sigma = base, sigma

    def forward(self, x: Tensor) -> Tensor:
        return self.base((x + self.sigma * torch.randn_like(x)).clamp(0, 1))


class RandomTranslate(nn.Module):
    """A random translation of up to 2 pixels per image (Xie et al. 2018's random
    resizing and padding, on 28 x 28 digits)."""

    def __init__(self, base: nn.Module, shift: int = 2) -> None:
        super().__init__()
        self.base, self.shift = base, shift

    def forward(self, x: Tensor) -> Tensor:
        n, s = len(x), self.shift
        d = torch.randint(-s, s + 1, (n, 2))
        moved = torch.stack([_shift(x[i:i + 1], int(d[i, 0]), int(d[i, 1]))[0]
                             for i in range(n)])
        return self.base(moved)


class SAP(nn.Module):
    """Stochastic activation pruning (Dhillon et al. 2018): keep activations sampled with
    probability proportional to their magnitude, rescale the kept ones."""

    def __init__(self, frac: float = 0.5) -> None:
        super().__init__()
        self.frac = frac

    def forward(self, h: Tensor) -> Tensor:
        flat = h.flatten(1)
        p = flat.abs() / flat.abs().sum(1, keepdim=True).clamp_min(1e-12)
        k = max(1, int(self.frac * flat.shape[1]))
        keep_p = 1 - (1 - p) ** k
        mask = torch.rand_like(flat) < keep_p
        return (flat * mask / keep_p.clamp_min(1e-12)).view_as(h)


def stochastic_pruning(base: nn.Sequential) -> nn.Sequential:
    """The base network with SAP after its first ReLU."""
    net = copy.deepcopy(base)
    layers = list(net.named_children())
    i = next(k for k, (n, _) in enumerate(layers) if n.startswith("relu"))
    layers.insert(i + 1, ("sap", SAP()))
    return nn.Sequential(OrderedDict(layers))


class RandomDiscretize(nn.Module):
    """Randomised discretisation (Zhang & Liang 2019): Gaussian noise, then rounding to a
    few levels (random and shattered)."""

    def __init__(self, sigma: float = 0.1, levels: int = 3) -> None:
        super().__init__()
        self.sigma, self.levels = sigma, levels

    def forward(self, x: Tensor) -> Tensor:
        noisy = (x + self.sigma * torch.randn_like(x)).clamp(0, 1)
        return torch.round(noisy * self.levels) / self.levels


class MajorityVote(nn.Module):
    """Votes of the base model's top-1 over 9 translations (a transformation ensemble with
    a hard vote)."""

    def __init__(self, base: nn.Module) -> None:
        super().__init__()
        self.base = base
        self.shifts = [(dx, dy) for dx in (-1, 0, 1) for dy in (-1, 0, 1)]

    def forward(self, x: Tensor) -> Tensor:
        votes = 0
        for dx, dy in self.shifts:
            z = self.base(_shift(x, dx, dy))
            votes = votes + F.one_hot(z.argmax(1), z.shape[1]).float()
        return votes


class KNNVote(nn.Module):
    """A k-nearest-neighbour vote over the base network's penultimate features of the
    training set (Papernot & McDaniel's deep kNN, Sitawarin & Wagner's kNN defenses):
    logits = the k neighbours' label counts."""

    def __init__(self, features: nn.Module, x_train: Tensor, y_train: Tensor, k: int = 25,
                 classes: int = 10) -> None:
        super().__init__()
        self.features, self.k, self.classes = features, k, classes
        with torch.no_grad():
            bank = torch.cat([features(x_train[i:i + 500]) for i in range(0, len(x_train), 500)])
        self.register_buffer("bank", bank)
        self.register_buffer("labels", y_train.clone())

    def forward(self, x: Tensor) -> Tensor:
        d = torch.cdist(self.features(x), self.bank)
        idx = d.topk(self.k, largest=False).indices
        return F.one_hot(self.labels[idx], self.classes).float().sum(1)


class Purify(nn.Module):
    """Three median-filter passes computed under no_grad (a purifier that 'projects' the
    input, Defense-GAN / PixelDefend style, detached from the graph)."""

    def forward(self, x: Tensor) -> Tensor:
        with torch.no_grad():
            for _ in range(3):
                x = _median3(x)
        return x


class Purified(nn.Module):
    """Purify, then classify."""

    def __init__(self, base: nn.Module) -> None:
        super().__init__()
        self.purify, self.base = Purify(), base

    def forward(self, x: Tensor) -> Tensor:
        return self.base(self.purify(x))


class DetectAndReform(nn.Module):
    """Feature-squeezing detector (Xu et al. 2018) with a reformer (MagNet, Meng & Chen
    2017): when the L1 distance between the softmax on x and on its 1-bit squeeze exceeds a
    threshold (5% of clean training images flagged), the prediction is the one on the
    squeezed and median-filtered input."""

    def __init__(self, base: nn.Module, x_train: Tensor) -> None:
        super().__init__()
        self.base = base
        with torch.no_grad():
            s = torch.cat([self._score(x_train[i:i + 500])[0]
                           for i in range(0, len(x_train), 500)])
        self.tau = float(s.quantile(0.95))

    def _score(self, x: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        z, zs = self.base(x), self.base(torch.round(x))
        return (z.softmax(1) - zs.softmax(1)).abs().sum(1), z, zs

    def forward(self, x: Tensor) -> Tensor:
        score, z, _ = self._score(x)
        reformed = self.base(_median3(torch.round(x)))
        return torch.where((score > self.tau)[:, None], reformed, z)


# ----------------------------------------------------------------------------- references


def _apgd(eps: float, steps: int, samples: int | None, seed: int) -> list[attacks.Attack]:
    out = []
    for loss in ("ce", "dlr"):
        a = attacks.get(f"apgd-{loss}", eps=eps, steps=steps, seed=seed,
                        early_stop=samples is None)
        out.append(a if samples is None else eot(a, transform=[], samples=samples))
    return out


def worst_case(defense: nn.Module, surrogates: list[nn.Module], x: Tensor, y: Tensor,
               eps: float, *, steps: int = 100, samples: int | None = None, draws: int = 1,
               seed: int = 0) -> Tensor:
    """APGD-CE and APGD-DLR (with EOT over ``samples`` draws when given) on each
    surrogate, every example judged on the defense; the per-example worst case."""
    x_adv, fooled = x.clone(), torch.zeros(len(x), dtype=torch.bool)
    for sur in surrogates:
        for atk in _apgd(eps, steps, samples, seed):
            idx = (~fooled).nonzero().flatten()
            if len(idx) == 0:
                return x_adv
            xa = atk(sur, x[idx], y[idx]).x_adv
            won = judge(defense, xa, y[idx], draws)
            x_adv[idx[won]], fooled[idx[won]] = xa[won], True
    return x_adv


class _Lambda(nn.Module):
    def __init__(self, fn: Callable[[Tensor], Tensor]) -> None:
        super().__init__()
        self.fn = fn

    def forward(self, x: Tensor) -> Tensor:
        return self.fn(x)


class SoftKNN(nn.Module):
    """The reference's differentiable kNN: class scores logsumexp(-d^2 / T) over the class's
    training features."""

    def __init__(self, knn: KNNVote, temperature: float = 1.0) -> None:
        super().__init__()
        self.knn, self.t = knn, temperature

    def forward(self, x: Tensor) -> Tensor:
        d2 = torch.cdist(self.knn.features(x), self.knn.bank) ** 2
        s = -d2 / (self.t * d2.detach().min(1, keepdim=True).values.clamp_min(1e-6))
        out = torch.full((len(x), self.knn.classes), -1e4, dtype=x.dtype)
        for c in range(self.knn.classes):
            sel = self.knn.labels == c
            if sel.any():
                out[:, c] = s[:, sel].logsumexp(1)
        return out


@dataclass
class Member:
    """One suite defense.

    Attributes:
        name: short name.
        family: vanishing, shattered, randomness, votes, purification or detector.
        model: the defense (an ordinary nn.Module).
        reference: (x, y, eps) -> x_adv, the hand-made adaptive attack.
        randomized: whether its predictions are random (judge by the majority of draws).
        source: where the defense (or its failure) comes from.
    """

    name: str
    family: str
    model: nn.Module
    reference: Callable[[Tensor, Tensor, float], Tensor]
    randomized: bool
    source: str

    @property
    def draws(self) -> int:
        return 5 if self.randomized else 1


def correct(m: Member, x: Tensor, y: Tensor, n: int) -> tuple[Tensor, Tensor]:
    """The first ``n`` images (and labels) that member ``m`` classifies correctly."""
    ok = ~judge(m.model, x, y, m.draws)
    return x[ok][:n], y[ok][:n]


def build(base: nn.Sequential, x_train: Tensor, y_train: Tensor, *, steps: int = 100,
          eot_samples: int = 10) -> list[Member]:
    """The suite around ``base`` (an nn.Sequential classifier, e.g. zoo mnist-cnn) with the
    training set for the kNN bank and the detector's threshold.

    Args:
        steps: APGD iterations of the references.
        eot_samples: EOT draws per gradient step of the randomised members' references.
    """
    features = nn.Sequential(*list(base.children())[:-1])
    ref = lambda d, surs, samples=None: (  # noqa: E731
        lambda x, y, eps: worst_case(d, surs, x, y, eps, steps=steps, samples=samples,
                                     draws=5 if samples else 1))
    ste_round = lambda levels: _Lambda(lambda x: _ste(x, torch.round(x * levels) / levels))  # noqa: E731,E501

    out = []

    def add(name: str, family: str, model: nn.Module, surs: list[nn.Module],
            randomized: bool, source: str,
            reference: Callable[[Tensor, Tensor, float], Tensor] | None = None) -> None:
        model.eval()
        for s in surs:
            s.eval()
        out.append(Member(name, family, model,
                          reference or ref(model, surs, eot_samples if randomized else None),
                          randomized, source))

    add("saturated-softmax", "vanishing", SaturatedSoftmax(base), [base], False,
        "Papernot et al. 2016 (distillation); Carlini & Wagner, arXiv:1607.04311")
    add("steep-sigmoid", "vanishing", SteepSigmoid(base),
        [_Lambda(lambda x: base(_ste(x, torch.sigmoid(200 * (x - 0.5)))))], False,
        "Athalye et al., arXiv:1802.00420, Section 3 (vanishing gradients)")
    add("bit-depth-2", "shattered", BitDepth(base, 2),
        [nn.Sequential(ste_round(3), base)], False,
        "Xu et al., arXiv:1704.01155; Guo et al., arXiv:1711.00117")
    th = Thermometer(base)
    add("thermometer-16", "shattered", th,
        [_Lambda(lambda x: base(_ste(x, th.decode(th.encode(x)))))], False,
        "Buckman et al., ICLR 2018; broken in Athalye et al., arXiv:1802.00420")
    qa = quantized_activations(base)
    qa_ste = copy.deepcopy(qa)
    qa_ste.quantize = _Lambda(lambda h: _ste(h, torch.floor(h * 2) / 2))
    add("quantized-activations", "shattered", qa, [qa_ste], False,
        "Athalye et al., arXiv:1802.00420 (shattered gradients)")
    add("inline-quantized", "shattered", InlineQuantized(base),
        [InlineQuantized(base, straight_through=True)], False,
        "Xu et al., arXiv:1704.01155 (binarised input); Athalye et al., arXiv:1802.00420 "
        "(shattered gradients), the steps inline in forward")
    add("argmax-one-hot", "shattered", ArgmaxOneHot(base), [base], False,
        "Carlini et al., arXiv:1902.06705 (hard-label outputs)")
    add("gaussian-noise", "randomness", GaussianNoise(base),
        [GaussianNoise(base)], True, "Liu et al. 2018 (random self-ensemble)")
    add("random-translate", "randomness", RandomTranslate(base), [RandomTranslate(base)],
        True, "Xie et al., arXiv:1711.01991; broken in Athalye et al. 2018")
    sap = stochastic_pruning(base)
    add("stochastic-pruning", "randomness", sap, [sap], True,
        "Dhillon et al., arXiv:1803.01442; broken in Athalye et al. 2018")
    rd = nn.Sequential(RandomDiscretize(), base)
    rd_ste = _Lambda(lambda x: base(_ste(x, RandomDiscretize()(x))))
    add("random-discretize", "randomness", rd, [rd_ste], True,
        "Zhang & Liang, arXiv:1903.10586 (randomised discretisation)")
    mv = MajorityVote(base)
    add("majority-vote", "votes", mv,
        [_Lambda(lambda x: torch.stack([base(_shift(x, dx, dy)).log_softmax(1)
                                        for dx, dy in mv.shifts]).mean(0))], False,
        "transformation ensembles with a hard vote; Tramer et al., arXiv:2002.08347")
    knn = KNNVote(features, x_train, y_train)
    add("knn-vote", "votes", knn, [SoftKNN(knn), SoftKNN(knn, 0.1)], False,
        "Papernot & McDaniel, arXiv:1803.04765; Sitawarin & Wagner, arXiv:1903.08333")
    add("median-purifier", "purification", Purified(base),
        [_Lambda(lambda x: base(_ste(x, Purify()(x))))], False,
        "Defense-GAN / PixelDefend style purification; BPDA, Athalye et al. 2018")
    dr = DetectAndReform(base, x_train)
    both = _Lambda(lambda x: base(x).log_softmax(1)
                   + base(_median3(_ste(x, torch.round(x)))).log_softmax(1))
    add("squeeze-detector", "detector", dr, [both], False,
        "Xu et al., arXiv:1704.01155 (detector) + MagNet reformer; He et al., "
        "arXiv:1706.04701 (adaptive)")
    return out
