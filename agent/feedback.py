"""Operators' verdicts on alerts, and false alarms kept as normal samples of their line.

A verdict (`defect` or `false_alarm`) is one row per event in `alert_feedback`; the latest verdict wins. An
alert marked a false alarm keeps its frame as a normal sample of its line in <state_dir>/normals/LINE/
(`feedback.keep_false_alarms`): a live recalibration can include them, and `hgad-edge normals` exports them
as a training folder. The samples are bounded per line (`max_per_line`), in all (`max_mb`) and by age
(`max_age_days`), oldest first. Writes run on the agent's writer thread.
"""

from __future__ import annotations

import shutil
import time
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
from sqlalchemy import Engine, Float, String, select
from sqlalchemy.orm import Mapped, Session, mapped_column

from hgad.data.images import IMAGE_EXTENSIONS
from hgad.errors import BadInputError

from .config import FeedbackConfig
from .store import AgentBase, EventRow

LABELS = ("defect", "false_alarm")


class FeedbackRow(AgentBase):
    __tablename__ = "alert_feedback"

    event_id: Mapped[str] = mapped_column(String(32), primary_key=True)
    label: Mapped[str] = mapped_column(String(16))
    camera: Mapped[str] = mapped_column(String(64))
    line: Mapped[str] = mapped_column(String(128), index=True)
    ts: Mapped[float] = mapped_column(Float)
    by: Mapped[str] = mapped_column(String(32))
    sample_path: Mapped[str | None] = mapped_column(String(512), nullable=True)


@dataclass(frozen=True)
class Verdict:
    event_id: str
    label: str
    line: str
    sample: str | None  # the kept normal sample, for a false alarm


class FeedbackStore:
    def __init__(self, engine: Engine, folder: Path, cfg: FeedbackConfig):
        self.engine, self.folder, self.cfg = engine, folder, cfg
        AgentBase.metadata.create_all(engine)

    # ------------------------------------------------------------------ reads (any thread)
    def labels(self, event_ids: list[str]) -> dict[str, str]:
        with Session(self.engine) as s:
            rows = s.execute(select(FeedbackRow.event_id, FeedbackRow.label).where(FeedbackRow.event_id.in_(event_ids)))
            return dict(rows.all())

    def samples(self, line: str) -> list[Path]:
        folder = self.folder / line
        return sorted(p for p in folder.iterdir() if p.suffix.lower() in IMAGE_EXTENSIONS) if folder.is_dir() else []

    def sample_frames(self, line: str) -> list[np.ndarray]:
        frames = [cv2.imread(str(p), cv2.IMREAD_COLOR) for p in self.samples(line)]
        return [f for f in frames if f is not None]

    # ------------------------------------------------------------------ writes (writer thread)
    def mark(self, event_id: str, label: str, by: str) -> Verdict:
        if label not in LABELS:
            raise BadInputError(f"label: {label!r} is not one of {', '.join(LABELS)}")
        with Session(self.engine) as s, s.begin():
            event = s.scalar(select(EventRow).where(EventRow.event_id == event_id))
            if event is None:
                raise BadInputError(f"event_id: no alert {event_id!r} (it may have been removed by retention)")
            line = event.line
            sample = self._keep(event) if label == "false_alarm" and self.cfg.keep_false_alarms else None
            row = s.get(FeedbackRow, event_id)
            if row is not None and row.sample_path and row.sample_path != sample:
                Path(row.sample_path).unlink(missing_ok=True)  # no longer a false alarm: no longer a normal sample
            values = {"label": label, "camera": event.camera, "line": event.line, "ts": time.time(), "by": by}
            if row is None:
                s.add(FeedbackRow(event_id=event_id, sample_path=sample, **values))
            else:
                for k, v in (values | {"sample_path": sample}).items():
                    setattr(row, k, v)
        self.retention()
        return Verdict(event_id, label, line, sample)

    def _keep(self, event: EventRow) -> str | None:
        if not event.frame_path or not Path(event.frame_path).is_file():
            return None
        dst = self.folder / event.line / f"{event.event_id}.jpg"
        dst.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(event.frame_path, dst)
        return str(dst)

    def retention(self, now: float | None = None) -> int:
        """Remove samples beyond the age, per-line and total-size limits, oldest first; returns how many."""
        now = time.time() if now is None else now
        files = sorted((p for p in self.folder.glob("*/*") if p.is_file()), key=lambda p: p.stat().st_mtime)
        doomed = {p for p in files if now - p.stat().st_mtime > self.cfg.max_age_days * 86400}
        per_line: dict[str, list[Path]] = {}
        for p in files:
            per_line.setdefault(p.parent.name, []).append(p)
        for kept in per_line.values():
            doomed |= set(kept[: max(0, len(kept) - self.cfg.max_per_line)])
        total = sum(p.stat().st_size for p in files if p not in doomed)
        for p in files:
            if total <= self.cfg.max_mb * 2**20:
                break
            if p not in doomed:
                doomed.add(p)
                total -= p.stat().st_size
        for p in doomed:
            p.unlink(missing_ok=True)
        return len(doomed)


def export_samples(folder: Path, out: Path, line: str | None = None) -> dict[str, int]:
    """Copy the kept samples as a training folder, OUT/LINE/train/good/*.jpg (MVTec AD layout); per line, how
    many."""
    lines = [line] if line else sorted(p.name for p in folder.iterdir() if p.is_dir()) if folder.is_dir() else []
    counts = {}
    for name in lines:
        files = sorted((folder / name).glob("*")) if (folder / name).is_dir() else []
        target = out / name / "train" / "good"
        target.mkdir(parents=True, exist_ok=True)
        for f in files:
            shutil.copyfile(f, target / f.name)
        counts[name] = len(files)
    return counts
