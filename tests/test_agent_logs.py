"""Structured logs: one logfmt line per record, quiet by default, secrets never written."""

from __future__ import annotations

import io
import logging

from agent.logs import setup_logging


def test_one_logfmt_line_with_fields_quoted_and_secrets_masked():
    out = io.StringIO()
    setup_logging(verbose=1, stream=out)
    logging.getLogger("agent.test").info(
        "camera down", extra={"fields": {"camera": "cam 1", "reason": 'said "no"', "mqtt_password": "s3cret", "n": 0.5}}
    )
    line = out.getvalue().strip()
    assert "\n" not in line and "level=info" in line and 'msg="camera down"' in line
    assert 'camera="cam 1"' in line and 'reason="said \\"no\\""' in line and "n=0.5" in line
    assert "s3cret" not in line and "mqtt_password=***" in line


def test_quiet_by_default_info_with_v():
    out = io.StringIO()
    setup_logging(stream=out)
    logging.getLogger("agent.test").info("routine")
    logging.getLogger("agent.test").warning("act now")
    assert "routine" not in out.getvalue() and "act now" in out.getvalue()
    setup_logging(verbose=1, stream=out)
    logging.getLogger("agent.test").info("routine")
    assert "routine" in out.getvalue()
