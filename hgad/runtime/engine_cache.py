"""TensorRT engines cached on disk, keyed by everything that makes an engine valid.

An engine is only valid for the model it was built from, the GPU (name and compute capability), the
TensorRT, torch and torch-tensorrt versions, the precision, and the static input shape (batch, size).
Each engine file has a JSON sidecar holding its key and the file's SHA-256: a key mismatch means
rebuild, a digest mismatch (truncated, corrupt) means delete and rebuild, never a crash.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from hgad.model_dir import file_sha256

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class EngineKey:
    model_id: str
    gpu_name: str
    compute_capability: str
    tensorrt: str
    torch: str
    torch_tensorrt: str
    precision: str
    batch: int
    image_size: int

    def digest(self) -> str:
        return hashlib.sha256(json.dumps(asdict(self), sort_keys=True).encode()).hexdigest()[:16]

    def filename(self) -> str:
        return f"hgad-{self.model_id}-{self.precision}-b{self.batch}-{self.image_size}-{self.digest()}.ep"


class EngineCache:
    def __init__(self, folder: Path):
        self.folder = Path(folder)

    def path(self, key: EngineKey) -> Path:
        return self.folder / key.filename()

    def _sidecar(self, key: EngineKey) -> Path:
        return self.path(key).with_suffix(".json")

    def discard(self, key: EngineKey) -> None:
        for p in (self.path(key), self._sidecar(key)):
            with contextlib.suppress(FileNotFoundError):
                p.unlink()

    def load(self, key: EngineKey, loader: Callable[[Path], Any]) -> Any | None:
        """The cached engine for `key`, or None when there is none or it cannot be trusted (then it is
        removed so that the caller rebuilds it)."""
        path, side = self.path(key), self._sidecar(key)
        if not path.is_file():
            return None
        try:
            meta = json.loads(side.read_text())
            if meta.get("key") != asdict(key):
                raise ValueError("its key differs")
            if meta.get("sha256") != file_sha256(path):
                raise ValueError("its content does not match the recorded digest (truncated or corrupt)")
            return loader(path)
        except Exception as exc:  # a bad cache entry is rebuilt, never fatal
            log.warning("engine cache entry discarded", extra={"fields": {"path": str(path), "reason": str(exc)}})
            self.discard(key)
            return None

    def store(self, key: EngineKey, saver: Callable[[Path], None]) -> Path:
        """Write an engine atomically: a crash mid-write leaves no file that looks valid."""
        self.folder.mkdir(parents=True, exist_ok=True)
        path = self.path(key)
        # The temporary name keeps the extension: savers pick the file format from it.
        tmp = path.with_name(path.stem + ".tmp" + path.suffix)
        saver(tmp)
        digest = file_sha256(tmp)
        os.replace(tmp, path)
        side_tmp = self._sidecar(key).with_suffix(".json.tmp")
        side_tmp.write_text(json.dumps({"key": asdict(key), "sha256": digest}, indent=2))
        os.replace(side_tmp, self._sidecar(key))
        self.prune_stale(key)
        return path

    def prune_stale(self, key: EngineKey) -> list[Path]:
        """Remove engines of the same model, precision and shape built under another key (old versions,
        another GPU): they can never be loaded again and engines are large."""
        removed = []
        prefix = f"hgad-{key.model_id}-{key.precision}-b{key.batch}-{key.image_size}-"
        for p in self.folder.glob(prefix + "*.ep"):
            if p.name != key.filename():
                for q in (p, p.with_suffix(".json")):
                    with contextlib.suppress(FileNotFoundError):
                        q.unlink()
                removed.append(p)
        return removed
