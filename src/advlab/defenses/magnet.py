r"""MagNet (Meng & Chen 2017): an autoencoder as detector and as reformer.

An autoencoder trained on clean data only learns the manifold of natural images. It serves
twice:

- **Detector**: far-off adversarial inputs reconstruct badly, so the reconstruction error
  :math:`\|x - AE(x)\|_p` (p = 1 or 2) is large; near-manifold ones change the classifier's
  output when reformed, so the Jensen-Shannon divergence between the softmax outputs at
  temperature T, :math:`JSD(\mathrm{softmax}(f(x)/T) \,\|\, \mathrm{softmax}(f(AE(x))/T))`,
  is large. Each component is divided by its clean 99th percentile (measured on a held-out
  part of the fitting data) and the score is the largest: an input is flagged when any
  component fires, as in the paper, with one threshold set at the chosen false-positive rate.
- **Reformer**: the classifier sees :math:`AE(x)` instead of x (:class:`Reformer`), which
  pulls small perturbations back to the manifold.

The adaptive attack (Carlini & Wagner, "MagNet and efficient defenses ... are not robust",
arXiv:1711.08478) differentiates through both: :class:`~advlab.detectors.DetectorAwarePGD`
run on the :class:`Reformer` with this detector.
"""
from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from advlab import optim
from advlab.defenses.transformed import Adaptive
from advlab.detectors.detector import Detector, Model
from advlab.errors import InputError, UnknownNameError
from advlab.threat import clip_box
from advlab.validation import check_images

COMPONENTS = ("l1", "l2", "jsd10", "jsd40")


class AutoEncoder(nn.Module):
    """MagNet's MNIST autoencoder: 3x3 convolutions with sigmoids, one 2x2 average pooling and
    one 2x2 upsampling (Meng & Chen 2017, Table 1, detector I / reformer).

    Weights are drawn from ``seed`` with a private generator (the global RNG is untouched).

    Args:
        channels: image channels.
        filters: channels of the hidden maps.
        seed: seeds the initial weights.

    Shape: N x C x H x W (H, W even) -> N x C x H x W in (0, 1).
    """

    def __init__(self, channels: int = 1, filters: int = 3, seed: int = 0) -> None:
        super().__init__()
        widths = [(channels, filters), (filters, filters), (filters, filters),
                  (filters, filters), (filters, channels)]
        self.convs = nn.ModuleList(
            nn.utils.skip_init(nn.Conv2d, a, b, 3, padding=1) for a, b in widths)
        g = torch.Generator().manual_seed(seed)
        with torch.no_grad():
            for conv in self.convs:
                bound = 1.0 / math.sqrt(conv.weight[0].numel())
                conv.weight.copy_((torch.rand(conv.weight.shape, generator=g) * 2 - 1) * bound)
                conv.bias.copy_((torch.rand(conv.bias.shape, generator=g) * 2 - 1) * bound)
        self.eval()

    def forward(self, x: Tensor) -> Tensor:
        c = self.convs
        h = F.avg_pool2d(torch.sigmoid(c[0](x)), 2)
        h = torch.sigmoid(c[2](torch.sigmoid(c[1](h))))
        h = F.interpolate(h, scale_factor=2, mode="nearest")
        return torch.sigmoid(c[4](torch.sigmoid(c[3](h))))


def train_autoencoder(x: Tensor, *, epochs: int = 10, noise: float = 0.1, lr: float = 3e-3,
                      batch_size: int = 128, filters: int = 16,
                      seed: int = 0) -> AutoEncoder:
    """Train a MagNet autoencoder on clean images: inputs with Gaussian noise of std
    ``noise`` added (clipped to [0, 1]), targets clean, mean squared error, Adam.

    Args:
        x: clean training images N x C x H x W in [0, 1] (H, W even).
        epochs: passes over x.
        noise: std of the training noise ("noise volume" in the paper).
        lr, batch_size: Adam's learning rate and the minibatch size.
        filters: hidden channels (the paper's 3 needs many more epochs to reconstruct well;
            16 reaches a lower error within the default epochs on mnist5k).
        seed: seeds the weights, the shuffling and the noise.

    Returns:
        the trained autoencoder, eval mode, parameters not requiring gradients.
    """
    check_images(x)
    if x.shape[2] % 2 or x.shape[3] % 2:
        raise InputError(f"the autoencoder needs even height and width, got {tuple(x.shape)}")
    ae = AutoEncoder(x.shape[1], filters, seed).to(x)
    g = torch.Generator(device=x.device).manual_seed(seed)

    def loss(step: optim.Step) -> Tensor:
        xb = x[step.idx]
        z = torch.randn(xb.shape, generator=g, device=x.device, dtype=x.dtype)
        return F.mse_loss(ae(clip_box(xb + noise * z)), xb)

    optim.fit(ae, loss, len(x), epochs=epochs, lr=lr, batch_size=batch_size, generator=g)
    for p in ae.parameters():
        p.requires_grad_(False)
    return ae.eval()


