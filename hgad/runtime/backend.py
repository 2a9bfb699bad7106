"""One interface for inference: a batch of model-size uint8 frames in, anomaly maps and image scores out."""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass, field

import numpy as np

PRECISIONS = ("fp32", "fp16", "int8")


@dataclass
class Inference:
    maps: np.ndarray  # [B, S, S] float32, higher is more anomalous
    scores: np.ndarray  # [B] float32
    timings_ms: dict[str, float] = field(default_factory=dict)


@dataclass(frozen=True)
class BackendInfo:
    name: str  # "torch" or "tensorrt"
    device: str  # e.g. "cpu", "cuda:0 (NVIDIA Orin)"
    precision: str
    model_id: str
    detail: str = ""


class Backend(ABC):
    """Frames are uint8 BGR [B, S, S, 3] at the model's input size (see preprocess.py)."""

    info: BackendInfo
    image_size: int
    classes: tuple[str, ...]

    @abstractmethod
    def infer(self, frames: np.ndarray, line: str | None = None) -> Inference:
        """`line` None scores class-agnostic; a class name scores class-aware for that line."""

    def runs_on(self) -> str:
        """Where it runs, as the agent's `device` setting spells it (cpu, cuda:N): another process that must run
        the model as this one does (the agent beside the bench) is given it. The default: a CPU runtime."""
        return "cpu"

    def time_alone(self) -> None:  # noqa: B027 - optional hook
        """Called once before other threads start on the same cores (the agent, before its cameras): a CPU
        runtime times the model alone, what share_cores weighs the cameras against. The default (torch, a GPU
        runtime) does nothing."""

    def share_cores(self, cameras_ms: float) -> None:  # noqa: B027 - optional hook
        """Told the CPU milliseconds other threads of the process spend per frame this backend scores (the
        cameras' reading, decoding and resizing), a CPU runtime may leave them cores. The default (torch, a
        GPU runtime) does nothing."""

    def close(self) -> None:  # noqa: B027 - optional hook
        """Release device memory; the default has nothing to release."""

    def check_line(self, line: str | None) -> None:
        if line is not None and line not in self.classes:
            from ..errors import BadInputError

            raise BadInputError(
                f"line {line!r} is not a class of model {self.info.model_id} "
                f"(classes: {', '.join(self.classes)}); score it class-agnostic instead"
            )
