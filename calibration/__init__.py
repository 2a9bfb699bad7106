"""Per-line calibration: thresholds with a false-alarm guarantee from normal images, stored as
versioned profiles in SQLite, plus p-values, drift warnings and reports."""
