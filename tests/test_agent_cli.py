"""Command-line conventions, through the installed `hgad-edge` as a user runs it."""

from __future__ import annotations

import argparse
import subprocess
import sys
import time

import pytest

from agent.cli import build_parser

from .conftest import hgad_cli


def test_version():
    r = hgad_cli("--version")
    assert r.returncode == 0 and r.stdout.startswith("hgad-edge ") and r.stdout.strip()[-1].isdigit()


def test_verbose_and_debug_are_accepted_after_the_command_too(tmp_path):
    r = hgad_cli(
        "synth", str(tmp_path / "d"), "--classes", "1", "--train", "1", "--test", "2", "--size", "64", "--debug"
    )
    assert r.returncode == 0, r.stderr
    assert "level=debug" in r.stderr  # debug logs are on
    r = hgad_cli("run", "--config", str(tmp_path / "missing.yaml"), "-v")
    assert r.returncode == 2 and r.stderr.count("\n") == 1 and "config file does not exist" in r.stderr


def test_a_usage_error_is_one_line_prefixed_once():
    r = hgad_cli("train", "--data", "x")
    assert r.returncode == 2 and r.stderr.count("\n") == 1
    assert r.stderr.startswith("hgad-edge: error: train: the following arguments are required: --out")
    assert r.stderr.count("hgad-edge") == 2  # the prefix and the pointer to `hgad-edge train --help`


def test_every_option_has_help_and_says_its_default():
    parser = build_parser()
    sub = next(a for a in parser._actions if a.dest == "command")
    for name, command in sub.choices.items():
        formatter = command._get_formatter()
        for action in command._actions:
            if not action.option_strings or action.dest == "help":
                continue
            assert action.help, f"{name} {action.option_strings[0]} has no help"
            if action.default not in (None, False, argparse.SUPPRESS):
                assert "default" in formatter._get_help_string(action), (name, action.option_strings)
        assert "(default: 6)" in sub.choices["synth"].format_help()


@pytest.mark.parametrize(
    ("args", "expect"),
    [
        (
            ["eval", "--model", "m", "--data", "{tmp}", "--json", "{tmp}"],
            "--json: {tmp} is a directory; give a file name",
        ),
        (
            ["calibrate", "--model", "m", "--line", "l", "--images", "{file}"],
            "--images: {file} is a file; give a folder",
        ),
        (
            ["calibrate", "--model", "m", "--line", "fab/ric", "--images", "{tmp}"],
            "argument --line: 'fab/ric' is not a valid name",
        ),
        (["train", "--data", "{file}", "--out", "{tmp}/m"], "--data: {file} is a file; give a folder"),
    ],
)
def test_a_path_of_the_wrong_kind_is_named_as_such(args, expect, tmp_path):
    file = tmp_path / "a.txt"
    file.write_text("x")
    fill = {"tmp": str(tmp_path), "file": str(file)}
    r = hgad_cli(*[a.format(**fill) for a in args])
    assert r.returncode == 2 and expect.format(**fill) in r.stderr and r.stderr.count("\n") == 1, r.stderr


def test_a_failed_calibration_leaves_no_report_folder(tmp_path, tiny_model_dir):
    images = tmp_path / "normals"
    images.mkdir()
    (images / "one.png").write_bytes(b"not an image")
    report, db = tmp_path / "report" / "v1", tmp_path / "state" / "db.sqlite"
    r = hgad_cli("calibrate", "--model", str(tiny_model_dir), "--line", "fabric", "--images", str(images),
                 "--report", str(report), "--db", str(db))  # fmt: skip
    assert r.returncode == 2 and r.stderr.count("\n") == 1, r.stderr
    assert not (tmp_path / "report").exists() and not (tmp_path / "state").exists()


def _best_of(cmd: list[str], n: int = 3) -> float:
    times = []
    for _ in range(n):
        t0 = time.perf_counter()
        subprocess.run(cmd, capture_output=True, check=False)
        times.append(time.perf_counter() - t0)
    return min(times)


def test_a_bad_config_path_is_answered_before_torch_could_even_import(tmp_path):
    """Measured against `import torch` in the same run: the agent must not load its libraries to say that the
    configuration file is missing."""
    exe = [sys.executable, "-m", "agent.cli", "run", "--config", str(tmp_path / "missing.yaml")]
    torch_import = _best_of([sys.executable, "-c", "import torch"])
    assert _best_of(exe) < torch_import / 5, (torch_import,)
