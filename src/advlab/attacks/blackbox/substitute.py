r"""Substitute-model attack: learn a copy of the oracle from its labels, attack the copy.

Papernot et al.'s practical black-box attack. From a small seed set :math:`S_0` labelled by the
oracle :math:`\tilde O`, repeat for :math:`\rho = 0, \dots, \rho_{max}`:

1. label the new points of :math:`S_\rho` with the oracle (one query each);
2. train the substitute F on :math:`\{(x, \tilde O(x)) : x \in S_\rho\}`;
3. *Jacobian-based data augmentation*:

   .. math::  S_{\rho+1} = S_\rho \cup \{ x + \lambda_\rho \,
              \mathrm{sign}\big(J_F(x)[\tilde O(x)]\big) : x \in S_\rho \}

   (new points step along the substitute's sensitivity to the oracle's label, i.e. toward
   its decision boundaries), with the periodic step :math:`\lambda_\rho = \lambda
   (-1)^{\lfloor \rho / \tau \rfloor}` and, after :math:`\sigma` rounds, *reservoir
   sampling*: only :math:`\kappa` uniformly drawn points of :math:`S_\rho` are augmented.

Then any white-box attack (FGSM with eps 0.3 by default, as in the paper) runs on F, and its
examples are *transferred* to the oracle. The oracle answers labels only and every label is
charged to an example of the batch: a point derived from seed image j is charged to example
j mod N (to example j itself when the batch is the seed set).
"""
from __future__ import annotations

import functools
import logging
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from advlab import optim
from advlab.attacks.base import Attack, Crafted, Model, get, register
from advlab.attacks.blackbox.oracle import BlackBoxAttack, Oracle, as_oracle
from advlab.attacks.settings import Settings, at_least, one_of, positive
from advlab.errors import AttackError, InputError, ThreatModelError
from advlab.threat import broadcast_rows, clip_box
from advlab.validation import check_images

log = logging.getLogger(__name__)

ARCHS = ("auto", "cnn", "mlp")


# ----------------------------------------------------------------------------- the network


def _init_(layer: nn.Conv2d | nn.Linear, generator: torch.Generator) -> None:
    """He-uniform weights and zero biases drawn from ``generator`` (global RNG untouched)."""
    fan_in = layer.weight[0].numel()
    bound = math.sqrt(6.0 / fan_in)
    with torch.no_grad():
        u = torch.rand(layer.weight.shape, generator=generator, device=layer.weight.device,
                       dtype=layer.weight.dtype)
        layer.weight.copy_((2 * u - 1) * bound)
        layer.bias.zero_()


