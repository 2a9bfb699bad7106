"""Profiles in SQLite: versioned per line, one active per line, superseded ones kept as history."""

from __future__ import annotations

import json
from collections.abc import Collection
from datetime import datetime

from sqlalchemy import (
    Boolean,
    Engine,
    Float,
    Index,
    Integer,
    String,
    Text,
    UniqueConstraint,
    func,
    select,
    text,
    update,
)
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import DeclarativeBase, Mapped, Session, mapped_column

from hgad.errors import BadInputError

from .profile import Profile


class Base(DeclarativeBase):
    """Tables owned by calibration (profiles)."""


class ProfileMismatchError(BadInputError):
    """The active profile of a line belongs to another model: the line must be recalibrated."""


class CalibrationRow(Base):
    __tablename__ = "calibrations"
    __table_args__ = (
        UniqueConstraint("line", "version", name="uq_calibrations_line_version"),
        # The database itself refuses a second active profile for a line.
        Index("ix_calibrations_one_active", "line", unique=True, sqlite_where=text("active = 1")),
    )

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    calibration_id: Mapped[str] = mapped_column(String(32), unique=True)
    model_id: Mapped[str] = mapped_column(String(32), index=True)
    line: Mapped[str] = mapped_column(String(128), index=True)
    version: Mapped[int] = mapped_column(Integer)
    active: Mapped[bool] = mapped_column(Boolean, default=False)
    created: Mapped[str] = mapped_column(String(40))
    superseded: Mapped[str | None] = mapped_column(String(40), nullable=True)
    mode: Mapped[str] = mapped_column(String(20))
    far: Mapped[float] = mapped_column(Float)
    threshold: Mapped[float] = mapped_column(Float)
    n: Mapped[int] = mapped_column(Integer)
    method: Mapped[str] = mapped_column(String(20))
    payload: Mapped[str] = mapped_column(Text)

    def profile(self) -> Profile:
        # The indexed columns are what queries select on, so they are authoritative for identity.
        return Profile.from_dict(json.loads(self.payload)).replace(
            calibration_id=self.calibration_id,
            model_id=self.model_id,
            line=self.line,
            version=self.version,
            active=self.active,
        )


class ProfileStore:
    def __init__(self, engine: Engine):
        self.engine = engine
        Base.metadata.create_all(engine)

    def save(self, profile: Profile, activate: bool = True) -> Profile:
        """Store a new version for the profile's line; with `activate`, it supersedes the active one
        atomically (the old row stays, inactive)."""
        for _ in range(5):
            try:
                with Session(self.engine) as s, s.begin():
                    version = (
                        s.scalar(select(func.max(CalibrationRow.version)).where(CalibrationRow.line == profile.line))
                        or 0
                    ) + 1
                    if activate:
                        s.execute(
                            update(CalibrationRow)
                            .where(CalibrationRow.line == profile.line, CalibrationRow.active.is_(True))
                            .values(active=False, superseded=profile.created)
                        )
                    stored = profile.replace(version=version, active=activate)
                    s.add(
                        CalibrationRow(
                            calibration_id=stored.calibration_id,
                            model_id=stored.model_id,
                            line=stored.line,
                            version=version,
                            active=activate,
                            created=stored.created,
                            mode=stored.mode,
                            far=stored.far,
                            threshold=stored.threshold,
                            n=stored.n,
                            method=stored.method,
                            payload=json.dumps(stored.to_dict()),
                        )
                    )
                return stored
            except IntegrityError:
                continue  # another writer took this version number; read it again
        raise BadInputError(f"database: could not store a profile for line {profile.line!r} (concurrent writers)")

    def active(self, line: str) -> Profile | None:
        with Session(self.engine) as s:
            row = s.scalar(select(CalibrationRow).where(CalibrationRow.line == line, CalibrationRow.active.is_(True)))
            return row.profile() if row else None

    def active_for(self, line: str, model_id: str, also: Collection[str] = ()) -> Profile:
        """The active profile of `line`, which must belong to `model_id` (or to a model in `also` whose profiles
        of this line still hold for it: LoadedModel.profile_models)."""
        prof = self.active(line)
        if prof is None:
            raise BadInputError(
                f"line {line!r} has no calibration profile; run: hgad-edge calibrate --model MODEL_DIR "
                f"--line {line} --images DIR"
            )
        if prof.model_id != model_id and prof.model_id not in also:
            raise ProfileMismatchError(
                f"line {line!r}: the active calibration {prof.calibration_id} (version {prof.version}) belongs "
                f"to model {prof.model_id}, not to the loaded model {model_id}; recalibrate the line (from the "
                f"folder it was calibrated from: hgad-edge recalibrate --model MODEL_DIR --lines {line})"
            )
        return prof

    def get(self, calibration_id: str) -> Profile | None:
        with Session(self.engine) as s:
            row = s.scalar(select(CalibrationRow).where(CalibrationRow.calibration_id == calibration_id))
            return row.profile() if row else None

    def lines(self) -> list[str]:
        """Every line with at least one profile, by name."""
        with Session(self.engine) as s:
            return list(s.scalars(select(CalibrationRow.line).distinct().order_by(CalibrationRow.line)))

    def history(self, line: str) -> list[Profile]:
        with Session(self.engine) as s:
            rows = s.scalars(select(CalibrationRow).where(CalibrationRow.line == line).order_by(CalibrationRow.version))
            return [r.profile() for r in rows]

    def active_lines(self) -> dict[str, Profile]:
        with Session(self.engine) as s:
            rows = s.scalars(select(CalibrationRow).where(CalibrationRow.active.is_(True)))
            return {r.line: r.profile() for r in rows}

    def activate(self, calibration_id: str) -> Profile:
        """Make an earlier version active again (a rollback)."""
        now = datetime.now().astimezone().isoformat(timespec="seconds")
        with Session(self.engine) as s, s.begin():
            row = s.scalar(select(CalibrationRow).where(CalibrationRow.calibration_id == calibration_id))
            if row is None:
                raise BadInputError(f"calibration {calibration_id!r} does not exist")
            s.execute(
                update(CalibrationRow)
                .where(CalibrationRow.line == row.line, CalibrationRow.active.is_(True))
                .values(active=False, superseded=now)
            )
            row.active = True
            row.superseded = None
            return row.profile()
