"""advlab's files: atomic writes, fingerprints, checkpoints and the on-disk model cache.

- :func:`atomic_write` / :func:`atomic_file`: readers see the old content or the new one,
  never a torn file (a temporary file in the same directory, fsynced, then
  :func:`os.replace`).
- :func:`fingerprint_model` / :func:`fingerprint_data` / :func:`fingerprint_architecture`:
  sha256 digests (16 hex digits) of a model's parameters and buffers (names included), of a
  data set's tensors, and of a model's parameter names and shapes alone.
- :func:`write_checkpoint` / :func:`read_checkpoint`: tensors and a JSON state in one
  safetensors file, plus the state as JSON beside it for people.
- :func:`cached_model`: a model trained once and cached as safetensors under
  ``$ADVLAB_HOME/models/<name>.safetensors`` with the facts that must match to reuse it (its
  *key*) in the file's metadata; a missing, corrupt or mismatching file is retrained.

Weight files are safetensors; a user's ``.pt`` file is read only through
``torch.load(weights_only=True)``. advlab never unpickles arbitrary objects.
"""
from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import pickle
import tempfile
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import load_file, save_file
from torch import Tensor, nn

from advlab.errors import DataError, ModelFileError

log = logging.getLogger(__name__)

# ----------------------------------------------------------------------------- atomic writes


@contextlib.contextmanager
def atomic_file(path: str | os.PathLike) -> Iterator[str]:
    """``with atomic_file(path) as tmp:`` write ``tmp`` (a path in the same directory); on a
    clean exit it is fsynced and renamed over ``path``, on an error removed.

    The file gets the usual mode (0666 less the umask), not mkstemp's 0600.
    """
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    except OSError as exc:
        raise DataError(f"cannot write {path}: {exc.strerror or exc}") from exc
    os.close(fd)
    try:
        os.chmod(tmp, 0o666 & ~_umask())
        yield tmp
        with open(tmp, "ab") as f:  # a writable handle: fsync needs one on some systems
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except OSError as exc:  # a full disk, a read-only file system: one clear error
        raise DataError(f"cannot write {path}: {exc.strerror or exc}") from exc
    finally:
        Path(tmp).unlink(missing_ok=True)


def atomic_write(path: str | os.PathLike, data: bytes | str) -> Path:
    """Write ``data`` to ``path`` atomically (see :func:`atomic_file`).

    Returns:
        The path written.
    """
    raw = data.encode() if isinstance(data, str) else data
    with atomic_file(path) as tmp, open(tmp, "wb") as f:
        f.write(raw)
    return Path(path)


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


# ----------------------------------------------------------------------------- fingerprints


def _digest(items: Iterator[tuple[str, Tensor]]) -> str:
    h = hashlib.sha256()
    for name, t in items:
        t = t.detach().cpu().contiguous()
        h.update(f"{name}{t.dtype}:{tuple(t.shape)};".encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes())
    return h.hexdigest()[:16]


def fingerprint_model(model: nn.Module) -> str:
    """sha256 (16 hex digits) of the model's parameters and buffers, names included: equal
    weights give equal fingerprints, any change of a weight or buffer another."""
    return _digest((f"{k}:", v) for k, v in sorted(model.state_dict().items()))


def fingerprint_data(*tensors: Tensor) -> str:
    """sha256 (16 hex digits) of tensors (e.g. images and labels): dtypes, shapes, values."""
    return _digest(("", t) for t in tensors)


def fingerprint_architecture(model: nn.Module) -> str:
    """sha256 (16 hex digits) of the names and shapes of the model's parameters and buffers,
    in state-dict order, not of their values: every model of one architecture shares it."""
    spec = ";".join(f"{k}{tuple(v.shape)}" for k, v in model.state_dict().items())
    return hashlib.sha256(spec.encode()).hexdigest()[:16]


# ----------------------------------------------------------------------------- checkpoints


