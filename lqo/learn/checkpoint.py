"""Model checkpoints: tensors plus plain-JSON metadata in one file, never a pickle of objects.

Format (``FORMAT``): with ``safetensors`` installed, a ``.safetensors`` file whose
header metadata holds ``{"lqo": <json>}``; without it, a ``torch.save`` of
``{"format": FORMAT, "metadata": <json str>, "tensors": {name: Tensor}}``, which
``torch.load(path, weights_only=True)`` reads. Either way loading executes no code
from the file. The reader recognizes both layouts by their magic bytes.

The JSON metadata: model kind, constructor params, feature dimensions, the feature
vocabulary (table name -> id, from the caller), the schema fingerprint, label scaling
stats, the lqo version and small extras (training history).

Example::

    >>> import tempfile, torch
    >>> tmp = tempfile.TemporaryDirectory()
    >>> path = f"{tmp.name}/m.lqo"
    >>> sd = {"w": torch.ones(2, 3), "b": torch.zeros(3)}  # e.g. a network's state_dict()
    >>> _ = save_checkpoint(path, Checkpoint(kind="tree_conv", params={}, dims={}, tensors=sd, schema="abc"))
    >>> ckpt = load_checkpoint(path, expected_schema="abc")
    >>> ckpt.kind, sorted(ckpt.tensors), ckpt.tensors["w"].shape
    ('tree_conv', ['b', 'w'], torch.Size([2, 3]))
    >>> tmp.cleanup()
"""

from __future__ import annotations

import json
import os
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from lqo.errors import LqoError, MissingFileError, SchemaMismatchError

FORMAT = "lqo-plan-model/1"
_ZIP_MAGIC = b"PK\x03\x04"

try:  # optional: a safer, mmap-able format when available
    import safetensors.torch as _st
except ImportError:  # pragma: no cover - depends on the environment
    _st = None


def lqo_version() -> str:
    """The installed lqo's version ("unknown" when not installed)."""
    try:
        from importlib.metadata import version

        return version("lqo")
    except Exception:  # not installed (running from a source tree)
        return "0+unknown"


@dataclass
class Checkpoint:
    """Everything needed to rebuild a fitted model, without pickled objects."""

    kind: str
    params: dict[str, Any]
    dims: dict[str, int]
    tensors: dict[str, Tensor]
    vocabulary: dict[str, int] = field(default_factory=dict)
    schema: str | None = None
    label_stats: dict[str, float] = field(default_factory=dict)
    version: str = field(default_factory=lqo_version)
    extra: dict[str, Any] = field(default_factory=dict)

    def metadata(self) -> dict[str, Any]:
        """The checkpoint's JSON header: everything but the tensors."""
        return {
            "format": FORMAT, "kind": self.kind, "params": self.params, "dims": self.dims,
            "vocabulary": self.vocabulary, "schema": self.schema, "label_stats": self.label_stats,
            "version": self.version, "extra": self.extra,
        }


