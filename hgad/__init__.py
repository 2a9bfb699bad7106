"""HGAD for the edge: a unified anomaly detector (frozen CNN, one normalizing flow per feature level,
hierarchical Gaussian-mixture prior) for many product lines at once."""

__version__ = "0.1.0"
