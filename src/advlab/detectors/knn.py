r"""Nearest neighbours in activation space: the lecture's activation kNN and Deep kNN.

The lecture's observation: an adversarial example looks like its original image, so in the
first layers its activations stay near those of training images of the *true* class, while
only the last layers carry the adversarial class. Store the activations of the training
inputs; at test time take a k-nearest-neighbour vote on the activation vector; if the kNN label
differs from the network's prediction, flag the input.

Deep kNN (Papernot & McDaniel 2018) runs the kNN at every layer and calibrates the result
with conformal prediction: the nonconformity of label j is the number of neighbours (over all
layers) whose label is not j, and the credibility of a prediction is the fraction of a
held-out calibration set that is at least as nonconforming. Low credibility = suspicious.

:func:`knn_search` is exact (every distance is computed; no approximate index), batched over
queries and chunked over the stored rows so that memory stays bounded for large training sets.
"""
from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

from advlab.detectors.detector import (
    Detector,
    Model,
    collect_activations,
    euclidean,
    forward_with_activations,
    parametric_layers,
)
from advlab.errors import InputError


def knn_search(query: Tensor, base: Tensor, k: int, *, max_elements: int = 1 << 22,
               precise: bool = False) -> tuple[Tensor, Tensor]:
    """Exact k nearest neighbours (Euclidean) of each query row among the base rows.

    The distance matrix is never held whole: queries go in batches and, within a batch, the
    base rows in chunks of at most ``max_elements`` distances, keeping a running top-k.

    Args:
        query: Q x D.
        base: B x D, B >= k.
        k: number of neighbours.
        max_elements: bound on the number of distances held at once (memory bound).
        precise: compute each distance directly instead of by the matrix-product expansion
            :math:`\\|a\\|^2 - 2 a\\cdot b + \\|b\\|^2` (slower; avoids rounding on near-ties).

    Returns:
        (distances Q x k ascending, indices Q x k into base).
    """
    if query.dim() != 2 or base.dim() != 2 or query.shape[1] != base.shape[1]:
        raise InputError(f"knn_search needs Q x D and B x D, got {tuple(query.shape)} and "
                         f"{tuple(base.shape)}")
    if not 1 <= k <= len(base):
        raise InputError(f"k must lie in [1, {len(base)}] (stored rows), got {k}")
    def dist(a: Tensor, b: Tensor) -> Tensor:
        return torch.cdist(a, b, compute_mode="donot_use_mm_for_euclid_dist") if precise \
            else euclidean(a, b)

    q_chunk = max(1, min(len(query), 1024, max_elements // max(k, 1)))
    b_chunk = max(k, max_elements // q_chunk)
    dists, idxs = [], []
    for i in range(0, len(query), q_chunk):
        q = query[i:i + q_chunk]
        best_d = q.new_empty(len(q), 0)
        best_i = torch.empty(len(q), 0, dtype=torch.long, device=q.device)
        for j in range(0, len(base), b_chunk):
            d = dist(q, base[j:j + b_chunk])
            ids = torch.arange(j, j + d.shape[1], device=q.device).expand_as(d)
            cand_d, cand_i = torch.cat([best_d, d], 1), torch.cat([best_i, ids], 1)
            best_d, pos = cand_d.topk(min(k, cand_d.shape[1]), dim=1, largest=False)
            best_i = cand_i.gather(1, pos)
        dists.append(best_d)
        idxs.append(best_i)
    return torch.cat(dists), torch.cat(idxs)


def _vote(labels: Tensor, num_classes: int) -> Tensor:
    """Majority label of each row of neighbour labels (N x k, nearest first); ties go to the
    label whose nearest member is closest."""
    n, k = labels.shape
    counts = torch.zeros(n, num_classes, device=labels.device).scatter_add_(
        1, labels, torch.ones_like(labels, dtype=torch.float))
    rank = torch.arange(k, device=labels.device, dtype=torch.float).expand(n, k)
    first = torch.full((n, num_classes), float(k), device=labels.device).scatter_reduce(
        1, labels, rank, reduce="amin")
    return (counts * (k + 1) - first).argmax(1)


class ActivationKNN(Detector):
    """The lecture's detector: kNN vote on stored training activations at chosen layers.

    Activations of the named layers are flattened and concatenated (with both hidden layers
    of the lecture's 784-64-64-10 network, a 128-dimensional vector). The score of an input is
    the fraction of its k nearest training activations whose label differs from the network's
    prediction; :meth:`flags` is the lecture's rule (kNN majority label != prediction).

    Args:
        layers: submodule names whose outputs form the activation vector.
        k: neighbours in the vote.
        precise: exact per-pair distances in the search (see :func:`knn_search`).
        batch_size, seed: see :class:`~advlab.detectors.detector.Detector`.

    Shape: score x N x C x H x W -> (N,) in [0, 1].

    References: the lecture ("Clustering of network activations"); the vote rule of Papernot
    & McDaniel, "Deep k-nearest neighbors", arXiv:1803.04765. Surrogate for adaptive attacks
    after Sitawarin & Wagner, "On the robustness of deep k-nearest neighbors",
    arXiv:1903.08333.
    """

    differentiable = True

    def __init__(self, layers: Sequence[str] = ("fc1",), k: int = 10, *, precise: bool = False,
                 surrogate_neighbours: int = 10, batch_size: int = 500, seed: int = 0) -> None:
        super().__init__(batch_size=batch_size, seed=seed)
        if not layers:
            raise InputError("ActivationKNN needs at least one layer")
        if k < 1 or surrogate_neighbours < 1:
            raise InputError(f"k and surrogate_neighbours must be >= 1, got {k}, "
                             f"{surrogate_neighbours}")
        self.layers, self.k, self.precise = list(layers), k, precise
        self.surrogate_neighbours = surrogate_neighbours

    def _features(self, acts: dict[str, Tensor]) -> Tensor:
        return torch.cat([acts[name] for name in self.layers], 1)

    def _fit(self, model: Model, x: Tensor, y: Tensor, x_adv: Tensor | None) -> None:
        if len(x) < self.k:
            raise InputError(f"need at least k={self.k} training inputs, got {len(x)}")
        _, acts = collect_activations(model, x, self.layers, self.batch_size)
        self.train_features_, self.train_labels_ = self._features(acts), y.clone()
        self.tau_ = self._temperature(self.train_features_, self.train_labels_)

    def _temperature(self, feats: Tensor, labels: Tensor) -> float:
        n = min(len(feats), 500)  # the first 500 fitting rows (each is its own neighbour)
        d = class_distances(feats[:n], feats, labels, self.num_classes_ or 0,
                            self.surrogate_neighbours)
        return surrogate_temperature(d, labels[:n])

    def neighbours(self, x: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """(labels N x k of the nearest training activations, their distances, the logits)."""
        model = self.check_model()
        self.check_inputs(x)
        with torch.no_grad():
            logits, acts = forward_with_activations(model, x, self.layers)
            d, i = knn_search(self._features(acts), self.train_features_, self.k,
                              precise=self.precise)
        return self.train_labels_[i], d, logits

    def _score(self, model: Model, x: Tensor, generator: torch.Generator) -> Tensor:
        labels, _, logits = self.neighbours(x)
        return (labels != logits.argmax(1, keepdim=True)).float().mean(1)

    def knn_predict(self, x: Tensor) -> Tensor:
        """The kNN majority label of each input (N,)."""
        return torch.cat([_vote(self.neighbours(b)[0], self.num_classes_ or 0)
                          for b in x.split(self.batch_size)])

    def flags(self, x: Tensor) -> Tensor:
        """The lecture's rule, bool (N,): the kNN label differs from the network's prediction."""
        out = []
        for b in x.split(self.batch_size):
            labels, _, logits = self.neighbours(b)
            out.append(_vote(labels, logits.shape[1]) != logits.argmax(1))
        return torch.cat(out)

    # -- a smooth surrogate for adaptive attacks -------------------------------------------

    def _score_torch(self, model: Model, x: Tensor, generator: torch.Generator) -> Tensor:
        """See :func:`soft_knn_score`; distances differentiable in x."""
        logits, acts = forward_with_activations(model, x, self.layers)
        feats = self._features(acts)
        d = class_distances(feats, self.train_features_, self.train_labels_,
                            self.num_classes_ or 0, self.surrogate_neighbours)
        return soft_knn_score(d, logits.argmax(1), self.tau_)


def class_distances(feats: Tensor, base: Tensor, labels: Tensor, num_classes: int,
                    m: int) -> Tensor:
    """Mean distance from each row of ``feats`` to its m nearest ``base`` rows of each class
    (all of them for a class with fewer rows; +inf for a class with none), N x K,
    differentiable in ``feats`` (memory N x base rows)."""
    d = euclidean(feats, base)
    out = []
    for c in range(num_classes):
        dc = d[:, labels == c]
        out.append(dc.topk(min(m, dc.shape[1]), dim=1, largest=False).values.mean(1)
                   if dc.shape[1] else feats.new_full((len(feats),), float("inf")))
    return torch.stack(out, 1)


def soft_knn_score(dist: Tensor, pred: Tensor, tau: float) -> Tensor:
    r"""A smooth stand-in for the kNN disagreement, for adaptive attacks:
    :math:`\sigma((D_{\hat y} - \min_{c \ne \hat y} D_c) / \tau)`, with :math:`D_c` the mean
    distance to the nearest training activations of class c (:func:`class_distances`). High
    when the activation sits nearer to another class than to the predicted one, as the kNN
    vote. After Sitawarin & Wagner, arXiv:1903.08333."""
    own = dist.gather(1, pred[:, None]).squeeze(1)
    other = dist.scatter(1, pred[:, None], float("inf")).amin(1)
    gap = torch.where(own.isinf() & other.isinf(), 0.0, own - other)  # no class to compare
    return torch.sigmoid(gap / tau)


def surrogate_temperature(dist: Tensor, labels: Tensor) -> float:
    """tau for :func:`soft_knn_score`: the median gap |D_y - min_{c != y} D_c| on clean rows."""
    own = dist.gather(1, labels[:, None]).squeeze(1)
    other = dist.scatter(1, labels[:, None], float("inf")).amin(1)
    return float((own - other).abs().median().clamp_min(1e-6))


class DeepKNN(Detector):
    r"""Deep k-nearest neighbours: kNN at every layer, conformal calibration, credibility.

    For an input x and a label j, the nonconformity is

    .. math::  \alpha(x, j) = \sum_{l} |\{ z \in \Omega_l(x) : \mathrm{label}(z) \ne j \}|

    where :math:`\Omega_l(x)` are the k nearest training activations at layer l. With the
    nonconformities :math:`A = \{\alpha(x_c, y_c)\}` of a held-out calibration set, the
    empirical p-value of label j is :math:`p_j(x) = |\{\alpha \in A : \alpha \ge
    \alpha(x, j)\}| / |A|`; the credibility is :math:`p_{\hat y}(x)` for the label judged
    (the network's prediction by default, or the DkNN's own argmax). Score = 1 - credibility.

    Args:
        layers: layers to search (default: every module holding parameters, in order).
        k: neighbours per layer (75 in the paper).
        calibration: size of the calibration split of the fitting data (int), or a fraction.
        label: "model" (credibility of the network's prediction) or "dknn" (of the DkNN's).
        surrogate_neighbours: m of the smooth surrogate for adaptive attacks (the mean over
            layers of :func:`soft_knn_score`).
        batch_size, seed: see :class:`~advlab.detectors.detector.Detector`; the seed draws the
            calibration split.

    References: Papernot & McDaniel, "Deep k-nearest neighbors: towards confident,
    interpretable and robust deep learning", arXiv:1803.04765.
    """

    differentiable = True

    def __init__(self, layers: Sequence[str] | None = None, k: int = 75, *,
                 calibration: int | float = 0.1, label: str = "model", precise: bool = False,
                 surrogate_neighbours: int = 10, batch_size: int = 500, seed: int = 0) -> None:
        super().__init__(batch_size=batch_size, seed=seed)
        if label not in ("model", "dknn"):
            raise InputError(f"label must be 'model' or 'dknn', got {label!r}")
        if k < 1:
            raise InputError(f"k must be >= 1, got {k}")
        self.layers = None if layers is None else list(layers)
        self.k, self.calibration, self.label, self.precise = k, calibration, label, precise
        self.surrogate_neighbours = surrogate_neighbours

    def _fit(self, model: Model, x: Tensor, y: Tensor, x_adv: Tensor | None) -> None:
        self.layers_ = self.layers or parametric_layers(model)
        n_cal = int(self.calibration if self.calibration >= 1 else
                    round(self.calibration * len(x)))
        if not 1 <= n_cal <= len(x) - self.k:
            raise InputError(f"calibration split of {n_cal} leaves too few of {len(x)} inputs "
                             f"for k={self.k}")
        perm = torch.randperm(len(x), generator=self.generator(torch.device("cpu")))
        perm = perm.to(x.device)
        cal, tr = perm[:n_cal], perm[n_cal:]
        _, acts = collect_activations(model, x[tr], self.layers_, self.batch_size)
        self.train_acts_, self.train_labels_ = acts, y[tr].clone()
        counts = torch.cat([self._counts(model, b) for b in x[cal].split(self.batch_size)])
        alpha = len(self.layers_) * self.k - counts.gather(1, y[cal][:, None]).squeeze(1)
        self.calibration_alpha_ = alpha.sort().values
        n = min(len(tr), 500)
        self.tau_ = {name: surrogate_temperature(
            class_distances(a[:n], a, self.train_labels_, self.num_classes_ or 0,
                            self.surrogate_neighbours), self.train_labels_[:n])
            for name, a in acts.items()}

    def _counts(self, model: Model, x: Tensor) -> Tensor:
        """N x K: neighbours of each label, summed over layers."""
        return self._counts_and_logits(model, x)[0]

    def _counts_and_logits(self, model: Model, x: Tensor) -> tuple[Tensor, Tensor]:
        with torch.no_grad():
            logits, acts = forward_with_activations(model, x, self.layers_)
        counts = torch.zeros(len(x), logits.shape[1], device=x.device)
        for name in self.layers_:
            _, i = knn_search(acts[name], self.train_acts_[name], self.k, precise=self.precise)
            labels = self.train_labels_[i]
            counts.scatter_add_(1, labels, torch.ones_like(labels, dtype=torch.float))
        return counts, logits

    def p_values(self, x: Tensor) -> Tensor:
        """Empirical p-values N x K of every label."""
        model = self.check_model()
        self.check_inputs(x)
        return torch.cat([self._p_values(model, b)[0] for b in x.split(self.batch_size)])

    def _p_values(self, model: Model, x: Tensor) -> tuple[Tensor, Tensor]:
        counts, logits = self._counts_and_logits(model, x)
        alpha = len(self.layers_) * self.k - counts
        cal = self.calibration_alpha_.float()
        # |{a in A : a >= alpha}| = |A| - |{a < alpha}|
        below = torch.searchsorted(cal, alpha.reshape(-1).contiguous(), right=False)
        p = (len(cal) - below).reshape(alpha.shape).float() / len(cal)
        return p, logits

    def _score(self, model: Model, x: Tensor, generator: torch.Generator) -> Tensor:
        p, logits = self._p_values(model, x)
        judged = logits.argmax(1) if self.label == "model" else p.argmax(1)
        return 1.0 - p.gather(1, judged[:, None]).squeeze(1)

    def _score_torch(self, model: Model, x: Tensor, generator: torch.Generator) -> Tensor:
        """Surrogate: the mean over layers of :func:`soft_knn_score` (the conformal p-value
        is a step function of neighbour counts)."""
        logits, acts = forward_with_activations(model, x, self.layers_)
        pred = logits.argmax(1)
        return torch.stack([
            soft_knn_score(class_distances(acts[n], self.train_acts_[n], self.train_labels_,
                                           self.num_classes_ or 0, self.surrogate_neighbours),
                           pred, self.tau_[n])
            for n in self.layers_]).mean(0)
