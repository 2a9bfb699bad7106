"""Image thresholds for a target false-alarm rate, and conformal p-values.

With n normal scores (exchangeable with future normal frames), the k-th smallest for
k = ceil((n + 1)(1 - a)) is exceeded by a new normal score with probability <= a (split conformal).
That is a guarantee on average over calibration sets; the realised rate of one calibration is
Beta(n + 1 - k, k) distributed, and every threshold records its 90 % upper bound. With `confidence`,
k is chosen so that the realised rate is <= a with that probability (training-conditional, 'PAC').
A target below 1/(n + 1) has no order statistic: a generalized Pareto tail fitted over the top scores
extrapolates, or the caller is told how many images the target needs.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np

from hgad.errors import BadInputError

# scipy is imported inside the functions that need it: the agent's configuration check reads MIN_IMAGES from
# here and must not wait a second for scipy.
MIN_IMAGES = 20
MIN_TAIL_IMAGES = 100
MIN_EXCEEDANCES = 20
BOUND_CONFIDENCE = 0.9


@dataclass(frozen=True)
class Threshold:
    value: float
    method: str  # "conformal", "conformal-pac" or "gpd-tail"
    far: float
    n: int
    order_index: int | None = None  # 1-based k of the order statistic
    far_bound: float | None = None  # realised false-alarm rate <= this with BOUND_CONFIDENCE
    confidence: float | None = None
    tail: dict = field(default_factory=dict)

    def describe(self) -> str:
        if self.method == "gpd-tail":
            return (
                f"generalized Pareto tail over the top {self.tail['exceedances']} of {self.n} scores "
                f"(xi={self.tail['xi']:.3f}, sigma={self.tail['sigma']:.4g}) at far={self.far}"
            )
        text = f"order statistic {self.order_index} of {self.n} (split conformal, far={self.far})"
        if self.confidence:
            text += f", realised rate <= far with probability {self.confidence}"
        return text


def conformal_index(n: int, far: float) -> int:
    return math.ceil((n + 1) * (1.0 - far) - 1e-9)


def pac_index(n: int, far: float, confidence: float) -> int | None:
    """Smallest k with P(realised false-alarm rate > far) <= 1 - confidence, or None if no k <= n works.

    The coverage of the k-th order statistic is Beta(k, n - k + 1), so
    P(rate > far) = P(Binomial(n, 1 - far) >= k).
    """
    from scipy import stats

    delta = 1.0 - confidence
    ks = np.arange(1, n + 1)
    ok = stats.binom.sf(ks - 1, n, 1.0 - far) <= delta
    return int(ks[ok][0]) if ok.any() else None


def far_upper_bound(n: int, k: int, confidence: float = BOUND_CONFIDENCE) -> float:
    """Upper `confidence` quantile of the realised false-alarm rate of the k-th of n order statistic."""
    from scipy import stats

    return float(stats.beta.ppf(confidence, n + 1 - k, k))


def gpd_threshold(scores: np.ndarray, far: float) -> tuple[float, dict]:
    """Peaks over threshold: fit a generalized Pareto to the exceedances over a high order statistic."""
    from scipy import stats

    s = np.sort(np.asarray(scores, dtype=np.float64))
    n = s.size
    n_u = max(MIN_EXCEEDANCES, math.ceil(0.1 * n))
    u = s[n - n_u - 1]
    excess = s[n - n_u :] - u
    xi, _, sigma = stats.genpareto.fit(excess, floc=0.0)
    p_u = n_u / n  # P(score > u)
    ratio = far / p_u
    t = u + sigma * math.log(1.0 / ratio) if abs(xi) < 1e-6 else u + sigma / xi * (ratio ** (-xi) - 1.0)
    # The target is rarer than 1/(n+1): never below the largest normal score seen.
    t = max(float(t), float(s[-1]))
    return t, {"u": float(u), "xi": float(xi), "sigma": float(sigma), "exceedances": n_u}


def check_feasible(n: int, far: float, confidence: float | None = None) -> None:
    """Whether n normal scores can give a threshold for `far`: checked before any image is scored, so
    a request that cannot work fails at once rather than after minutes of scoring."""
    if not 0.0 < far < 1.0:
        raise BadInputError(f"--far: {far} is not a rate; use a value between 0 and 1, e.g. 0.01")
    if confidence is not None and not 0.5 <= confidence < 1.0:
        raise BadInputError(f"--confidence: {confidence} must be in [0.5, 1), e.g. 0.9")
    if n < MIN_IMAGES:
        raise BadInputError(f"calibration: {n} normal images are too few; use at least {MIN_IMAGES}")
    if confidence is not None:
        if pac_index(n, far, confidence) is None:
            need = math.ceil(math.log(1.0 - confidence) / math.log(1.0 - far))
            raise BadInputError(
                f"--far {far} with --confidence {confidence} needs at least {need} normal images (got {n}); "
                f"add images, raise --far or drop --confidence"
            )
    elif conformal_index(n, far) > n and n < MIN_TAIL_IMAGES:
        need = math.ceil(1.0 / far) - 1
        raise BadInputError(
            f"--far {far} is below 1/(n+1) for n={n}: the order statistic needs at least {need} normal images, "
            f"a tail model at least {MIN_TAIL_IMAGES}; add images or raise --far"
        )


def choose_threshold(scores: np.ndarray, far: float, confidence: float | None = None) -> Threshold:
    s = np.sort(np.asarray(scores, dtype=np.float64))
    n = s.size
    check_feasible(n, far, confidence)
    if not np.all(np.isfinite(s)):
        raise BadInputError("calibration: the model gave non-finite scores; the images or model are broken")
    if confidence is not None:
        k = pac_index(n, far, confidence)
        return Threshold(float(s[k - 1]), "conformal-pac", far, n, k, far_upper_bound(n, k), confidence)
    k = conformal_index(n, far)
    if k <= n:
        return Threshold(float(s[k - 1]), "conformal", far, n, k, far_upper_bound(n, k))
    t, tail = gpd_threshold(s, far)
    return Threshold(t, "gpd-tail", far, n, tail=tail)


def p_value(sorted_scores: np.ndarray, score: float | np.ndarray) -> float | np.ndarray:
    """(1 + #calibration scores >= score) / (n + 1), for one score or an array of them."""
    n = sorted_scores.size
    at_least = n - np.searchsorted(sorted_scores, score, side="left")
    out = (1.0 + at_least) / (n + 1.0)
    return float(out) if np.ndim(out) == 0 else out
