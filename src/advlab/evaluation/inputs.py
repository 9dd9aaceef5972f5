"""The run's inputs, loaded or built once in the driver: models, images, defended models.

Models are zoo names, cached robust models (:data:`advlab.defenses.ROBUST`) or a user's
own network (:func:`advlab.models.build`); defenses come from the defense registry
(:func:`advlab.defenses.get`). A defense that trains a model is cached under
``$ADVLAB_HOME/defenses`` like the zoo models, keyed by the model's weights, the defense,
the seed, the training data and advlab's version.
"""
from __future__ import annotations

import copy
import functools
import logging
import os
import platform
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import sklearn
import torch
from torch import Tensor, nn

import advlab
from advlab import attacks, defenses, io, zoo
from advlab import data as datasets
from advlab import models as models_
from advlab.detectors import registry as detector_registry
from advlab.errors import (
    AdvlabError,
    ConfigError,
    DataError,
    InputError,
    ModelModeError,
    UnknownNameError,
)
from advlab.evaluation.config import DataSpec, ModelSpec, PluginSpec, RunConfig
from advlab.evaluation.plan import plugin_key
from advlab.evaluation.records import cell_key, check_writable
from advlab.io import fingerprint_data, fingerprint_model
from advlab.validation import check_eval_mode

log = logging.getLogger(__name__)


def load_model(spec: ModelSpec) -> nn.Module:
    """A cached robust model (:data:`advlab.defenses.ROBUST`, such as ``mnist-cnn-trades``)
    by name, else what :func:`advlab.models.build` makes of the spec (a zoo model, or the
    user's own network and weights)."""
    if spec.is_zoo and spec.name in defenses.ROBUST:
        return defenses.load_robust(spec.name)
    return models_.build(spec)


def load_data(spec: DataSpec, split: str | None = None, n: int | None = None,
              seed: int = 0) -> tuple[Tensor, Tensor]:
    """``n`` images of a split of the configured data set (chosen by ``spec.subset`` with
    ``seed``), with the configured channels and size."""
    return datasets.load(spec.name, split=split or spec.split, root=spec.root, n=n,
                         subset=spec.subset, seed=seed, channels=spec.channels,
                         resize=spec.resize)


def class_names(spec: DataSpec) -> list[str] | None:
    """The data set's class names when advlab.data knows them (for the report)."""
    try:
        return list(datasets.info(spec.name, spec.root).classes)
    except AdvlabError as exc:
        log.info("no class names for %s: %s", spec.name, exc)
        return None


