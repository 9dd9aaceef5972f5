"""The run's inputs, loaded or built once in the driver: models, images, defended models.

Models are zoo names, cached robust models (:data:`advlab.defenses.ROBUST`) or a user's
safetensors weights for a zoo architecture; defenses come from the defense registry
(:func:`advlab.defenses.get`). A defense that trains a model is cached under
``$ADVLAB_HOME/defenses`` like the zoo models, keyed by the model's weights, the defense,
the seed, the training data and advlab's version.
"""
from __future__ import annotations

import copy
import hashlib
import logging
from typing import Any

import torch
from torch import Tensor, nn

import advlab
from advlab import data as datasets
from advlab import defenses, zoo
from advlab.errors import AdvlabError, ConfigError
from advlab.evaluation.config import DataSpec, ModelSpec, PluginSpec, RunConfig
from advlab.evaluation.plan import plugin_key
from advlab.evaluation.records import canonical_json

log = logging.getLogger(__name__)


def fingerprint_model(model: nn.Module) -> str:
    """sha256 (16 hex digits) of the model's parameters and buffers, names included."""
    h = hashlib.sha256()
    for name, t in sorted(model.state_dict().items()):
        t = t.detach().cpu().contiguous()
        h.update(f"{name}:{t.dtype}:{tuple(t.shape)};".encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes())
    return h.hexdigest()[:16]


def fingerprint_data(x: Tensor, y: Tensor) -> str:
    """sha256 (16 hex digits) of the images and labels."""
    h = hashlib.sha256()
    for t in (x, y):
        t = t.detach().cpu().contiguous()
        h.update(f"{t.dtype}:{tuple(t.shape)};".encode())
        h.update(t.numpy().tobytes())
    return h.hexdigest()[:16]


def load_model(spec: ModelSpec) -> nn.Module:
    """A zoo model or a cached robust model (:data:`advlab.defenses.ROBUST`, such as
    ``mnist-cnn-trades``) by name, or a user's safetensors weights for a zoo architecture;
    trained on first use and cached."""
    if spec.file is None:
        if spec.name in defenses.ROBUST:
            return defenses.load_robust(spec.name)
        return zoo.load(spec.name)
    return zoo.load_weights(zoo.build(spec.arch), spec.file).eval()


def load_data(spec: DataSpec, split: str | None = None,
              n: int | None = None) -> tuple[Tensor, Tensor]:
    """The first ``n`` images of a split of the configured data set."""
    return datasets.load(spec.name, split=split or spec.split, root=spec.root, n=n)


def class_names(spec: DataSpec) -> list[str] | None:
    """The data set's class names when advlab.data knows them (for the report)."""
    try:
        return list(datasets.info(spec.name, spec.root).classes)
    except AdvlabError as exc:
        log.info("no class names for %s: %s", spec.name, exc)
        return None


def resolve_device(name: str | None) -> torch.device:
    """A torch device from a name (None: cpu), with a clear error for unavailable CUDA."""
    dev = torch.device(name or "cpu")
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError("device 'cuda' requested but CUDA is not available here")
    return dev


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
                m = load_model(spec)
            elif _device_of(m) != self.device:
                m = copy.deepcopy(m)  # never move the caller's model
            out[spec.name] = m.to(self.device).eval()
        return out

    def data(self) -> tuple[Tensor, Tensor]:
        """The evaluation images and labels, on the device."""
        x, y = self._data if self._data is not None else load_data(self.cfg.data,
                                                                   n=self.cfg.data.n)
        return x.to(self.device), y.to(self.device)

    def train(self) -> tuple[Tensor, Tensor]:
        """The images that detectors and trained defenses fit on (loaded once)."""
        if self._train is None:
            self._train = load_data(self.cfg.data, self.cfg.data.train_split,
                                    self.cfg.data.fit_n)
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
        """A trained defense from ``$ADVLAB_HOME/defenses``; trained and cached (atomically)
        when missing or unusable."""
        x, y = self.train()
        key = canonical_json({"model": fingerprint_model(base), "defense": plugin_key(spec),
                              "seed": self.cfg.seed, "data": fingerprint_data(x, y),
                              "advlab": advlab.__version__})
        digest = hashlib.sha256(key.encode()).hexdigest()[:16]
        path = datasets.home() / "defenses" / f"{name}-{spec.name}-{digest}.safetensors"
        if path.exists():
            try:
                return zoo.load_weights(copy.deepcopy(base), path).eval()
            except AdvlabError as exc:
                log.warning("unusable cached defense %s (%s); retraining", path, exc)
        model = recipe.build(base, self.train, self.cfg.seed)
        zoo.save(model, path, {"model": name, "defense": spec.name, "params": spec.params,
                               "seed": self.cfg.seed})
        return model