def substitute_net(shape: tuple[int, ...], num_classes: int, generator: torch.Generator,
                   arch: str = "auto", width: int = 32,
                   like: Tensor | None = None) -> nn.Sequential:
    """A small substitute built from the input shape C x H x W.

    "cnn": conv(C, w, 3)-ReLU-maxpool-conv(w, 2w, 3)-ReLU-maxpool-fc(., 4w)-ReLU-fc(4w, K)
    (padding 1, so any H, W >= 4 works); "mlp": fc(CHW, 4w)-ReLU-fc(4w, 4w)-ReLU-fc(4w, K);
    "auto": the CNN when H, W >= 4. Weights are drawn from ``generator`` (the global RNG is
    left as it was).
    """
    if arch not in ARCHS:
        raise ThreatModelError(f"unknown substitute arch {arch!r}; use {', '.join(ARCHS)}")
    c, h, w = shape
    if arch == "auto":
        arch = "cnn" if min(h, w) >= 4 else "mlp"
    with torch.random.fork_rng(devices=[]):  # PyTorch's default init draws from the global
        if arch == "cnn":                     # RNG: restored here, then re-initialised below
            flat = 2 * width * (h // 4) * (w // 4)
            layers: list[nn.Module] = [
                nn.Conv2d(c, width, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
                nn.Conv2d(width, 2 * width, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
                nn.Flatten(), nn.Linear(flat, 4 * width), nn.ReLU(),
                nn.Linear(4 * width, num_classes)]
        else:
            layers = [nn.Flatten(), nn.Linear(c * h * w, 4 * width), nn.ReLU(),
                      nn.Linear(4 * width, 4 * width), nn.ReLU(),
                      nn.Linear(4 * width, num_classes)]
    net = nn.Sequential(*layers)
    if like is not None:
        net = net.to(device=like.device, dtype=like.dtype)
    for m in net:
        if isinstance(m, (nn.Conv2d, nn.Linear)):
            _init_(m, generator)
    return net.eval()


class Ensemble(nn.Module):
    """Several substitutes trained on the same oracle labels; outputs the mean of their
    log-probabilities (a transfer attack on it fools all members at once).

    References: Liu, Chen, Liu & Song, "Delving into transferable adversarial examples and
    black-box attacks", ICLR 2017, arXiv:1611.02770.
    """

    def __init__(self, members: list[nn.Module]) -> None:
        super().__init__()
        self.members = nn.ModuleList(members)

    def forward(self, x: Tensor) -> Tensor:
        return torch.stack([m(x).log_softmax(1) for m in self.members]).mean(0)


def train_substitute(net: nn.Module, x: Tensor, labels: Tensor, *, epochs: int,
                     batch_size: int, lr: float, generator: torch.Generator,
                     weight_decay: float = 0.0, noise: float = 0.0,
                     optimizer: torch.optim.Optimizer | None = None) -> torch.optim.Optimizer:
    """Fit the substitute (in place) to the oracle's labels: Adam on cross-entropy
    (:func:`advlab.optim.fit`; ``optimizer`` warm-starts it across rounds, and is returned).

    ``weight_decay`` adds an L2 penalty; ``noise`` trains on inputs with Gaussian noise of
    that standard deviation (both smooth the substitute's input gradients, which makes its
    adversarial examples transfer better).
    """
    def batch_loss(s: optim.Step) -> Tensor:
        xb = x[s.idx]
        if noise > 0:
            xb = clip_box(xb + noise * torch.randn(xb.shape, generator=generator,
                                                   device=xb.device, dtype=xb.dtype))
        return F.cross_entropy(net(xb), labels[s.idx])

    return optim.fit(list(net.parameters()), batch_loss, len(x), epochs=epochs,
                     batch_size=batch_size, lr=lr, generator=generator,
                     weight_decay=weight_decay, optimizer=optimizer or "adam")


def jacobian_sign(net: nn.Module, x: Tensor, labels: Tensor, chunk: int = 1024) -> Tensor:
    r""":math:`\mathrm{sign}(J_F(x)[\tilde O(x)])`: the sign of the gradient of the substitute's
    logit of the oracle label, per row."""
    out = []
    with torch.enable_grad():
        for lo in range(0, len(x), chunk):
            xb = x[lo:lo + chunk].detach().requires_grad_(True)
            z = net(xb).gather(1, labels[lo:lo + chunk, None]).sum()
            (g,) = torch.autograd.grad(z, xb)
            out.append(g.sign())
    return torch.cat(out)


# ----------------------------------------------------------------------------- training loop


@dataclass
class Fitted:
    """A trained substitute and how it was obtained.

    Attributes:
        net: the substitute network (eval mode).
        x: the final substitute training set S (M x C x H x W).
        labels: the oracle's labels of S (M,).
        owner: the batch example each label was charged to (M,).
        labels_used: oracle labels spent in total.
        train_agreement: the substitute's agreement with the oracle on S.
    """

    net: nn.Module
    x: Tensor
    labels: Tensor
    owner: Tensor
    labels_used: int
    train_agreement: float


class SubstituteSettings(Settings):
    """The settings of :class:`SubstituteAttack` (its docstring): rounds >= 0; epochs,
    batch_size, the widths, tau, reservoir, max_queries, num_classes >= 1 (or None); lr,
    lam > 0; weight_decay, noise >= 0; one width per arch; image tensors for seed_x and
    holdout_x. The transfer attack is built here once, so an unknown name or setting of it
    fails when the substitute attack is built."""

    eps: float | None = None
    transfer_attack: str = "fgsm"
    transfer_kwargs: Mapping[str, Any] | None = None
    rounds: int = 6
    lam: float = 0.1
    tau: int | None = None
    reservoir: int | None = None
    reservoir_after: int = 3
    epochs: int = 10
    batch_size: int = 128
    lr: float = 1e-3
    weight_decay: float = 0.0
    noise: float = 0.0
    arch: str | Sequence[str] = "auto"
    width: int | Sequence[int] = 32
    seed_x: Tensor | None = None
    holdout_x: Tensor | None = None
    num_classes: int | None = None
    max_queries: int | None = None
    seed: int = 0

    def check(self) -> None:
        archs = (self.arch,) if isinstance(self.arch, str) else tuple(self.arch)
        widths = (self.width,) * len(archs) if isinstance(self.width, int) else tuple(self.width)
        if len(archs) == 0 or len(widths) != len(archs):
            raise ThreatModelError(f"need one width per substitute arch, got {archs}, {widths}")
        for a in archs:
            one_of("substitute arch", a, ARCHS)
        self.resolve("arch", archs)
        self.resolve("width", widths)
        at_least(0, rounds=self.rounds, weight_decay=self.weight_decay, noise=self.noise)
        at_least(1, epochs=self.epochs, batch_size=self.batch_size, width=min(widths),
                 tau=self.tau, reservoir=self.reservoir, max_queries=self.max_queries,
                 num_classes=self.num_classes)
        positive(lr=self.lr, lam=self.lam)
        for name, imgs in (("seed_x", self.seed_x), ("holdout_x", self.holdout_x)):
            if imgs is not None:
                check_images(imgs, name)
        self.resolve("transfer_kwargs", dict(self.transfer_kwargs or {}))
        self.transfer  # noqa: B018 (built, and so validated, once)

    @functools.cached_property
    def transfer(self) -> Attack:
        """The white-box attack run on the substitute: ``transfer_attack`` with
        ``transfer_kwargs``, and ``eps`` when given."""
        radius = {} if self.eps is None else {"eps": self.eps}
        return get(self.transfer_attack, **{**self.transfer_kwargs, **radius})


@register("substitute", knowledge="label", goal="both", norm="linf", kind="one-shot")
class SubstituteAttack(BlackBoxAttack):
    r"""Papernot et al.'s substitute attack: Jacobian augmentation, then transfer.

    Args:
        eps: radius handed to the transfer attack; default that attack's own (FGSM: 0.3).
        transfer_attack: the registered white-box attack run on the substitute, whose
            examples are transferred to the oracle (default "fgsm").
        transfer_kwargs: its settings (eps is the one above).
        rounds: substitute training rounds rho_max (6 in the paper: 150 * 2^6 = 9,600 labels).
        lam: augmentation step lambda (0.1).
        tau: period of the sign flips of lambda (None: a fixed lambda).
        reservoir: kappa, the number of points augmented per round after ``reservoir_after``
            (sigma) rounds (None: every point, the set doubles each round).
        reservoir_after: sigma.
        epochs, batch_size, lr: substitute training per round (Adam; warm-started across
            rounds).
        weight_decay, noise: smoothing of the substitute (L2 penalty; Gaussian input noise
            of this standard deviation during training); 0 in the paper.
        arch, width: the substitute network (see :func:`substitute_net`); several archs
            (with one width each) train an :class:`Ensemble` on the same labels, which
            transfers better at no extra query.
        seed_x: seed images S_0 (default: the attacked batch itself).
        holdout_x: images on which to report the substitute's agreement with the model
            (an evaluator's measurement, not charged as queries).
        num_classes: the oracle's number of classes; default: 1 + the largest label seen.
        max_queries: per-example budget; labels beyond it are not requested (None: no limit).
        seed: seeds the initialisation, shuffling and reservoir.

    The defaults are the paper's (6 rounds, one network, no smoothing; 10 epochs): they train
    on 64 x N labels for a batch of N, few enough for a default run on a few tiny images to be
    short.

    Recommended setting for MNIST-like data (28 x 28 grey digits, a budget of 10,000 labels):
    more seeds and fewer rounds, an MLP+CNN ensemble, and weight decay::

        atk = SubstituteAttack(seed_x=seeds[:1250], rounds=3, arch=("mlp", "cnn"),
                               width=(50, 16), weight_decay=1e-3)   # 1,250 x 2^3 = 10,000

    On mnist-cnn (FGSM eps 0.3 transferred to 850 mnist5k test images, seeds from the train
    split) this setting transfers about twice as often as the paper's (150 seeds, 6 rounds,
    9,600 labels, one CNN); the seeds and rounds and the weight decay each count, while one
    CNN with weight decay transfers about as often as the MLP+CNN ensemble, whose figure
    moves by several points with ``seed`` (``python benchmarks/blackbox_label.py --part sub
    --sub <settings>``, figures in benchmarks/results/blackbox_label-substitute.json).

    Shape: x N x C x H x W in [0, 1], y (N,). ``info``: "oracle_labels" (int),
    "train_agreement", "holdout_agreement" (when holdout_x), "transfer_success" (float,
    the fraction of the batch fooled, checked on the model by the evaluator).

    References: Papernot, McDaniel, Goodfellow, Jha, Celik & Swami, "Practical black-box
    attacks against machine learning", AsiaCCS 2017, arXiv:1602.02697.
    """

    Settings = SubstituteSettings
    access = "labels"

    @property
    def transfer(self) -> Attack:
        """The white-box attack run on the substitute."""
        return self.settings.transfer

    @property
    def eps(self) -> float | None:  # type: ignore[override]
        """The transfer attack's radius."""
        return self.transfer.eps

    @property
    def norm(self) -> str | None:  # type: ignore[override]
        """The transfer attack's norm."""
        return self.transfer.norm

    # -- (a) the substitute -----------------------------------------------------------------

    def fit(self, model: Model | Oracle, n: int, x: Tensor, y: Tensor | None = None,
            generator: torch.Generator | None = None,
            seed_labels: Tensor | None = None) -> Fitted:
        """Train a substitute from the oracle's labels by Jacobian-based augmentation.

        Args:
            model: the model or an Oracle (a model is wrapped in a label oracle); the oracle
                must have been ``reset(n)``, or is reset here when a model is given.
            n: the number of batch examples the labels are charged to.
            x: the seed images S_0.
            y: labels the caller knows (only to size the output layer).
            generator: the randomness (default: seeded with ``seed``).
            seed_labels: the oracle's labels of x when already queried (x is then the batch
                and label i was charged to example i).

        Returns:
            a :class:`Fitted` substitute.
        """
        if isinstance(model, Oracle):
            oracle = model
        else:
            oracle = as_oracle(model, "labels", self.max_queries)
            oracle.reset(n, x.device)
        if generator is None:
            generator = torch.Generator(device=x.device).manual_seed(self.seed)
        s_x = x.detach().clone()
        s_owner = torch.arange(len(s_x), device=x.device) % n
        if seed_labels is None:
            s_x, s_owner = _affordable(oracle, s_x, s_owner)
            if len(s_x) == 0:
                raise AttackError("the query budget does not cover a single seed label")
            s_lab = _labels(oracle, s_x, s_owner)
        else:
            s_lab = seed_labels
        k = self.num_classes or 1 + int(max(s_lab.max(), -1 if y is None else y.max()))
        shape = tuple(x.shape[1:])
        members = [substitute_net(shape, k, generator, a, w, like=x)
                   for a, w in zip(self.arch, self.width)]
        net = members[0] if len(members) == 1 else Ensemble(members).eval()
        opts: list[torch.optim.Optimizer | None] = [None] * len(members)
        for rho in range(self.rounds + 1):
            if int(s_lab.max()) >= k:  # a class the oracle had not shown before
                k = int(s_lab.max()) + 1
                opts = [_grow_head(m, k, generator, o) for m, o in zip(members, opts)]
            opts = [train_substitute(m, s_x, s_lab, epochs=self.epochs,
                                     batch_size=self.batch_size, lr=self.lr,
                                     generator=generator, weight_decay=self.weight_decay,
                                     noise=self.noise, optimizer=o)
                    for m, o in zip(members, opts)]
            if rho == self.rounds:
                break
            new_x, new_owner = self._augment(net, s_x, s_lab, s_owner, rho, generator)
            new_x, new_owner = _affordable(oracle, new_x, new_owner)
            if len(new_x) == 0:
                log.info("substitute: query budget spent after %d rounds", rho)
                break
            s_x, s_owner = torch.cat([s_x, new_x]), torch.cat([s_owner, new_owner])
            s_lab = torch.cat([s_lab, _labels(oracle, new_x, new_owner)])
            log.debug("substitute round %d: %d labelled points", rho + 1, len(s_x))
        agree = (_predict(net, s_x) == s_lab).float().mean().item()
        return Fitted(net, s_x, s_lab, s_owner, len(s_x), agree)

    def _augment(self, net: nn.Module, s_x: Tensor, s_lab: Tensor, s_owner: Tensor, rho: int,
                 generator: torch.Generator) -> tuple[Tensor, Tensor]:
        """Jacobian-based augmentation of S_rho (of a reservoir sample after sigma rounds)."""
        lam = self.lam if self.tau is None else self.lam * (-1) ** (rho // self.tau)
        pick = torch.arange(len(s_x), device=s_x.device)
        if self.reservoir is not None and rho >= self.reservoir_after \
                and len(s_x) > self.reservoir:
            pick = torch.randperm(len(s_x), generator=generator,
                                  device=s_x.device)[:self.reservoir]
        new = clip_box(s_x[pick] + lam * jacobian_sign(net, s_x[pick], s_lab[pick]))
        return new, s_owner[pick]

    # -- (b) the attack ---------------------------------------------------------------------

    def perturb(self, model: Model, x: Tensor, y: Tensor, target: Tensor | None,
                eps: Tensor | None, generator: torch.Generator) -> Crafted:
        # BlackBoxAttack.perturb is replaced: the result carries the substitute's statistics
        oracle = as_oracle(model, self.access, self.max_queries)
        oracle.reset(len(x), x.device)
        seed = x if self.seed_x is None else self.seed_x.to(x)
        if seed.shape[1:] != x.shape[1:]:
            raise InputError(f"seed_x images {tuple(seed.shape[1:])} differ from x's "
                             f"{tuple(x.shape[1:])}")
        clean = None
        if self.seed_x is None:  # S_0 is the batch: its labels also tell who is done already
            clean = _labels(oracle, x, torch.arange(len(x), device=x.device))
            done = clean != y if target is None else clean == target
            if done.all():
                return Crafted(x.clone(), queries=oracle.counts.clone(),
                               info={"budget_exhausted": oracle.exhausted(),
                                     "oracle_labels": len(x)})
        fitted = self.fit(oracle, len(x), seed, y if target is None else
                          torch.cat([y, target]), generator, clean)
        res = self.transfer(fitted.net, x, y, target, eps=eps)
        x_adv = res.x_adv
        if clean is not None:  # already adversarial: keep x rather than move it
            x_adv = torch.where(broadcast_rows(done, x), x, x_adv)
        evaluator = oracle.unwrapped
        with torch.no_grad():
            pred = evaluator(x_adv).argmax(1)
        fooled = pred != y if target is None else pred == target
        info: dict[str, Any] = {
            "budget_exhausted": oracle.exhausted(),
            "oracle_labels": fitted.labels_used,
            "train_agreement": fitted.train_agreement,
            "transfer_success": fooled.float().mean().item(),
        }
        if self.holdout_x is not None:
            h = self.holdout_x.to(x)
            with torch.no_grad():
                agree = _predict(fitted.net, h) == evaluator(h).argmax(1)
            info["holdout_agreement"] = agree.float().mean().item()
        return Crafted(x_adv, queries=oracle.counts.clone(), info=info)


def _grow_head(net: nn.Sequential, k: int, generator: torch.Generator,
               opt: torch.optim.Optimizer | None) -> torch.optim.Optimizer | None:
    """Widen the output layer to k classes (new rows from ``generator``). Returns the
    optimizer over the new parameters: Adam's state of the old rows kept, zero for the new."""
    old = net[-1]
    assert isinstance(old, nn.Linear)
    with torch.random.fork_rng(devices=[]):
        new = nn.Linear(old.in_features, k).to(old.weight)
    _init_(new, generator)
    with torch.no_grad():
        new.weight[:old.out_features] = old.weight
        new.bias[:old.out_features] = old.bias
    if opt is None:
        net[-1] = new
        return None
    swap = {old.weight: new.weight, old.bias: new.bias}
    params = [swap.get(p, p) for p in opt.param_groups[0]["params"]]
    grown = type(opt)(params, **opt.defaults)
    for p in opt.param_groups[0]["params"]:
        state = dict(opt.state.get(p, {}))
        if p in swap and state:
            for key in ("exp_avg", "exp_avg_sq"):
                padded = torch.zeros_like(swap[p])
                padded[:old.out_features] = state[key]
                state[key] = padded
        if state:
            grown.state[swap.get(p, p)] = state
    net[-1] = new
    return grown


def _labels(oracle: Oracle, x: Tensor, owner: Tensor) -> Tensor:
    out = oracle(x, owner=owner)
    return out if oracle.access == "labels" else out.argmax(1)


def _predict(net: nn.Module, x: Tensor, chunk: int = 4096) -> Tensor:
    with torch.no_grad():
        return torch.cat([net(x[lo:lo + chunk]).argmax(1) for lo in range(0, len(x), chunk)])


def _affordable(oracle: Oracle, x: Tensor, owner: Tensor) -> tuple[Tensor, Tensor]:
    """Keep, per owner, only as many points as its remaining budget allows (in order)."""
    if oracle.max_queries is None or len(x) == 0:
        return x, owner
    order = torch.argsort(owner, stable=True)
    sorted_owner = owner[order]
    first = torch.searchsorted(sorted_owner, sorted_owner, right=False)
    rank = torch.empty_like(owner)
    rank[order] = torch.arange(len(owner), device=owner.device) - first
    keep = rank < oracle.remaining()[owner]
    return x[keep], owner[keep]
