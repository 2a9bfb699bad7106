"""Drift warnings: do a line's live normal scores still look like its calibration scores?

Lighting, focus, dust on the lens or a new batch of material shift the score distribution before they
cause false alarms. Every `window` scores the monitor compares the window with the calibration scores
(two-sample Kolmogorov-Smirnov) and counts how many exceed the threshold (one-sided binomial test against
the calibrated false-alarm rate). Either test below `alpha` raises a warning; a small shift in a huge
window is ignored unless the median moved by more than `min_shift` calibration MADs.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass

import numpy as np
from scipy import stats

from .profile import Profile


@dataclass(frozen=True)
class DriftStatus:
    drifting: bool
    ks_statistic: float
    ks_p: float
    exceed_rate: float
    exceed_p: float
    median_shift_mads: float
    window: int

    def to_dict(self) -> dict:
        return {k: (round(v, 6) if isinstance(v, float) else v) for k, v in self.__dict__.items()}


class DriftMonitor:
    def __init__(self, profile: Profile, window: int = 200, alpha: float = 1e-3, min_shift: float = 1.0):
        self.profile = profile
        self.window = window
        self.alpha = alpha
        self.min_shift = min_shift
        self.recent: deque[float] = deque(maxlen=window)
        self._since = 0
        self.last: DriftStatus | None = None

    def update(self, score: float) -> DriftStatus | None:
        """Add a live score of a frame believed normal; returns a status every `window` scores."""
        self.recent.append(float(score))
        self._since += 1
        if self._since < self.window or len(self.recent) < self.window:
            return None
        self._since = 0
        self.last = self.check()
        return self.last

    def check(self) -> DriftStatus:
        live = np.asarray(self.recent, dtype=np.float64)
        cal = self.profile.sorted_scores
        ks = stats.ks_2samp(live, cal)
        exceed = int((live > self.profile.threshold).sum())
        exceed_p = float(stats.binom.sf(exceed - 1, live.size, self.profile.far)) if exceed else 1.0
        mad = max(self.profile.normalisation.get("score_mad", 0.0), 1e-12)
        shift = float((np.median(live) - self.profile.normalisation.get("score_median", np.median(cal))) / mad)
        drifting = (ks.pvalue < self.alpha and abs(shift) >= self.min_shift) or exceed_p < self.alpha
        return DriftStatus(
            bool(drifting), float(ks.statistic), float(ks.pvalue), exceed / live.size, exceed_p, shift, int(live.size)
        )
