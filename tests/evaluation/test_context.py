"""advlab.evaluation.context: the images in chunks, shipped chunk by chunk, and the settings
and context the tasks share. (A whole run through the executors, each shard fetching only its
chunk, is test_execute.py's ``test_shipped_images_travel_per_shard``.)"""
from __future__ import annotations

import pickle
from typing import Any

import pytest
import torch

from advlab.evaluation.config import RunConfig
from advlab.evaluation.context import Context, Held, Images, Pair, Settings

X = torch.arange(40.0).view(10, 1, 2, 2) / 40
Y = torch.arange(10)


class Handle:
    """A shipped chunk: a pickled copy (as in another process), noting each fetch."""

    def __init__(self, index: int, pair: Pair, log: list[int]) -> None:
        self.index, self.blob, self.log = index, pickle.dumps(pair), log

    def get(self) -> Pair:
        self.log.append(self.index)
        return pickle.loads(self.blob)


def ship(images: Images) -> tuple[Images, list[Pair], list[int]]:
    """``images`` shipped: (the copy, the pairs ``put`` received, the log of fetches)."""
    put, log = [], []

    def handle(pair: Pair) -> Handle:
        put.append(pair)
        return Handle(len(put) - 1, pair, log)

    return images.shipped(handle), put, log


def test_images_in_chunks_give_every_row_range() -> None:
    im = Images.of(X, Y, 4)
    assert (len(im), im.size, [len(c.get()[0]) for c in im.chunks]) == (10, 4, [4, 4, 2])
    for start in range(10):
        for stop in range(start + 1, 13):               # stop past the end: up to the end
            x, y = im.rows(start, stop)
            assert torch.equal(x, X[start:stop]) and torch.equal(y, Y[start:stop])
    whole = Images.of(X, Y)
    assert (whole.size, len(whole.chunks)) == (10, 1) and torch.equal(whole.rows(0, 10)[0], X)
    assert (len(Images.of(X[:0], Y[:0], 4).chunks), len(Images.of(X[:0], Y[:0], 4))) == (0, 0)
    for start, stop in ((3, 3), (10, 12)):
        with pytest.raises(ValueError, match="no rows"):
            im.rows(start, stop)


def test_shipped_images_fetch_only_the_chunks_they_need() -> None:
    im = Images.of(X, Y, 4)
    shipped, put, log = ship(im)
    assert [torch.equal(p[0], X[4 * i:4 * i + 4]) for i, p in enumerate(put)] == [True] * 3
    assert all(isinstance(c, Held) for c in im.chunks)          # the original is unchanged
    assert (shipped.size, len(shipped)) == (4, 10)
    for (start, stop), chunks in {(4, 8): [1], (3, 5): [0, 1], (8, 100): [2],
                                  (0, 10): [0, 1, 2]}.items():
        log.clear()
        x, y = shipped.rows(start, stop)
        assert log == chunks and torch.equal(x, X[start:stop]) and torch.equal(y, Y[start:stop])


def test_a_shipped_context_ships_its_images_and_forgets_its_memo() -> None:
    settings = Settings(0, 8, (1,), (0.05,), 2, 1.0, 8, 20)
    models: dict[str, Any] = {"a": torch.nn.Flatten()}
    train = (X[:2], Y[:2])
    ctx = Context(settings, models, {}, Images.of(X, Y, 5), train, version=3,
                  clean={0: {"a": "memo"}})
    out = ctx.shipped(lambda pair: Handle(0, pair, []))
    assert out.clean == {} and ctx.clean == {0: {"a": "memo"}}
    assert (out.settings, out.models, out.train, out.version) == (settings, models, train, 3)
    assert out.models is models and all(isinstance(c, Held) for c in ctx.images.chunks)
    assert [type(c) for c in out.images.chunks] == [Handle, Handle]
    assert torch.equal(out.images.rows(2, 9)[0], X[2:9])


def test_settings_of_a_run_configuration() -> None:
    cfg = RunConfig(seed=3, batch_size="auto", precision="bf16", shifts=(1,),
                    noise=(0.1, 0.2), gallery=2, adaptive={"lam": 2, "steps": 5},
                    sanity={"max_examples": 16, "blackbox_queries": 40, "ladder_steps": 7,
                            "ladder_label_queries": 0})
    assert Settings.of(cfg) == Settings(seed=3, batch_size="auto", shifts=(1,),
                                        noise=(0.1, 0.2), gallery=2, lam=2.0, sanity_n=16,
                                        sanity_queries=40, precision="bf16",
                                        ladder={"steps": 7, "label_queries": 0})
