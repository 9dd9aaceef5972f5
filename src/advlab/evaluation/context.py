"""What the tasks of a run share: its settings, its models and its images, the images in
chunks so that a task fetches only the rows it measures.

In the driver (and in the forked workers, which inherit it) every chunk is the pair of
tensors itself. An executor that ships the context to other machines (Ray) replaces each
chunk by a handle to its copy in the object store (:meth:`Images.shipped`); a task then
fetches the chunks that its shard covers and no others. Chunks are ``shard_size`` rows, so
a shard is one chunk: an evaluation of 50,000 images over many workers moves each image to
one worker, not every image to every worker.
"""
from __future__ import annotations

import dataclasses
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Protocol

import torch
from torch import Tensor, nn

from advlab.evaluation import ladder
from advlab.evaluation.config import RunConfig

Pair = tuple[Tensor, Tensor]


class Chunk(Protocol):
    """Rows of the evaluation set, fetched by ``get()``."""

    def get(self) -> Pair: ...


@dataclass(frozen=True)
class Held:
    """A chunk held in this process."""

    pair: Pair

    def get(self) -> Pair:
        return self.pair


@dataclass(frozen=True)
class Images:
    """The evaluation images (x, y): ``n`` rows in chunks of ``size`` rows (the last may be
    shorter)."""

    chunks: tuple[Any, ...]  # Chunk
    size: int
    n: int

    @classmethod
    def of(cls, x: Tensor, y: Tensor, size: int | None = None) -> Images:
        """``x``, ``y`` in chunks of ``size`` rows (None: one chunk)."""
        size = max(size or len(x), 1)
        return cls(tuple(Held((x[a:a + size], y[a:a + size])) for a in range(0, len(x), size)),
                   size, len(x))

    def __len__(self) -> int:
        return self.n

    def rows(self, start: int, stop: int) -> Pair:
        """Rows [start, stop) as (x, y), fetching only the chunks that hold them."""
        stop = min(stop, self.n)
        if stop <= start:
            raise ValueError(f"no rows in [{start}, {stop}) of {self.n} images")
        first, last = start // self.size, (stop - 1) // self.size
        parts = [self.chunks[i].get() for i in range(first, last + 1)]
        x = parts[0][0] if len(parts) == 1 else torch.cat([p[0] for p in parts])
        y = parts[0][1] if len(parts) == 1 else torch.cat([p[1] for p in parts])
        offset = first * self.size
        return x[start - offset:stop - offset], y[start - offset:stop - offset]

    def shipped(self, put: Callable[[Pair], Chunk]) -> Images:
        """These images with every chunk replaced by ``put(chunk's pair)``, the handle of its
        shipped copy (done once per chunk: the executor's ``put`` remembers)."""
        return Images(tuple(put(c.get()) for c in self.chunks), self.size, self.n)


@dataclass(frozen=True)
class Settings:
    """The run's settings a task needs (see :class:`~advlab.evaluation.config.RunConfig`)."""

    seed: int
    batch_size: int | str
    shifts: tuple[int, ...]
    noise: tuple[float, ...]
    gallery: int
    lam: float
    sanity_n: int
    sanity_queries: int
    precision: str = "fp32"
    ladder: dict[str, Any] = field(default_factory=dict)  # its budget, from [sanity]

    @classmethod
    def of(cls, cfg: RunConfig) -> Settings:
        return cls(cfg.seed, cfg.batch_size, tuple(cfg.shifts), tuple(cfg.noise), cfg.gallery,
                   float(cfg.adaptive["lam"]), int(cfg.sanity["max_examples"]),
                   int(cfg.sanity["blackbox_queries"]), cfg.precision,
                   ladder.ladder_settings(cfg.sanity))


@dataclass
class Context:
    """What every task of a run shares, shipped to the workers once (inherited by a fork,
    or put in Ray's object store): the settings, the models, each (model, defense key)'s
    defended model, the evaluation images (in chunks, :class:`Images`)
    and, when detectors are fitted, the training images. ``version`` grows when the driver
    adds to it (a new defended model)."""

    settings: Settings
    models: dict[str, nn.Module]
    defended: dict[tuple[str, str], nn.Module]
    images: Images
    train: tuple[Tensor, Tensor] | None = None
    version: int = 0
    clean: dict[int, dict] = field(default_factory=dict, repr=False)  # per-process memo

    def shipped(self, put: Callable[[Any], Any]) -> Context:
        """This context with its image chunks as the handles that ``put`` (an executor's)
        makes, so that a task fetches only the chunks it needs."""
        return dataclasses.replace(self, images=self.images.shipped(put), clean={})
