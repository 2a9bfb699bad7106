"""Console authentication: roles from password files, signed expiring sessions, CSRF tokens bound to them."""

from __future__ import annotations

import time

import pytest

from agent.config import WebConfig
from agent.web.auth import Auth
from hgad.errors import BadInputError


def _auth(tmp_path, **passwords) -> Auth:
    files = {}
    for role, password in passwords.items():
        (tmp_path / role).write_text(password + "\n")
        files[f"{role}_password_file"] = str(tmp_path / role)
    return Auth(WebConfig(**files), tmp_path / "secret")


def test_without_passwords_everyone_is_an_operator_on_loopback(tmp_path):
    auth = _auth(tmp_path)
    who = auth.identify(None)
    assert not auth.required and who.role == "operator" and who.may_act
    assert auth.csrf_ok(who, auth.csrf(who)) and not auth.csrf_ok(who, "forged") and not auth.csrf_ok(who, None)


def test_each_role_logs_in_with_its_own_password(tmp_path):
    auth = _auth(tmp_path, viewer="look", operator="act")
    assert auth.required and auth.identify(None).role is None
    assert auth.login("operator", "look") is None and auth.login("viewer", "act") is None
    assert auth.login("admin", "act") is None
    viewer, operator = auth.identify(auth.login("viewer", "look")), auth.identify(auth.login("operator", "act"))
    assert (viewer.role, viewer.may_act, operator.role, operator.may_act) == ("viewer", False, "operator", True)
    # A CSRF token belongs to its session: another session's token does not pass.
    assert auth.csrf_ok(operator, auth.csrf(operator)) and not auth.csrf_ok(operator, auth.csrf(viewer))


def test_a_forged_or_expired_cookie_is_no_session(tmp_path):
    auth = _auth(tmp_path, operator="act")
    cookie = auth.login("operator", "act")
    _, expiry, signature = cookie.split(".")
    assert auth.identify(f"operator.{int(expiry) + 3600}.{signature}").role is None  # expiry edited
    assert auth.identify(f"viewer.{expiry}.{signature}").role is None
    old = f"operator.{int(time.time()) - 1}"
    assert auth.identify(f"{old}.{auth._sign(old)}").role is None
    # The secret persists in the state folder: a restarted agent honours the session.
    assert _auth(tmp_path, operator="act").identify(cookie).role == "operator"
    assert (tmp_path / "secret").stat().st_mode & 0o777 == 0o600


def test_an_empty_password_file_is_one_clear_error(tmp_path):
    with pytest.raises(BadInputError, match=r"web.operator_password_file: .* is empty"):
        _auth(tmp_path, operator="")
