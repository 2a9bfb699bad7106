"""Structured logs: one logfmt line per record (ts, level, logger, msg, then the record's fields).

Library code logs with `extra={"fields": {...}}`; the default level is WARNING so a service is quiet until
something needs attention, `-v` shows INFO and `--debug` DEBUG.
"""

from __future__ import annotations

import logging
import sys
from datetime import datetime, timezone

_SECRET_KEYS = ("password", "passwd", "secret", "token")


def _value(v: object) -> str:
    s = f"{v:.6g}" if isinstance(v, float) else str(v)
    if not s or any(c in s for c in ' ="\n'):
        s = '"' + s.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n") + '"'
    return s


class LogfmtFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        ts = datetime.fromtimestamp(record.created, timezone.utc).isoformat(timespec="milliseconds")
        parts = [
            f"ts={ts}",
            f"level={record.levelname.lower()}",
            f"logger={record.name}",
            f"msg={_value(record.getMessage())}",
        ]
        for k, v in (getattr(record, "fields", None) or {}).items():
            # Belt and braces: a field named like a secret is never written, whatever its caller meant.
            parts.append(f"{k}={'***' if any(s in k.lower() for s in _SECRET_KEYS) else _value(v)}")
        if record.exc_info:
            parts.append(f"exc={_value(self.formatException(record.exc_info))}")
        return " ".join(parts)


def setup_logging(verbose: int = 0, debug: bool = False, stream=None) -> None:
    level = logging.DEBUG if debug else logging.INFO if verbose else logging.WARNING
    handler = logging.StreamHandler(stream or sys.stderr)
    handler.setFormatter(LogfmtFormatter())
    root = logging.getLogger()
    for h in list(root.handlers):
        root.removeHandler(h)
    root.addHandler(handler)
    root.setLevel(level)
    # Third-party libraries stay at WARNING even with -v.
    for name in ("PIL", "matplotlib", "urllib3", "torch", "timm"):
        logging.getLogger(name).setLevel(max(level, logging.WARNING))
