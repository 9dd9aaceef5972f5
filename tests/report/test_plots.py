"""report/plots.py: every figure is a PNG."""
from __future__ import annotations

import numpy as np

from advlab.report import plots


def test_plots_are_pngs() -> None:
    rng = np.random.default_rng(0)
    item = plots.GalleryItem(rng.random((3, 8, 8)), rng.random((3, 8, 8)), 1, 1, 0.96, 2, 0.92)
    for png in (plots.gallery([("pgd", [item, item])], ["cat", "dog", "car"]),
                plots.lines([("m", [plots.Curve("a", [0, 1], [1, 0])])], "x", "y"),
                plots.heatmaps([("t", ["a", "b"], ["a", "b"], np.array([[1, np.nan],
                                                                         [0.2, 0.5]]))],
                               "target", "source")):
        assert png.startswith(b"\x89PNG")
