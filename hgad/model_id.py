"""The model id: a content hash of the weights, the configuration and the normalisation constants.

Calibration profiles and compiled engines are keyed by it, so it changes whenever anything that moves a
score changes, and stays the same when the same model is saved again.
"""

from __future__ import annotations

import hashlib
import json
from typing import Any


def model_id(
    weights_sha: str, config: dict[str, Any], normalisation: dict[str, Any], groups: list[dict] | None = None
) -> str:
    """`groups`: a grouped model's configuration of each group (groups.py); absent for a model of one group."""
    content = {"weights": weights_sha, "config": config, "normalisation": normalisation}
    payload = json.dumps(
        content | ({"groups": groups} if groups else {}),
        sort_keys=True,
        separators=(",", ":"),
    )
    return hashlib.sha256(payload.encode()).hexdigest()[:16]
