"""The report's figures, drawn with matplotlib's object API on an Agg canvas (no pyplot, no
global backend switch, no display needed) and returned as PNG bytes.

Each function takes plain numbers or numpy arrays, so figures can be redrawn from the
results database alone.
"""
from __future__ import annotations

import io
from collections.abc import Sequence
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


def _image(img: np.ndarray) -> tuple[np.ndarray, str | None]:
    """C x H x W in [0, 1] -> an array imshow accepts, and the colormap for one channel."""
    if img.shape[0] == 1:
        return img[0], "gray"
    return np.transpose(img, (1, 2, 0)).clip(0, 1), None


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


def gallery(rows: Sequence[tuple[str, Sequence[GalleryItem]]], classes: Sequence[str] | None
            = None) -> bytes:
    """Original | amplified perturbation | adversarial, like the lecture's cat 96% -> dog 92%.

    Args:
        rows: (row title, items) pairs; each item takes three panels of its row.
        classes: class names (default: the class index).

    Returns:
        PNG bytes.
    """
    ncol = 3 * max((len(items) for _, items in rows), default=1)
    fig = Figure(figsize=(1.45 * ncol, 1.75 * max(len(rows), 1)))
    axes = fig.subplots(max(len(rows), 1), ncol, squeeze=False)
    name = (lambda c: classes[c]) if classes else str
    for r, (title, items) in enumerate(rows):
        for ax in axes[r]:
            ax.set_axis_off()
        axes[r][0].text(-0.15, 0.5, title, transform=axes[r][0].transAxes, rotation=90,
                        ha="right", va="center", fontsize=9)
        for j, it in enumerate(items):
            delta = it.x_adv - it.x
            top = float(np.abs(delta).max())
            amp = 0.5 / top if top > 1e-6 else 0.0  # below float noise: no perturbation
            panels = [
                (it.x, f"{name(it.clean_pred)} ({100 * it.clean_conf:.0f}%)",
                 it.clean_pred == it.label),
                (0.5 + amp * delta, f"perturbation x{amp:.1f}" if amp else "no perturbation",
                 None),
                (it.x_adv, f"{name(it.adv_pred)} ({100 * it.adv_conf:.0f}%)",
                 it.adv_pred == it.label),
            ]
            for k, (img, label, right) in enumerate(panels):
                ax = axes[r][3 * j + k]
                arr, cmap = _image(np.asarray(img, dtype=np.float64).clip(0, 1))
                ax.imshow(arr, cmap=cmap, vmin=0, vmax=1, interpolation="nearest")
                color = "black" if right is None else ("tab:green" if right else "tab:red")
                ax.set_title(label, fontsize=8, color=color)
    fig.tight_layout()
    return _png(fig)


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
