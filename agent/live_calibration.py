"""A camera's live recalibration as one state machine, reporting in one message schema (`CalibrateState`).

    idle -> collecting -> building -> done
               |            |
               +-> failed <-+          (and from done or failed, a new `calibrate/set` starts again)

While collecting, the frames the pipeline judges are declared normal: their scores and maps (already
computed) are kept, alerts pause, and a progress report goes out every tenth of the frames. Building (the
threshold, the profile, its report) runs on the writer thread; the result comes back as `built` or `failed`.
Every transition returns the message to publish; the session never publishes itself.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from calibration.calibrate import LiveCalibration, unknown_line_warning
from calibration.profile import Profile
from hgad.model_dir import LoadedModel

from .messages import CalibrateState


class LiveCalibrationSession:
    def __init__(self, classes: Sequence[str]):
        self.classes = tuple(classes)
        self.message = CalibrateState.idle()
        self.collector: LiveCalibration | None = None

    @property
    def collecting(self) -> bool:
        return self.message.state == "collecting"

    @property
    def busy(self) -> bool:
        """Collecting or building: a second `calibrate/set` or a `line/set` is refused meanwhile."""
        return self.message.state in ("collecting", "building")

    def start(self, loaded: LoadedModel, line: str, frames: int, far: float, mode: str, source: str) -> CalibrateState:
        """Begin collecting `frames` live frames of `line` (raises BadInputError for an impossible target)."""
        self.collector = LiveCalibration(loaded, line, frames, far, mode, source)
        self.message = CalibrateState(
            ok=True,
            state="collecting",
            line=line,
            frames=frames,
            collected=0,
            far=far,
            calibration_id=None,
            version=None,
            threshold=None,
            n=None,
            error=None,
            warning=unknown_line_warning(self.classes, line),
            ts=self.message.ts,
        ).but()
        return self.message

    def add(self, frame: np.ndarray, score: float, amap: np.ndarray) -> CalibrateState | None:
        """One judged frame while collecting; the message to publish at each tenth and when the last frame is
        in (state `building`: hand `collector` to the writer), else None."""
        live = self.collector
        assert live is not None and self.collecting
        try:
            live.add(frame, score, amap)
        except Exception as exc:  # a frame of another size: the collection cannot go on
            return self.failed(str(exc))
        # A refusal reported meanwhile (ok false) does not outlive the next report of the calibration going on.
        if live.done:
            self.message = self.message.but(ok=True, error=None, state="building", collected=live.collected)
            return self.message
        if live.collected % max(1, live.n // 10) == 0:
            self.message = self.message.but(ok=True, error=None, collected=live.collected)
            return self.message
        return None

    def built(self, profile: Profile) -> CalibrateState:
        self.collector = None
        self.message = self.message.but(
            ok=True,
            error=None,
            state="done",
            calibration_id=profile.calibration_id,
            version=profile.version,
            threshold=profile.threshold,
            n=profile.n,
            far=profile.far,
        )
        return self.message

    def failed(self, error: str) -> CalibrateState:
        self.collector = None
        self.message = self.message.but(ok=False, state="failed", error=error, warning=None)
        return self.message

    def refused(self, error: str) -> CalibrateState:
        """A `calibrate/set` that changes nothing: the current state stays, with the error."""
        self.message = self.message.but(ok=False, error=error)
        return self.message
