"""The report's figures, drawn with matplotlib's object API on an Agg canvas (no pyplot, no
global backend switch, no display needed) and returned as PNG bytes.

Each function takes plain numbers or numpy arrays, so figures can be redrawn from the
results database alone.
"""
from __future__ import annotations

import io
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

DPI = 100


def _png(fig: Figure) -> bytes:
    FigureCanvasAgg(fig)
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=DPI, bbox_inches="tight")
    return buf.getvalue()


def _rgb(img: np.ndarray) -> np.ndarray:
    """C x H x W in [0, 1] (C = 1 or 3) -> H x W x 3, clipped to [0, 1]."""
    img = np.asarray(img, dtype=np.float64).clip(0, 1)
    return np.transpose(np.repeat(img, 3, axis=0) if img.shape[0] == 1 else img, (1, 2, 0))


@dataclass
class GalleryItem:
    """One example: clean and adversarial images (C x H x W), the true label, and the
    predicted class and confidence on each."""

    x: np.ndarray
    x_adv: np.ndarray
    label: int
    clean_pred: int
    clean_conf: float
    adv_pred: int
    adv_conf: float


def _panels(it: GalleryItem, name: Callable[[int], str]
            ) -> list[tuple[np.ndarray, str, bool | None]]:
    """(image, caption, prediction right?) for original | amplified perturbation |
    adversarial; the perturbation is stretched to fill [0, 1] around grey."""
    delta = it.x_adv - it.x
    top = float(np.abs(delta).max())
    amp = 0.5 / top if top > 1e-6 else 0.0  # below float noise: no perturbation
    return [(it.x, f"{name(it.clean_pred)} ({100 * it.clean_conf:.0f}%)",
             it.clean_pred == it.label),
            (0.5 + amp * delta, f"perturbation x{amp:.1f}" if amp else "no perturbation", None),
            (it.x_adv, f"{name(it.adv_pred)} ({100 * it.adv_conf:.0f}%)",
             it.adv_pred == it.label)]


def gallery(rows: Sequence[tuple[str, Sequence[GalleryItem]]], classes: Sequence[str] | None
            = None) -> bytes:
    """Original | amplified perturbation | adversarial, like the lecture's cat 96% -> dog 92%.

    Each row is drawn as one image (its panels side by side, a gap between them), so the
    figure costs one axes per row whatever the number of panels.

    Args:
        rows: (row title, items) pairs; each item takes three panels of its row.
        classes: class names (default: the class index).

    Returns:
        PNG bytes.
    """
    ncol = 3 * max((len(items) for _, items in rows), default=1)
    side = max((it.x.shape[-1] for _, items in rows for it in items), default=0)
    inches = 1.45 if side < 96 else 2.0  # thumbnails of large images (224 x 224) get more room
    fig = Figure(figsize=(inches * ncol, (inches + 0.3) * max(len(rows), 1)))
    axes = fig.subplots(max(len(rows), 1), 1, squeeze=False)[:, 0]
    name = (lambda c: _short(classes[c])) if classes else str
    for ax, (title, items) in zip(axes, rows):
        ax.set_axis_off()
        panels = [p for it in items for p in _panels(it, name)]
        if not panels:
            continue
        h, w = panels[0][0].shape[-2:]
        gap = max(w // 4, 2)
        strip = np.ones((h, ncol * (w + gap) - gap, 3))
        for k, (image, caption, right) in enumerate(panels):
            left = k * (w + gap)
            strip[:, left:left + w] = _rgb(image)
            color = "black" if right is None else ("tab:green" if right else "tab:red")
            ax.text(left + w / 2, -1, caption, ha="center", va="bottom", fontsize=8,
                    color=color)
        # pixels stay sharp when enlarged (up to 3x: nearest), large images are
        # smoothed before they are shrunk (no aliasing)
        ax.imshow(strip, vmin=0, vmax=1, interpolation="antialiased")
        ax.text(-gap, h / 2, title, rotation=90, ha="right", va="center", fontsize=9)
    fig.tight_layout()
    return _png(fig)


def _short(name: str, width: int = 16) -> str:
    """A class name that fits above its panel (ImageNet's are long)."""
    return name if len(name) <= width else name[:width - 1] + "…"


@dataclass
class Curve:
    """One line of a line plot."""

    label: str
    x: Sequence[float]
    y: Sequence[float]
    style: str = "-o"


def lines(panels: Sequence[tuple[str, Sequence[Curve]]], xlabel: str, ylabel: str,
          ylim: tuple[float, float] | None = (0.0, 1.0), logx: bool = False,
          diagonal: bool = False, columns: int = 3) -> bytes:
    """One subplot per (title, curves) panel, at most ``columns`` side by side.

    Args:
        diagonal: draw the chance line y = x (ROC curves).
        columns: panels per row.
    """
    n = max(len(panels), 1)
    cols = min(n, columns)
    rows = -(-n // cols)
    fig = Figure(figsize=(min(4.4 * cols, 13), 3.6 * rows))
    axes = fig.subplots(rows, cols, squeeze=False).ravel()
    for ax in axes[len(panels):]:
        ax.set_visible(False)
    for ax, (title, curves) in zip(axes, panels, strict=False):
        for c in curves:
            ax.plot(c.x, c.y, c.style, label=c.label, markersize=4, linewidth=1.5)
        if diagonal:
            ax.plot([0, 1], [0, 1], ":", color="gray", linewidth=1)
        if logx:
            ax.set_xscale("log")
        if ylim is not None:
            ax.set_ylim(*ylim)
        ax.set_title(title, fontsize=10)
        ax.set_xlabel(xlabel)
        ax.set_ylabel(ylabel)
        ax.grid(alpha=0.3)
        if curves:
            ax.legend(fontsize=7)
    fig.tight_layout()
    return _png(fig)


def heatmaps(panels: Sequence[tuple[str, Sequence[str], Sequence[str], np.ndarray]],
             xlabel: str, ylabel: str) -> bytes:
    """Annotated heatmaps in [0, 1], one per (title, row names, column names, matrix).

    NaN cells (not measured) are shown empty with "n/a".
    """
    n = max(len(panels), 1)
    fig = Figure(figsize=(min(3.6 * n, 13), 3.4))
    axes = fig.subplots(1, n, squeeze=False)[0]
    image = None
    for k, (ax, (title, rows, cols, m)) in enumerate(zip(axes, panels, strict=False)):
        m = np.asarray(m, dtype=np.float64)
        image = ax.imshow(np.ma.masked_invalid(m), vmin=0, vmax=1, cmap="viridis")
        ax.set_xticks(range(len(cols)), cols, rotation=30, ha="right", fontsize=8)
        ax.set_yticks(range(len(rows)), rows if k == 0 else [], fontsize=8)
        for i in range(m.shape[0]):
            for j in range(m.shape[1]):
                v = m[i, j]
                text = "n/a" if np.isnan(v) else f"{100 * v:.0f}%"
                ax.text(j, i, text, ha="center", va="center", fontsize=8,
                        color="white" if np.isnan(v) or v < 0.6 else "black")
        ax.set_title(title, fontsize=10)
        ax.set_xlabel(xlabel)
        if k == 0:
            ax.set_ylabel(ylabel)
    if image is not None:
        fig.colorbar(image, ax=list(axes), shrink=0.8)
    return _png(fig)
