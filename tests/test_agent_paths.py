"""Default locations: one place, so a profile made by `calibrate` or an engine built by `export` is found by
the agent under the same environment."""

from __future__ import annotations

from pathlib import Path

from agent import paths
from agent.cli import build_parser


def test_systemd_folders_win_over_the_defaults(monkeypatch, tmp_path):
    monkeypatch.setenv("STATE_DIRECTORY", f"{tmp_path}/state:{tmp_path}/other")
    monkeypatch.setenv("CACHE_DIRECTORY", f"{tmp_path}/cache")
    assert paths.state_dir() == tmp_path / "state"
    assert paths.database() == tmp_path / "state" / "hgad-edge.sqlite"
    assert paths.engine_cache() == tmp_path / "cache" / "engines"
    assert paths.engine_cache("/x/y") == Path("/x/y")
    assert paths.reports(paths.database()) == tmp_path / "state" / "reports"


def test_outside_systemd_state_is_local_and_engines_in_the_users_cache(monkeypatch, tmp_path):
    for var in ("STATE_DIRECTORY", "CACHE_DIRECTORY"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert paths.state_dir() == Path("hgad-edge-state")
    assert paths.engine_cache() == tmp_path / "xdg" / "hgad-edge" / "engines"


def test_the_calibrate_command_and_the_agent_share_one_database(monkeypatch, tmp_path):
    monkeypatch.setenv("STATE_DIRECTORY", str(tmp_path / "state"))
    args = build_parser().parse_args(["calibrate", "--model", "m", "--line", "l", "--images", "i"])
    assert args.db == paths.database() == tmp_path / "state" / "hgad-edge.sqlite"
