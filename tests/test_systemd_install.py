"""systemd/README.md's install steps, as far as this machine allows: the unit verifies with systemd-analyze,
and a model copied as documented is readable by an unprivileged service user (`nobody` here, through
setpriv), while an unreadable model file is one line naming it."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

from .conftest import ROOT

HGAD_EDGE = str(Path(sys.executable).with_name("hgad-edge"))


def test_the_unit_verifies():
    """`systemd-analyze verify` on the shipped unit, its ExecStart pointed at this installation."""
    analyze = shutil.which("systemd-analyze")
    assert analyze, "systemd-analyze is missing: `make test` installs Debian's systemd package"
    unit = (ROOT / "systemd" / "hgad-edge.service").read_text()
    keys = ("Type=notify", "WatchdogSec=", "NoNewPrivileges=yes", "ProtectSystem=strict", "StateDirectory=")
    keys += ("CacheDirectory=", "LoadCredential=mqtt-password:", "Restart=on-failure", "User=hgad-edge")
    for key in keys:
        assert key in unit, key
    with tempfile.TemporaryDirectory() as tmp:
        local = Path(tmp) / "hgad-edge.service"
        local.write_text(unit.replace("/opt/hgad-edge/venv/bin/hgad-edge", HGAD_EDGE))
        r = subprocess.run([analyze, "verify", str(local)], capture_output=True, text=True, cwd=tmp)
    assert r.returncode == 0, r.stderr
    assert "hgad-edge.service" not in r.stderr, r.stderr  # no warning about our unit


@pytest.fixture
def service_dir(tiny_model_dir, tiny_data):
    """/var/lib/hgad-edge as the README lays it out, in a folder every user may enter: the model copied
    with `cp -r` by root, normal images of a line, a state folder the service user owns."""
    if os.geteuid() != 0:
        pytest.skip("changing to another user needs root (CI runs as root)")
    base = Path(tempfile.mkdtemp(prefix="hgad-svc-"))
    base.chmod(0o755)
    subprocess.run(["cp", "-r", str(tiny_model_dir), str(base / "model")], check=True)
    shutil.copytree(tiny_data / "fabric" / "train" / "good", base / "normals")
    (base / "state").mkdir(mode=0o777)
    (base / "state").chmod(0o777)
    for p in [base / "normals", *(base / "normals").iterdir()]:
        p.chmod(0o755 if p.is_dir() else 0o644)
    yield base
    shutil.rmtree(base, ignore_errors=True)


def _as_nobody(*args: str, home: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "HOME": str(home), "MPLCONFIGDIR": str(home / "mpl")}
    cmd = ["setpriv", "--reuid=nobody", "--regid=nogroup", "--clear-groups", HGAD_EDGE, *args]
    return subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=600)


def test_the_service_user_reads_a_model_copied_as_documented(service_dir):
    r = _as_nobody("calibrate", "--model", str(service_dir / "model"), "--line", "fabric", "--far", "0.05",
                   "--images", str(service_dir / "normals"), "--db", str(service_dir / "state" / "db.sqlite"),
                   home=service_dir / "state")  # fmt: skip
    assert r.returncode == 0, r.stderr
    assert "calibration" in r.stdout and (service_dir / "state" / "db.sqlite").is_file()


@pytest.mark.parametrize("private", ["model.safetensors", "."])
def test_an_unreadable_model_file_is_one_line_naming_it(service_dir, private):
    weights = (service_dir / "model" / private).resolve()
    weights.chmod(0o700 if private == "." else 0o600)
    r = _as_nobody("calibrate", "--model", str(service_dir / "model"), "--line", "fabric", "--far", "0.05",
                   "--images", str(service_dir / "normals"), "--db", str(service_dir / "state" / "db.sqlite"),
                   home=service_dir / "state")  # fmt: skip
    assert r.returncode == 2 and r.stderr.count("\n") == 1, r.stderr
    assert f"{weights}: not readable by this user" in r.stderr
