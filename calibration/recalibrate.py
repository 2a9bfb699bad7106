"""Recalibrating the lines a new model left without a valid profile, from the folders their profiles were made
from and with the same settings (`hgad-edge recalibrate`).

A profile belongs to one model (and, for a line kept when lines were added, to the models of its lineage). After
`train --from` or a retraining, every other line needs a new profile before the agent judges it with the new
model. Each profile records where its normal images came from (`folder:PATH` or `live:CAMERA`) and how it was
made (false-alarm rate, scoring mode, confidence, pixel rate), so a line calibrated from a folder can be redone
without anyone retyping the command; a line calibrated live must be recalibrated on its camera again.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from hgad.errors import BadInputError
from hgad.model_dir import LoadedModel

from .calibrate import resolve_mode
from .profile import Profile
from .store import ProfileStore

HOLDS, REDO, LEFT, NEW = "holds", "recalibrate", "left", "not calibrated"


@dataclass(frozen=True)
class Step:
    """What recalibrating does for one line."""

    line: str
    action: str  # HOLDS, REDO, LEFT or NEW
    profile: Profile | None  # the line's active profile, if it has one
    folder: Path | None = None  # REDO: the normal images to score again
    why: str = ""  # LEFT and NEW: what the user must do instead

    def describe(self) -> str:
        """One line for the user; REDO's is what a dry run would do."""
        p = self.profile
        if self.action == HOLDS:
            return f"line {self.line}: its calibration {p.calibration_id} v{p.version} holds for this model"
        if self.action == REDO:
            return (
                f"line {self.line}: would recalibrate from {self.folder} ({p.mode}, far {p.far:g}; its profile "
                f"v{p.version} belongs to model {p.model_id})"
            )
        return f"line {self.line}: {self.why}"


def plan(loaded: LoadedModel, store: ProfileStore, lines: Sequence[str] | None = None) -> list[Step]:
    """One step per line: the lines named, else every line with an active profile and every line of the
    model (those of the model without a profile are listed as NEW, e.g. the lines just added)."""
    active = store.active_lines()
    known = set(active) | set(loaded.model.classes)
    if unknown := [line for line in lines or () if line not in known]:
        raise BadInputError(
            f"--lines: {', '.join(unknown)} neither a line of the model ({', '.join(loaded.model.classes)}) nor "
            f"calibrated in this database ({', '.join(sorted(active)) or 'none'})"
        )
    names = list(lines) if lines else sorted(known)
    return [_step(loaded, line, active.get(line)) for line in names]


def _step(loaded: LoadedModel, line: str, prof: Profile | None) -> Step:
    calibrate = f"hgad-edge calibrate --model {loaded.path} --line {line} --images DIR"
    if prof is None:
        return Step(line, NEW, None, why=f"no profile yet; run: {calibrate}")
    if prof.model_id in loaded.profile_models(line):
        return Step(line, HOLDS, prof)
    try:
        resolve_mode(loaded.model.classes, line, prof.mode)  # calibrate's own rule for a mode and a line
    except BadInputError:
        return Step(line, LEFT, prof, why=f"calibrated class-aware, and the model has no line {line}: {calibrate}")
    kind, _, where = prof.source.partition(":")  # "folder:PATH" or "live:CAMERA"
    if kind != "folder" or not where:
        return Step(
            line,
            LEFT,
            prof,
            why=f"calibrated live on {where or 'its camera'}: recalibrate it there (console or calibrate/set)",
        )
    folder = Path(where)
    if not folder.is_dir():
        return Step(line, LEFT, prof, why=f"{folder}, the folder it was calibrated from, is gone: {calibrate}")
    return Step(line, REDO, prof, folder=folder)