def _atomic_write(path: Path, write: Any) -> None:
    """Write through a temp file in the same directory, then rename over ``path``,
    so a crash mid-write leaves the old file (or none), never half a checkpoint."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        write(tmp)
        with open(tmp, "rb") as fh:
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def save_checkpoint(path: str | os.PathLike[str], ckpt: Checkpoint) -> Path:
    """Write ``ckpt`` to ``path`` atomically; returns the path.

    Example::

        >>> import tempfile, torch
        >>> from pathlib import Path
        >>> tmp = tempfile.TemporaryDirectory()
        >>> ckpt = Checkpoint(kind="tree_conv", params={"epochs": 5}, dims={"n_features": 2},
        ...                   tensors={"w": torch.ones(2)}, vocabulary={"orders": 1})
        >>> path = save_checkpoint(Path(tmp.name) / "example.lqo", ckpt)
        >>> path.name, sorted(p.name for p in path.parent.iterdir())  # no temp file left behind
        ('example.lqo', ['example.lqo'])
        >>> tmp.cleanup()
    """
    path = Path(path)
    meta = json.dumps(ckpt.metadata(), sort_keys=True)
    # Fresh contiguous copies: safetensors rejects shared or strided storage.
    tensors = {k: v.detach().cpu().contiguous().clone() for k, v in ckpt.tensors.items()}
    if _st is not None:
        _atomic_write(path, lambda tmp: _st.save_file(tensors, tmp, metadata={"lqo": meta}))
    else:
        _atomic_write(path, lambda tmp: torch.save({"format": FORMAT, "metadata": meta, "tensors": tensors}, tmp))
    return path


def _not_checkpoint(path: Path, why: str) -> LqoError:
    return LqoError(f"{path} is not an lqo model checkpoint ({why})")


def _read(path: Path) -> tuple[dict[str, Any], dict[str, Tensor]]:
    with open(path, "rb") as fh:
        magic = fh.read(4)
    if magic == _ZIP_MAGIC:
        try:
            blob = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as exc:
            raise _not_checkpoint(path, f"unreadable: {exc}") from exc
        if not isinstance(blob, dict) or blob.get("format") != FORMAT:
            raise _not_checkpoint(path, "no lqo format tag")
        return json.loads(blob["metadata"]), dict(blob["tensors"])
    if _st is None:
        raise _not_checkpoint(path, "not a torch archive; if it is safetensors, install the safetensors package")
    try:
        with _st.safe_open(str(path), framework="pt") as fh:  # type: ignore[attr-defined]
            raw = (fh.metadata() or {}).get("lqo")
            tensors = {k: fh.get_tensor(k) for k in fh.keys()}
    except Exception as exc:
        raise _not_checkpoint(path, f"unreadable: {exc}") from exc
    if raw is None:
        raise _not_checkpoint(path, "no lqo metadata")
    return json.loads(raw), tensors


def load_checkpoint(path: str | os.PathLike[str], expected_schema: str | None = None) -> Checkpoint:
    """Read a checkpoint; check the schema fingerprint when ``expected_schema`` is given.

    Raises :class:`MissingFileError` when there is no file, :class:`SchemaMismatchError`
    (naming both fingerprints) when it was trained for another schema, and
    :class:`LqoError` when the file is not an lqo checkpoint.

    Example::

        >>> import tempfile, torch
        >>> tmp = tempfile.TemporaryDirectory()
        >>> path = save_checkpoint(f"{tmp.name}/example.lqo", Checkpoint(
        ...     kind="tree_conv", params={}, dims={}, tensors={"w": torch.ones(1)}, schema="abc"))
        >>> load_checkpoint(path, expected_schema="abc").schema  # e.g. Catalog.fingerprint
        'abc'
        >>> load_checkpoint(path, expected_schema="xyz")  # doctest: +ELLIPSIS
        Traceback (most recent call last):
        ...
        lqo.errors.SchemaMismatchError: model ... was trained for schema 'abc', but the database has schema 'xyz'
        >>> load_checkpoint(f"{tmp.name}/other.lqo")  # doctest: +ELLIPSIS
        Traceback (most recent call last):
        ...
        lqo.errors.MissingFileError: model file .../other.lqo does not exist
        >>> tmp.cleanup()
    """
    path = Path(path)
    if not path.is_file():
        raise MissingFileError(f"model file {path} does not exist")
    meta, tensors = _read(path)
    if meta.get("format") != FORMAT or "kind" not in meta:
        raise _not_checkpoint(path, f"format {meta.get('format')!r}, expected {FORMAT!r}")
    saved = meta.get("schema")
    if expected_schema is not None and saved != expected_schema:
        raise SchemaMismatchError(
            f"model {path} was trained for schema {saved!r}, but the database has schema {expected_schema!r}"
        )
    return Checkpoint(
        kind=meta["kind"], params=meta["params"], dims=meta["dims"], tensors=tensors,
        vocabulary=meta.get("vocabulary") or {}, schema=saved, label_stats=meta.get("label_stats") or {},
        version=meta.get("version", "unknown"), extra=meta.get("extra") or {},
    )