def resolve_device(name: str | None) -> torch.device:
    """A torch device from a name: cpu (None), cuda, cuda:N, mps, or auto (cuda when
    available), with a clear error for an unknown device or one that is not there."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(name or "cpu")
    except (RuntimeError, TypeError) as exc:
        raise ConfigError(f"unknown device {name!r}; use auto, cpu, cuda, cuda:N or mps") \
            from exc
    available = {"cpu": True, "cuda": torch.cuda.is_available(),
                 "mps": torch.backends.mps.is_available()}
    if dev.type not in available:
        raise ConfigError(f"device {name!r} is not one advlab runs on; use cpu, cuda or mps")
    if not available[dev.type]:
        raise ConfigError(f"device {name!r} requested but {dev.type.upper()} is not available "
                          "here")
    if dev.type == "cuda" and dev.index is not None and dev.index >= torch.cuda.device_count():
        raise ConfigError(f"device {name!r} requested but only {torch.cuda.device_count()} "
                          f"CUDA device(s) are here")
    return dev


def check_models(models: dict[str, nn.Module], x: Tensor, y: Tensor,
                 classes: list[str] | None = None) -> None:
    """Before any attack: each model is in eval mode (never switched for the caller), has
    the images' dtype, takes their shape and returns one logit per class of the data (one
    probe forward each); with no class names (data given as tensors), at least one per label.

    Raises:
        ModelModeError: a model in train mode.
        InputError: images of a dtype or shape the model does not take.
        ModelOutputError: outputs that are not logits of the data's classes.
    """
    k = len(classes) if classes else int(y.max()) + 1
    for name, model in models.items():
        try:
            check_eval_mode(model)
        except ModelModeError as exc:
            raise ModelModeError(f"model {name!r}: {exc}") from None
        p = next(iter(model.parameters()), None)
        if p is not None and p.is_floating_point() and p.dtype != x.dtype:
            raise InputError(f"model {name!r} has {p.dtype} weights but the images are "
                             f"{x.dtype}; convert one of them")
        models_.check_input(model, x, k, name, exact=bool(classes))


# ----------------------------------------------------------------------------- before any work


def check_buildable(cfg: RunConfig, given: Sequence[str] = ()) -> dict[str, nn.Module]:
    """Build every attack of ``cfg`` at each eps of its grid, every detector and every
    defense recipe (a transformation defense around an identity), check the names of the
    models (other than those ``given``) and build the user's own (its weights loaded), so
    that a bad parameter or name is an error before the first cell (and any training).

    Returns:
        The user's own models it built (name -> model in eval mode), which the run then
        uses (:class:`Inputs`' ``models``): each is built once.

    Raises:
        ConfigError: naming the attack, defense or detector and what is wrong with it.
        UnknownNameError: an unknown model, defense, detector, transform or training method.
    """
    built: dict[str, nn.Module] = {}
    what = [(f"models[{i}] ({m.name})", functools.partial(_check_model, m, built))
            for i, m in enumerate(cfg.models) if m.name not in given]
    what += [(f"attacks[{i}] ({a.name})", functools.partial(
        attacks.get, a.name, **a.params, **({} if e is None else {"eps": e}), seed=cfg.seed))
        for i, a in enumerate(cfg.attacks) for e in a.eps]
    what += [(f"defenses[{i}] ({d.name})", functools.partial(_check_defense, d, cfg.seed))
             for i, d in enumerate(cfg.defenses) if d.name != "none"]
    what += [(f"detectors[{i}] ({d.name})", functools.partial(
        detector_registry.get, d.name, **d.params)) for i, d in enumerate(cfg.detectors)]
    for where, build in what:
        try:
            build()
        except UnknownNameError:
            raise  # it names what is unknown and what exists
        except AdvlabError as exc:
            raise ConfigError(f"{where}: {exc}") from exc
    return built


def _check_model(spec: ModelSpec, built: dict[str, nn.Module]) -> None:
    if not spec.is_zoo:  # the factory imports and runs, the weights fit its network
        built[spec.name] = load_model(spec).eval()
    elif spec.name not in defenses.ROBUST and spec.name not in zoo.available():
        raise UnknownNameError("model", spec.name, [*zoo.available(), *defenses.ROBUST])


def _check_defense(spec: PluginSpec, seed: int) -> None:
    recipe = defenses.get(spec.name, **spec.params)  # checks its parameters
    if not defenses.available()[spec.name].trained:  # built around an identity
        recipe.build(nn.Identity(), _no_training_data, seed)


def _no_training_data() -> tuple[Tensor, Tensor]:
    raise AssertionError("a defense that is not 'trained' in its taxonomy needs training data")


def check_storage(cfg: RunConfig, root: Path, given: Sequence[str] = ()) -> None:
    """The folders a run writes, checked before any work: ``root`` (the results database)
    and the run folder; ``$ADVLAB_HOME`` when a model (other than those ``given``) is not
    cached yet or a defense trains, so a read-only or full cache fails before training,
    not after.

    Raises:
        DataError: a folder that cannot be written, or a full disk.
    """
    check_writable(root, "the results folder")
    if (root / cfg.name).exists() and not (root / cfg.name).is_dir():
        raise DataError(f"the run folder {root / cfg.name} is a file")
    check_writable(root / cfg.name, "the run folder")
    trains = any(d.name != "none" and defenses.available()[d.name].trained
                 for d in cfg.defenses)
    check_cache([m for m in cfg.models if m.name not in given], trains)


def check_cache(models: Sequence[ModelSpec], trains: bool = False) -> None:
    """``$ADVLAB_HOME`` must be writable when one of ``models`` is a zoo or robust model not
    cached yet, or when a defense ``trains``: checked before the training it would lose.

    Raises:
        DataError: it cannot be written, or its disk is full.
    """
    uncached = [m.name for m in models if m.is_zoo and (
        m.name in defenses.ROBUST or m.name in zoo.available()) and not (
        datasets.home() / "models" / f"{m.name}.safetensors").exists()]
    if uncached or trains:
        check_writable(datasets.home(), "the model cache $ADVLAB_HOME")


def _device_of(model: nn.Module) -> torch.device:
    p = next(iter(model.parameters()), None)
    return torch.device("cpu") if p is None else p.device


class Inputs:
    """What a run computes on, loaded once: its models (the caller's or loaded), its
    evaluation and training images, and each (model, defense)'s defended model.

    Args:
        cfg: the run's configuration.
        device: where the models and images go (a caller's model is copied, never moved).
        models: name -> model, instead of loading the configured model of that name.
        data, train_data: (x, y) instead of loading the configured images.
    """

    def __init__(self, cfg: RunConfig, device: torch.device,
                 models: dict[str, nn.Module] | None = None,
                 data: tuple[Tensor, Tensor] | None = None,
                 train_data: tuple[Tensor, Tensor] | None = None) -> None:
        self.cfg, self.device = cfg, device
        self.given_data = data is not None
        self._given, self._data, self._train = models or {}, data, train_data
        self._defended: dict[tuple[str, str], nn.Module] = {}

    def models(self) -> dict[str, nn.Module]:
        """Name -> model, in eval mode on the device."""
        out = {}
        for spec in self.cfg.models:
            m = self._given.get(spec.name)
            if m is None:
                m = load_model(spec).eval()
            elif _device_of(m) != self.device:
                m = copy.deepcopy(m)  # never move the caller's model
            out[spec.name] = m.to(self.device)  # a caller's model in train mode: check_models
        return out

    def data(self) -> tuple[Tensor, Tensor]:
        """The evaluation images and labels, on the device."""
        x, y = self._data if self._data is not None else \
            load_data(self.cfg.data, n=self.cfg.data.n, seed=self.cfg.seed)
        return x.to(self.device), y.to(self.device)

    def train(self) -> tuple[Tensor, Tensor]:
        """The images that detectors and trained defenses fit on (loaded once)."""
        if self._train is None:
            spec, seed = self.cfg.data, self.cfg.seed
            x, y = load_data(spec, spec.train_split, seed=seed)
            if spec.fit_n is not None and spec.fit_n < len(x):  # up to fit_n
                idx = datasets.choose(y, spec.fit_n, spec.subset, seed)
                x, y = x[idx].clone(), y[idx].clone()
            self._train = x, y
        x, y = self._train
        return x.to(self.device), y.to(self.device)

    def defended(self, name: str, base: nn.Module, spec: PluginSpec) -> nn.Module:
        """Model ``name`` behind defense ``spec`` ("none": the model itself), in eval mode,
        built once per run (trained ones cached under ``$ADVLAB_HOME/defenses``)."""
        key = (name, plugin_key(spec))
        if key not in self._defended:
            if spec.name == "none":
                self._defended[key] = base
            else:
                log.info("building defense %s for %s", spec.name, name)
                recipe = defenses.get(spec.name, **spec.params)
                trained = defenses.available()[spec.name].trained
                self._defended[key] = self._trained(name, base, spec, recipe) if trained \
                    else recipe.build(base, self.train, self.cfg.seed)
        return self._defended[key]

    def built(self) -> dict[tuple[str, str], nn.Module]:
        """(model, defense key) -> every defended model built so far."""
        return dict(self._defended)

    def _trained(self, name: str, base: nn.Module, spec: PluginSpec, recipe: Any
                 ) -> nn.Module:
        """A trained defense from ``$ADVLAB_HOME/defenses`` (:func:`advlab.io.cached_model`,
        the one model cache); trained and cached (atomically) when missing or unusable."""
        x, y = self.train()
        digest = cell_key({"model": fingerprint_model(base), "defense": plugin_key(spec),
                           "seed": self.cfg.seed, "data": fingerprint_data(x, y),
                           "advlab": advlab.__version__})[:16]  # the same digest as a cell's
        path = datasets.home() / "defenses" / f"{name}-{spec.name}-{digest}.safetensors"
        return io.cached_model(
            path, {"model": name, "defense": spec.name, "params": spec.params,
                   "seed": self.cfg.seed}, lambda: copy.deepcopy(base),
            lambda: (recipe.build(base, self.train, self.cfg.seed), {}))


def environment(device: torch.device, seed: int, precision: str = "fp32") -> dict[str, Any]:
    """Versions, machine and settings, for the report's environment section."""
    return {"advlab": advlab.__version__, "python": platform.python_version(),
            "torch": torch.__version__, "numpy": np.__version__,
            "scikit-learn": sklearn.__version__, "platform": platform.platform(),
            "processor": platform.processor() or platform.machine(),
            "cpus": os.cpu_count(), "torch_threads": torch.get_num_threads(),
            "device": str(device), "cuda": torch.cuda.get_device_name(device)
            if device.type == "cuda" else None, "seed": seed, "precision": precision}
