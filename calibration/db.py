"""The SQLite database the agent and the calibrate command share (SQLAlchemy 2.0, WAL mode)."""

from __future__ import annotations

from pathlib import Path

from sqlalchemy import Engine, create_engine, event
from sqlalchemy.exc import DatabaseError

from hgad.errors import BadInputError


def _pragmas(dbapi_connection, _record) -> None:
    cur = dbapi_connection.cursor()
    # WAL: readers never block the agent's single writer. synchronous=FULL: a committed alert survives a
    # power cut, not only a crash of the process (an edge box loses power more often than a server).
    cur.execute("PRAGMA journal_mode=WAL")
    cur.execute("PRAGMA synchronous=FULL")
    cur.execute("PRAGMA busy_timeout=10000")
    cur.execute("PRAGMA foreign_keys=ON")
    cur.close()


def open_database(path: Path | str) -> Engine:
    """An engine on the SQLite file at `path` (created with its folder if missing), WAL enabled."""
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise BadInputError(f"database: cannot create folder {path.parent}: {exc.strerror}") from None
    engine = create_engine(f"sqlite:///{path}", future=True)
    event.listen(engine, "connect", _pragmas)
    try:
        with engine.connect() as conn:
            conn.exec_driver_sql("PRAGMA schema_version").fetchone()
    except DatabaseError as exc:
        engine.dispose()
        raise BadInputError(f"database: {path} is not an SQLite database or is damaged ({exc.orig})") from None
    return engine
