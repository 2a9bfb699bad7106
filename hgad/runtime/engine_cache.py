"""Compiled engines cached on disk (TensorRT engines, ONNX graphs), keyed by everything that makes one valid.

An engine is only valid for the model it was built from, the runtime and the device it was built for (a GPU's
name and compute capability), the versions of this package (which writes the graph), of the runtime and of
what built it, the precision, and the static input shape (batch, size). Each engine file has a JSON sidecar
holding its key and the file's SHA-256: a key mismatch means rebuild, a digest mismatch (truncated,
corrupt) means delete and rebuild, never a crash.
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
    runtime: str  # "tensorrt" or "onnxruntime"
    device: str  # a GPU's name and compute capability, or "cpu"
    versions: str  # of this package (it writes the graph), the runtime and what builds: "hgad-edge=0.4.0 tensorrt=10.3"
    precision: str
    batch: int
    image_size: int
    suffix: str = ".ep"  # the file's format: ".ep" a torch exported program, ".onnx" an ONNX graph

    def digest(self) -> str:
        return hashlib.sha256(json.dumps(asdict(self), sort_keys=True).encode()).hexdigest()[:16]

    def stem(self) -> str:
        """What engines of one model, runtime, precision and shape share whatever built them."""
        return f"hgad-{self.model_id}-{self.runtime}-{self.precision}-b{self.batch}-{self.image_size}-"

    def filename(self) -> str:
        return f"{self.stem()}{self.digest()}{self.suffix}"


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
        try:
            saver(tmp)
        except BaseException:
            tmp.unlink(missing_ok=True)
            raise
        digest = file_sha256(tmp)
        os.replace(tmp, path)
        side_tmp = self._sidecar(key).with_suffix(".json.tmp")
        side_tmp.write_text(json.dumps({"key": asdict(key), "sha256": digest}, indent=2))
        os.replace(side_tmp, self._sidecar(key))
        self.prune_stale(key)
        return path

    def prune_stale(self, key: EngineKey) -> list[Path]:
        """Remove engines of the same model, runtime, precision and shape built under another key (old versions,
        another GPU): they can never be loaded again and engines are large."""
        removed = []
        for p in self.folder.glob(key.stem() + "*" + key.suffix):
            if p.name != key.filename():
                for q in (p, p.with_suffix(".json")):
                    with contextlib.suppress(FileNotFoundError):
                        q.unlink()
                removed.append(p)
        return removed
