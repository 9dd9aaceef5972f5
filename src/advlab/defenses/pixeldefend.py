r"""PixelDefend: purify the input towards the data distribution with a PixelCNN, then classify.

A PixelCNN models an image as a product of per-pixel conditionals in raster order,

.. math::  p(x) = \prod_{i} p(x_i \mid x_1, \dots, x_{i-1}),

each a softmax over ``levels`` discrete values, computed by convolutions masked so that the
output at pixel i sees only the pixels before it (mask "A" on the first layer excludes the
pixel itself, mask "B" on later layers includes it). Adversarial examples have low likelihood
under such a model; PixelDefend (Song et al. 2018, Algorithm 1) moves each pixel, in raster
order, to the most likely value within :math:`\epsilon_{defend}` of its input value,

.. math::  x'_i = \arg\max_{z:\ |z - x_i| \le \epsilon_{defend}} p(z \mid x'_1, \dots,
   x'_{i-1}),

and classifies :math:`x'`. The purification is an arg-max: its gradient is zero almost
everywhere, so naive gradient attacks fail. The adaptive attack (Athalye, Carlini & Wagner
2018) is BPDA: the exact purification forward, the identity backward — available as
``PixelDefend(...).adaptive()``.

An output pixel only depends on the pixels within ``reach`` rows above and columns aside
(its receptive field); purification runs the network on that window only.

References:
    Song, Kim, Nowozin, Ermon & Kushman, "PixelDefend: leveraging generative models to
    understand and defend against adversarial examples", ICLR 2018, arXiv:1710.10766.
    van den Oord, Kalchbrenner & Kavukcuoglu, "Pixel recurrent neural networks", ICML 2016,
    arXiv:1601.06759 (PixelCNN, masks A and B). Athalye, Carlini & Wagner, ICML 2018,
    arXiv:1802.00420.
"""
from __future__ import annotations

import logging
import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from advlab import optim
from advlab.defenses.transformed import Adaptive, Transformed
from advlab.errors import InputError
from advlab.transforms import Transform
from advlab.validation import check_images

log = logging.getLogger(__name__)


def _groups(n: int, channels: int) -> Tensor:
    """The image channel each of n feature channels belongs to (contiguous groups)."""
    return torch.arange(n) * channels // n


