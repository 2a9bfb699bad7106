"""Image AUROC, pixel AUROC and AUPRO (per-region overlap up to 30 % false-positive rate)."""

from __future__ import annotations

import cv2
import numpy as np
from scipy.stats import rankdata


def auroc(labels: np.ndarray, scores: np.ndarray) -> float:
    """Area under the ROC curve as the Mann-Whitney statistic (ties count one half). NaN without both classes."""
    labels = np.asarray(labels, dtype=bool).ravel()
    scores = np.asarray(scores, dtype=np.float64).ravel()
    n_pos = int(labels.sum())
    n_neg = labels.size - n_pos
    if n_pos == 0 or n_neg == 0:
        return float("nan")
    ranks = rankdata(scores)
    u = ranks[labels].sum() - n_pos * (n_pos + 1) / 2.0
    return float(u / (n_pos * n_neg))


def aupro(masks: np.ndarray, maps: np.ndarray, fpr_limit: float = 0.3) -> float:
    """Normalised area under the PRO curve up to `fpr_limit`.

    Every ground-truth region (8-connected component) weighs the same, whatever its size: a pixel of a
    region of n pixels adds 1 / (n * regions) to PRO once it is above the threshold; a normal pixel adds
    1 / normal_pixels to the FPR. Sorting all pixels by score gives the exact curve at every threshold.
    """
    masks = np.asarray(masks, dtype=bool)
    maps = np.asarray(maps, dtype=np.float64)
    if masks.shape != maps.shape:
        raise ValueError(f"masks {masks.shape} and maps {maps.shape} differ in shape")
    n_normal = int((~masks).sum())
    pro_weight = np.zeros(masks.shape, dtype=np.float64)
    regions = 0
    comps = []
    for i in range(masks.shape[0]):
        n, lab = cv2.connectedComponents(masks[i].astype(np.uint8), connectivity=8)
        comps.append((n, lab))
        regions += n - 1
    if regions == 0 or n_normal == 0:
        return float("nan")
    for i, (n, lab) in enumerate(comps):
        if n > 1:
            sizes = np.bincount(lab.ravel())
            w = np.zeros(n)
            w[1:] = 1.0 / (sizes[1:] * regions)
            pro_weight[i] = w[lab]
    fpr_weight = (~masks).astype(np.float64) / n_normal
    order = np.argsort(-maps.ravel(), kind="stable")
    s = maps.ravel()[order]
    fpr = np.cumsum(fpr_weight.ravel()[order])
    pro = np.cumsum(pro_weight.ravel()[order])
    # A threshold keeps all pixels of equal score together: take each run of ties at its end.
    last = np.r_[np.nonzero(np.diff(s))[0], s.size - 1]
    fpr = np.r_[0.0, fpr[last]]
    pro = np.r_[0.0, pro[last]]
    keep = fpr <= fpr_limit
    f, p = fpr[keep], pro[keep]
    if f[-1] < fpr_limit and keep.sum() < fpr.size:
        j = keep.sum()
        t = (fpr_limit - fpr[j - 1]) / max(fpr[j] - fpr[j - 1], 1e-12)
        f = np.r_[f, fpr_limit]
        p = np.r_[p, pro[j - 1] + t * (pro[j] - pro[j - 1])]
    return float(np.trapezoid(p, f) / fpr_limit)
