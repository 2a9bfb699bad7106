"""Who may use the console: two roles (a viewer reads, an operator may act), passwords from files, a signed
session cookie, and a token every POST must carry.

- No password file configured (only allowed on loopback): everyone is an operator, no login.
- Otherwise every request needs a session: POST /api/login with a role and its password sets an HttpOnly,
  SameSite=Strict cookie `hgad_session` = ROLE.EXPIRY.HMAC, signed with a secret kept in the state folder
  (sessions survive a restart of the agent, not a new secret).
- Cross-site requests: a POST must carry the header X-CSRF-Token, which only the console's own pages can read
  (GET /api/session, same origin); a custom header also forces a browser's CORS preflight, which the console
  never grants. A request whose Origin is another host is refused outright.
Passwords are compared in constant time and never logged.
"""

from __future__ import annotations

import hashlib
import hmac
import os
import secrets
import time
from dataclasses import dataclass
from pathlib import Path

from hgad.errors import BadInputError

from ..config import WebConfig

ROLES = ("viewer", "operator")
COOKIE = "hgad_session"
CSRF_HEADER = "x-csrf-token"


@dataclass(frozen=True)
class Identity:
    role: str | None  # None: not logged in
    token: str  # what the cookie said ("" without one): the CSRF token is bound to it

    @property
    def may_act(self) -> bool:
        return self.role == "operator"


def _read_password(path: str, key: str) -> str:
    try:
        password = Path(path).read_text().strip()
    except OSError as exc:
        raise BadInputError(f"web.{key}: cannot read {path}: {exc.strerror}") from None
    if not password:
        raise BadInputError(f"web.{key}: {path} is empty")
    return password


def _secret(path: Path) -> bytes:
    """The signing secret, created on first use, readable by the agent's user only."""
    if path.is_file():
        return bytes.fromhex(path.read_text().strip())
    path.parent.mkdir(parents=True, exist_ok=True)
    value = secrets.token_bytes(32)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as fh:
        fh.write(value.hex())
    return value


class Auth:
    def __init__(self, cfg: WebConfig, secret_file: Path):
        self.cfg = cfg
        self.required = cfg.login_required
        self.passwords = {
            role: _read_password(path, f"{role}_password_file")
            for role, path in (("viewer", cfg.viewer_password_file), ("operator", cfg.operator_password_file))
            if path
        }
        self.secret = _secret(secret_file)

    def _sign(self, text: str) -> str:
        return hmac.new(self.secret, text.encode(), hashlib.sha256).hexdigest()

    def login(self, role: str, password: str) -> str | None:
        """The session cookie's value, or None for a wrong role or password."""
        expected = self.passwords.get(role)
        if expected is None or not hmac.compare_digest(expected.encode(), password.encode()):
            return None
        body = f"{role}.{int(time.time() + self.cfg.session_hours * 3600)}"
        return f"{body}.{self._sign(body)}"

    def identify(self, cookie: str | None) -> Identity:
        if not self.required:
            return Identity("operator", "")
        try:
            role, expiry, signature = (cookie or "").split(".")
            valid = hmac.compare_digest(signature, self._sign(f"{role}.{expiry}")) and float(expiry) > time.time()
        except ValueError:
            valid = False
        return Identity(role if valid and role in ROLES else None, cookie or "")

    def csrf(self, identity: Identity) -> str:
        return self._sign(f"csrf:{identity.token}")

    def csrf_ok(self, identity: Identity, header: str | None) -> bool:
        return bool(header) and hmac.compare_digest(header, self.csrf(identity))
