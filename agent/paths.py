"""Where the agent and the command line keep things by default, in one place.

Under systemd the unit's StateDirectory= and CacheDirectory= set $STATE_DIRECTORY and $CACHE_DIRECTORY;
elsewhere the state lives in ./hgad-edge-state and engines in the user's cache folder. `hgad-edge calibrate`,
`hgad-edge export` and the agent all ask here, so a profile or an engine made by one is found by the others.
"""

from __future__ import annotations

import os
from pathlib import Path

STATE_FOLDER = "hgad-edge-state"
DATABASE = "hgad-edge.sqlite"
MODEL_META = "model.json"


def _first(env: str) -> str:
    """systemd passes several folders separated by ':'; ours is the first."""
    return os.environ.get(env, "").split(":")[0]


def state_dir(configured: str | None = None) -> Path:
    return Path(configured or _first("STATE_DIRECTORY") or STATE_FOLDER)


def database(state: Path | None = None) -> Path:
    return (state or state_dir()) / DATABASE


def reports(db: Path) -> Path:
    """Calibration reports sit next to the database they belong to."""
    return db.parent / "reports"


def engine_cache(configured: str | Path | None = None) -> Path:
    if configured:
        return Path(configured)
    cache = _first("CACHE_DIRECTORY")
    if cache:
        return Path(cache) / "engines"
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "hgad-edge" / "engines"


def is_model_dir(path: str | Path) -> bool:
    return (Path(path) / MODEL_META).is_file()