class Reformer(nn.Module):
    """MagNet's reformer defense: the classifier applied to the autoencoder's reconstruction,
    ``model(autoencoder(x))``. Created in eval mode without touching the model's mode.

    Args:
        model: the classifier.
        autoencoder: a trained autoencoder (e.g. ``MagNet(...).fit(...).autoencoder_``).
        detector: MagNet's fitted detector when the defense also rejects inputs (set by
            :meth:`MagNet.reformer`); the adaptive attack must then evade it too.
    """

    def __init__(self, model: nn.Module, autoencoder: nn.Module,
                 detector: Detector | None = None) -> None:
        super().__init__()
        self.model, self.autoencoder = model, autoencoder
        self.detector = detector
        self.training = False  # this wrapper only; the classifier keeps its own mode

    def forward(self, x: Tensor) -> Tensor:
        return self.model(self.autoencoder(x))

    def adaptive(self, steps: int = 100) -> Adaptive:
        """The adaptive attack surface (Carlini & Wagner, arXiv:1711.08478): the reformer is
        differentiable, so the attack is PGD on the C&W margin through ``model(AE(x))``; with
        a detector, ``Adaptive.detector`` says to run
        :class:`~advlab.detectors.DetectorAwarePGD` with it on this model instead.

        Args:
            steps: suggested PGD steps.
        """
        return Adaptive(self, 1, "pgd", {"steps": steps, "loss": "margin"},
                        detector=self.detector)


def jsd(logits_p: Tensor, logits_q: Tensor, temperature: float) -> Tensor:
    """Jensen-Shannon divergence between softmax(p / T) and softmax(q / T), per row (N,)."""
    p, q = F.softmax(logits_p / temperature, 1), F.softmax(logits_q / temperature, 1)
    m = (0.5 * (p + q)).clamp_min(1e-12).log()
    kl = lambda a: (a * (a.clamp_min(1e-12).log() - m)).sum(1)  # noqa: E731
    return 0.5 * (kl(p) + kl(q))


class MagNet(Detector):
    """MagNet's detectors: reconstruction errors and output divergences, combined by max.

    Args:
        autoencoder: a trained autoencoder; default: train one on the fitting data.
        components: any of "l1", "l2" (mean absolute / root-mean-square reconstruction error)
            and "jsdT" (JSD at temperature T, e.g. "jsd10", "jsd40").
        validation: fraction of the fitting data held out to scale the components.
        epochs, noise: autoencoder training (see :func:`train_autoencoder`).
        batch_size, seed: see :class:`~advlab.detectors.detector.Detector`.

    Attributes (after fit): ``autoencoder_``, ``scale_`` (clean 99th percentile of each
    component).

    References: Meng & Chen, "MagNet: a two-pronged defense against adversarial examples",
    CCS 2017, arXiv:1705.09064.
    """

    differentiable = True

    def __init__(self, autoencoder: nn.Module | None = None, *,
                 components: Sequence[str] = COMPONENTS, validation: float = 0.1,
                 epochs: int = 10, noise: float = 0.1, batch_size: int = 500,
                 seed: int = 0) -> None:
        super().__init__(batch_size=batch_size, seed=seed)
        for c in components:
            if c not in ("l1", "l2") and not (c.startswith("jsd") and c[3:].isdigit()):
                raise UnknownNameError("MagNet component", c, list(COMPONENTS))
        if not components:
            raise InputError("MagNet needs at least one component")
        if not 0.0 < validation < 1.0:
            raise InputError(f"validation must lie in (0, 1), got {validation}")
        self.autoencoder, self.components = autoencoder, list(components)
        self.validation, self.epochs, self.noise = validation, epochs, noise

    def _fit(self, model: Model, x: Tensor, y: Tensor, x_adv: Tensor | None) -> None:
        perm = torch.randperm(len(x), generator=self.generator(torch.device("cpu")))
        n_val = max(1, int(round(self.validation * len(x))))
        val, tr = perm[:n_val].to(x.device), perm[n_val:].to(x.device)
        self.autoencoder_ = self.autoencoder if self.autoencoder is not None else \
            train_autoencoder(x[tr], epochs=self.epochs, noise=self.noise, seed=self.seed)
        with torch.no_grad():
            parts = [self._components(model, b) for b in x[val].split(self.batch_size)]
        self.scale_ = {c: float(torch.cat([p[c] for p in parts]).quantile(0.99).clamp_min(1e-9))
                       for c in self.components}

    def _components(self, model: Model, x: Tensor) -> dict[str, Tensor]:
        rec = self.autoencoder_(x)
        diff = (x - rec).flatten(1)
        out: dict[str, Tensor] = {}
        logits = logits_rec = None
        for c in self.components:
            if c == "l1":
                out[c] = diff.abs().mean(1)
            elif c == "l2":
                out[c] = diff.pow(2).mean(1).clamp_min(1e-12).sqrt()
            else:
                if logits is None:
                    logits, logits_rec = model(x), model(rec)
                out[c] = jsd(logits, logits_rec, float(c[3:]))
        return out

    def components_of(self, x: Tensor) -> dict[str, Tensor]:
        """component -> (N,) raw values (before scaling)."""
        model = self.check_model()
        self.check_inputs(x)
        with torch.no_grad():
            parts = [self._components(model, b) for b in x.split(self.batch_size)]
        return {c: torch.cat([p[c] for p in parts]) for c in self.components}

    def _combined(self, model: Model, x: Tensor) -> Tensor:
        comps = self._components(model, x)
        return torch.stack([comps[c] / self.scale_[c] for c in self.components]).amax(0)

    def _score(self, model: Model, x: Tensor, generator: torch.Generator) -> Tensor:
        return self._combined(model, x)

    def _score_torch(self, model: Model, x: Tensor, generator: torch.Generator) -> Tensor:
        return self._combined(model, x)

    def reformer(self) -> Reformer:
        """The reformer defense around the fitted model, model(AE(x)), with this detector
        attached (its :meth:`Reformer.adaptive` attack evades the detector too)."""
        return Reformer(self.check_model(), self.autoencoder_, self)