def write_checkpoint(path: str | Path, tensors: Mapping[str, Tensor],
                     state: Mapping[str, Any]) -> None:
    """Write tensors and a JSON state into one safetensors file, atomically, and the state
    again as ``<name>.json`` beside it (for people; :func:`read_checkpoint` reads the
    safetensors file)."""
    path = Path(path)
    flat = {k: v.detach().cpu().contiguous() for k, v in tensors.items()}
    meta = {"advlab": json.dumps(state, sort_keys=True)}
    with atomic_file(path) as tmp:
        save_file(flat, tmp, metadata=meta)
    atomic_write(path.with_suffix(".json"), json.dumps(state, indent=1, sort_keys=True))


def read_checkpoint(path: str | Path) -> tuple[dict[str, Tensor], dict[str, Any]]:
    """What :func:`write_checkpoint` wrote: (tensors, state)."""
    try:
        with safe_open(str(path), framework="pt") as f:
            state = json.loads((f.metadata() or {}).get("advlab", "{}"))
            tensors = {k: f.get_tensor(k) for k in f.keys()}  # noqa: SIM118
    except (SafetensorError, OSError, ValueError) as e:
        raise ModelFileError(f"cannot read checkpoint {path}: {e}") from e
    return tensors, state


# ----------------------------------------------------------------------------- weight files


def save_weights(model: nn.Module, path: str | Path,
                 metadata: Mapping[str, Any] | None = None) -> Path:
    """Write the model's state dict as safetensors, atomically.

    Args:
        model: the model whose parameters and buffers are saved.
        path: the target file (its directory is created).
        metadata: JSON-serialisable facts stored in the file's header
            (read back with :func:`read_metadata`).

    Returns:
        The path written.
    """
    path = Path(path).expanduser()
    try:
        header = {"format": "pt", "advlab": json.dumps(dict(metadata or {}), sort_keys=True)}
    except TypeError as e:
        raise ModelFileError(f"metadata must be JSON-serialisable: {e}") from e
    tensors = {k: v.detach().cpu().clone().contiguous() for k, v in model.state_dict().items()}
    with atomic_file(path) as tmp:
        save_file(tensors, tmp, metadata=header)
    return path


def read_metadata(path: str | Path) -> dict[str, Any]:
    """The metadata dict that :func:`save_weights` stored in a safetensors file ({} if none)."""
    path = _existing(path)
    try:
        with safe_open(str(path), framework="pt") as f:
            header = f.metadata() or {}
        return json.loads(header.get("advlab", "{}"))
    except (SafetensorError, OSError, ValueError) as e:
        raise ModelFileError(f"cannot read the metadata of {path}: {e}") from e


def load_weights(model: nn.Module, path: str | Path, strict: bool = True) -> nn.Module:
    """Load weights from a file into ``model`` (in place), never unpickling arbitrary objects.

    A safetensors file is read directly; a ``torch.save`` file (zip archive or pickle) only
    through ``torch.load(weights_only=True)``, which refuses anything but tensors and plain
    containers. A checkpoint dict holding a ``"state_dict"`` entry is accepted.

    Args:
        model: the architecture to fill.
        path: the weight file.
        strict: every key and shape must match.

    Returns:
        ``model``.

    Raises:
        ModelFileError: a missing, corrupt, untrusted or mismatching file.
    """
    path = _existing(path)
    state = _read_state_dict(path)
    if strict:
        _check_fit(model.state_dict(), state, path)
    try:
        model.load_state_dict(state, strict=strict)
    except RuntimeError as e:
        raise ModelFileError(f"{path} does not fit the model: {e}") from e
    return model


def _check_fit(own: Mapping[str, Tensor], state: Mapping[str, Tensor], path: Path) -> None:
    """Every key of the model in the file and back, with equal shapes; the message names
    the first mismatch."""
    def more(names: list[str]) -> str:
        return f" (and {len(names) - 1} more)" if len(names) > 1 else ""

    missing = [k for k in own if k not in state]
    unexpected = [k for k in state if k not in own]
    if missing or unexpected:
        head = (f"the model's {missing[0]!r} is not in the file{more(missing)}" if missing
                else f"the file's {unexpected[0]!r} is not in the model{more(unexpected)}")
        raise ModelFileError(f"{path} does not fit the model: {head}; the model has "
                             f"{len(own)} tensors, the file {len(state)}")
    for k, v in own.items():
        if tuple(state[k].shape) != tuple(v.shape):
            raise ModelFileError(f"{path} does not fit the model: {k!r} has shape "
                                 f"{tuple(state[k].shape)} in the file but {tuple(v.shape)} "
                                 f"in the model")