class MaskedConv2d(nn.Conv2d):
    """A k x k convolution that sees only pixels before the centre in raster order.

    At the centre pixel, feature channels are split into ``channels`` groups (one per image
    channel, in order): with mask "A" an output group sees the input groups strictly before
    it, with mask "B" also its own group. For a one-channel image, "A" excludes the centre
    pixel and "B" includes it.

    Args:
        in_ch, out_ch: feature channels.
        kernel_size: odd k.
        mask: "A" (first layer) or "B".
        channels: image channels C.
    """

    def __init__(self, in_ch: int, out_ch: int, kernel_size: int, mask: str,
                 channels: int = 1) -> None:
        super().__init__(in_ch, out_ch, kernel_size, padding=kernel_size // 2)
        if mask not in ("A", "B") or kernel_size % 2 == 0:
            raise InputError(f"mask must be 'A' or 'B' with an odd kernel, got {mask!r}, "
                             f"{kernel_size}")
        k, c = kernel_size, kernel_size // 2
        m = torch.zeros(out_ch, in_ch, k, k)
        m[:, :, :c, :] = 1.0          # rows above
        m[:, :, c, :c] = 1.0          # left of the centre
        g_out, g_in = _groups(out_ch, channels), _groups(in_ch, channels)
        centre = g_out[:, None] > g_in[None, :] if mask == "A" else \
            g_out[:, None] >= g_in[None, :]
        m[:, :, c, c] = centre.float()
        self.register_buffer("mask", m)

    def forward(self, x: Tensor) -> Tensor:
        return F.conv2d(x, self.weight * self.mask, self.bias, padding=self.padding)


class PixelCNN(nn.Module):
    r"""A small PixelCNN: a k x k mask-"A" convolution, residual 3 x 3 mask-"B" blocks, and a
    1 x 1 head giving a ``levels``-way softmax per pixel and channel.

    Args:
        channels: image channels C.
        levels: discrete values per pixel (256 for 8-bit images; fewer for a faster model).
        hidden: feature channels.
        layers: residual 3 x 3 blocks.
        first_kernel: size of the first (mask A) kernel.

    Shape:
        x: N x C x H x W in [0, 1] -> logits N x levels x C x H x W.
    """

    def __init__(self, channels: int = 1, levels: int = 256, hidden: int = 32, layers: int = 5,
                 first_kernel: int = 7) -> None:
        super().__init__()
        if levels < 2 or hidden < channels or layers < 0:
            raise InputError(f"need levels >= 2, hidden >= channels, layers >= 0; got {levels}, "
                             f"{hidden}, {layers}")
        self.channels, self.levels = channels, levels
        self.inp = MaskedConv2d(channels, hidden, first_kernel, "A", channels)
        self.blocks = nn.ModuleList(MaskedConv2d(hidden, hidden, 3, "B", channels)
                                    for _ in range(layers))
        self.head1 = MaskedConv2d(hidden, hidden, 1, "B", channels)
        self.head2 = MaskedConv2d(hidden, channels * levels, 1, "B", channels)
        self.reach = first_kernel // 2 + layers  # receptive field: rows above, columns aside

    def trunk(self, x: Tensor) -> Tensor:
        """Features N x hidden x H x W (before the 1 x 1 head)."""
        h = self.inp(2 * x - 1)
        for b in self.blocks:
            h = h + b(F.relu(h))
        return F.relu(h)

    def head(self, h: Tensor) -> Tensor:
        """Logits N x levels x C x H x W from trunk features."""
        z = self.head2(F.relu(self.head1(h)))
        n, _, hh, ww = z.shape
        return z.view(n, self.channels, self.levels, hh, ww).transpose(1, 2)

    def forward(self, x: Tensor) -> Tensor:
        return self.head(self.trunk(x))

    def nll(self, x: Tensor) -> Tensor:
        """Per-image negative log-likelihood in bits per dimension, (N,)."""
        target = torch.round(x * (self.levels - 1)).long()
        ce = F.cross_entropy(self(x), target, reduction="none")
        return ce.flatten(1).mean(1) / math.log(2)


def train_pixelcnn(x: Tensor, *, levels: int = 256, hidden: int = 32, layers: int = 5,
                   first_kernel: int = 7, epochs: int = 5, lr: float = 1e-3,
                   batch_size: int = 64, seed: int = 0) -> PixelCNN:
    """Train a :class:`PixelCNN` by maximum likelihood on images x (labels unused).

    Args:
        x: training images in [0, 1], N x C x H x W.
        levels, hidden, layers, first_kernel: the architecture.
        epochs, lr, batch_size: Adam training settings.
        seed: seeds the initialisation and the shuffling.

    Returns:
        The trained PixelCNN, in eval mode (``train_bits_per_dim`` holds its final NLL).
    """
    from advlab.zoo import init_weights

    check_images(x)
    net = PixelCNN(x.shape[1], levels, hidden, layers, first_kernel)
    init_weights(net, torch.Generator().manual_seed(seed))

    def loss(s: optim.Step) -> Tensor:
        return net.nll(x[s.idx]).mean() * math.log(2)  # nats: the cross-entropy

    optim.fit(net, loss, len(x), epochs=epochs, lr=lr, batch_size=batch_size,
              generator=torch.Generator().manual_seed(seed), name="PixelCNN")
    with torch.no_grad():
        net.train_bits_per_dim = float(net.nll(x[:500]).mean())
    log.info("PixelCNN: %.3f bits/dim on the training images", net.train_bits_per_dim)
    return net.eval()


def window(x: Tensor, eps_defend: float, levels: int) -> tuple[Tensor, Tensor]:
    """The value-grid levels [lo, hi] (inclusive) within ``eps_defend`` of x, widened to
    hold the level nearest x when the ball holds none; float tensors shaped like x."""
    lo = torch.ceil((x - eps_defend) * (levels - 1) - 1e-4).clamp(0, levels - 1)
    hi = torch.floor((x + eps_defend) * (levels - 1) + 1e-4).clamp(0, levels - 1)
    near = torch.round(x * (levels - 1))
    return torch.minimum(lo, near), torch.maximum(hi, near)


def pixel_logits(pixelcnn: PixelCNN, x: Tensor, i: int, j: int, ch: int) -> Tensor:
    """The PixelCNN's logits N x levels for pixel (i, j) of channel ch, computed on its
    receptive field only (rows i - reach .. i, columns j - reach .. j + reach); they depend
    on the pixels of x before it in raster order only."""
    r = pixelcnn.reach
    top, left = max(0, i - r), max(0, j - r)
    band = x[:, :, top:i + 1, left:j + r + 1]
    feats = pixelcnn.trunk(band)[:, :, -1:, j - left:j - left + 1]
    return pixelcnn.head(feats)[:, :, ch, 0, 0]


@torch.no_grad()
def purify(pixelcnn: PixelCNN, x: Tensor, eps_defend: float) -> Tensor:
    r"""PixelDefend's greedy purification (Song et al. 2018, Algorithm 1): in raster order,
    set each pixel to the most likely of the values within ``eps_defend`` of its input value,
    given the pixels already purified.

    Args:
        pixelcnn: the density model (its ``levels`` set the value grid k / (levels - 1)).
        x: images in [0, 1].
        eps_defend: the purification radius in pixel units.

    Returns:
        The purified images, on the value grid, with :math:`|x' - x| \le \epsilon_{defend}`
        (or the nearest grid value when the ball holds none).

    Shape:
        x: N x C x H x W -> N x C x H x W.
    """
    L = pixelcnn.levels
    _, c, h, w = x.shape
    lo, hi = window(x, eps_defend, L)
    grid = torch.arange(L, device=x.device, dtype=x.dtype)
    out = x.clone()
    for i in range(h):
        for j in range(w):
            for ch in range(c):
                logits = pixel_logits(pixelcnn, out, i, j, ch)          # N x L
                allowed = (grid[None] >= lo[:, ch, i, j, None]) & \
                    (grid[None] <= hi[:, ch, i, j, None])
                z = logits.masked_fill(~allowed, float("-inf")).argmax(1)
                out[:, ch, i, j] = z.to(x.dtype) / (L - 1)
    return out


class Purifier(Transform):
    """PixelDefend's purification as a (non-differentiable) input transformation;
    BPDA surrogate: the identity.

    Args:
        pixelcnn: a trained :class:`PixelCNN`.
        eps_defend: the purification radius (pixel units).
    """

    differentiable = False

    def __init__(self, pixelcnn: PixelCNN, eps_defend: float = 0.3) -> None:
        super().__init__(random=False)
        if not isinstance(pixelcnn, PixelCNN):
            raise InputError(f"Purifier needs a PixelCNN, got {type(pixelcnn).__name__}")
        if not 0 <= eps_defend <= 1:
            raise InputError(f"eps_defend must be in [0, 1], got {eps_defend}")
        self.pixelcnn, self.eps_defend = pixelcnn, eps_defend

    def fixed_params(self, x: Tensor) -> None:
        return None

    def apply(self, x: Tensor, params: None) -> Tensor:
        if x.shape[1] != self.pixelcnn.channels:
            raise InputError(f"the PixelCNN models {self.pixelcnn.channels}-channel images, "
                             f"got {x.shape[1]} channels")
        # the arg-max has a zero gradient almost everywhere: say so to autograd (naive attacks
        # then see the masked gradient instead of failing); the value is exactly purify(x)
        return purify(self.pixelcnn, x.detach(), self.eps_defend) + 0.0 * x


class PixelDefend(Transformed):
    """PixelDefend: ``model(purify(x))``.

    ``PixelDefend(model, pixelcnn, eps_defend).adaptive()`` gives the BPDA attack surface
    (exact purification forward, identity gradient; the purification is deterministic, so
    one EOT sample).

    Args:
        model: the classifier.
        pixelcnn: a trained :class:`PixelCNN` (see :func:`train_pixelcnn`).
        eps_defend: the purification radius (Song et al. use eps_defend >= the attack eps).

    Shape:
        x: N x C x H x W in [0, 1] -> logits N x K.
    """

    def __init__(self, model: nn.Module, pixelcnn: PixelCNN, eps_defend: float = 0.3) -> None:
        super().__init__(model, [Purifier(pixelcnn, eps_defend)])
        self.eps_defend = eps_defend

    def adaptive(self, eot_samples: int | None = None, steps: int = 100) -> Adaptive:
        """BPDA (Athalye, Carlini & Wagner 2018, arXiv:1802.00420): PGD on the C&W margin
        through a copy whose purifier passes the identity gradient; each step's forward is
        the exact purification, so success is judged on the defense itself. Deterministic:
        one EOT sample.

        When the attack eps is at most ``eps_defend``, the purifier's window around every
        attacked pixel still holds the clean value: on near-binary images (MNIST) a confident
        PixelCNN then restores it whatever the attacker does, and only uncertain (grey, edge)
        pixels remain for any attack to move (on mnist-cnn at eps = eps_defend = 0.3, an
        attack that follows the purifier exactly fools only a few more images than this one:
        ``benchmarks/pixeldefend_adaptive.py``).

        Args:
            eot_samples: ignored (the purification is deterministic).
            steps: PGD steps.
        """
        a = super().adaptive(eot_samples, steps)
        a.attack_kwargs["loss"] = "margin"
        return a
