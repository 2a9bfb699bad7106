"""HGAD for the edge: one anomaly detector (a frozen CNN, a normalizing flow, a hierarchical Gaussian-mixture
prior) for many product lines at once."""

__version__ = "0.4.1"