def _existing(path: str | Path) -> Path:
    path = Path(path).expanduser()
    if not path.exists():
        raise ModelFileError(f"model file {path} does not exist")
    if not path.is_file():
        what = "a directory" if path.is_dir() else "not a regular file"
        raise ModelFileError(f"model file {path} is {what}; give a weights file")
    return path


def _read_state_dict(path: Path) -> dict[str, Tensor]:
    with open(path, "rb") as f:
        head = f.read(9)
    if len(head) == 9 and head[8:9] == b"{":  # safetensors: u64 header length, then JSON
        try:
            return load_file(str(path))
        except (SafetensorError, OSError) as e:
            raise ModelFileError(f"{path} is a corrupt safetensors file: {e}") from e
    if head[:4] == b"PK\x03\x04" or head[:1] == b"\x80":  # torch.save zip archive, or pickle
        kind = "a zip archive" if head[:1] == b"P" else "a pickle"
        if path.suffix == ".safetensors":  # torch.load would read it as safetensors
            raise ModelFileError(
                f"{path} is named .safetensors but holds {kind} (what torch.save writes), not "
                f"safetensors; rename it to .pt, or re-save the state dict with advlab.zoo.save")
        try:
            with open(path, "rb") as f:
                obj = torch.load(f, map_location="cpu", weights_only=True)
        except (pickle.UnpicklingError, RuntimeError, ValueError, EOFError, OSError) as e:
            raise ModelFileError(
                f"refused to load {path}: torch.load(weights_only=True) rejected it (it holds "
                f"more than tensors, or is corrupt). advlab never unpickles arbitrary objects; "
                f"re-save the state dict with advlab.zoo.save (safetensors)") from e
        return _as_state_dict(obj, path)
    raise ModelFileError(f"{path} is neither a safetensors file nor a torch.save weights file")


def _as_state_dict(obj: object, path: Path) -> dict[str, Tensor]:
    if isinstance(obj, Mapping) and isinstance(obj.get("state_dict"), Mapping):
        obj = obj["state_dict"]
    if not isinstance(obj, Mapping) or not all(
            isinstance(k, str) and isinstance(v, Tensor) for k, v in obj.items()):
        raise ModelFileError(f"{path} does not hold a state dict (a mapping of names to tensors)")
    return dict(obj)


# ----------------------------------------------------------------------------- the model cache


def cached_model(path: Path, key: Mapping[str, Any], build: Callable[[], nn.Module],
                 train: Callable[[], tuple[nn.Module, dict[str, Any]]], *,
                 train_if_missing: bool = True) -> nn.Module:
    """A model from its cache file when the file's metadata matches ``key``, else trained by
    ``train`` and cached (with ``key`` and the facts ``train`` returns as metadata).

    Args:
        path: the cache file.
        key: the facts that must match to reuse the file (name, version, training settings).
        build: the untrained architecture to fill from the file.
        train: returns the trained model and extra metadata (accuracy, time, ...).
        train_if_missing: train when no usable file exists; if False, raise.

    Returns:
        The model in eval mode.

    Raises:
        ModelFileError: no usable cache file and ``train_if_missing`` is False.
    """
    if path.exists():
        try:
            return _load_cached(path, key, build)
        except ModelFileError as e:
            if not train_if_missing:
                raise
            log.warning("unusable cache file %s (%s); retraining", path, e)
    elif not train_if_missing:
        raise ModelFileError(f"{path.stem} is not cached at {path}; load it with "
                             f"train_if_missing=True to train it")
    model, facts = train()
    save_weights(model, path, {**facts, **key})
    return model.eval()


def _load_cached(path: Path, key: Mapping[str, Any], build: Callable[[], nn.Module]) -> nn.Module:
    meta = read_metadata(path)
    wrong = {k: meta.get(k) for k, v in key.items() if meta.get(k) != v}
    if wrong:
        raise ModelFileError(f"{path} holds {wrong}, expected "
                             f"{ {k: key[k] for k in wrong} }")
    return load_weights(build(), path).eval()
