"""`hgad-edge`: the command line. Names and flags are a contract (see README, "Command line").

Exit codes: 0 ok, 2 bad input (config, paths, data), 1 anything else. Errors are one line naming the file,
key or value at fault; `--debug` shows the traceback instead. Heavy libraries (torch, OpenCV, scipy) are
imported inside the commands that need them, so a mistyped flag or path is answered in a fraction of a second.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from collections.abc import Callable, Sequence
from pathlib import Path

from hgad import __version__
from hgad.config import DEFAULT_IMAGE_SIZE, PRIORS
from hgad.errors import BadInputError, HgadError
from hgad.memory import keep_freed_memory
from hgad.typed_config import valid_name

from . import paths

log = logging.getLogger("agent.cli")

EXIT_OK, EXIT_FAILURE, EXIT_BAD_INPUT = 0, 1, 2
BACKEND_CHOICES = ("auto", "torch", "tensorrt", "onnxruntime")


class UsageError(BadInputError):
    pass


class Parser(argparse.ArgumentParser):
    """argparse, but a usage error is one line (and exit code 2) like every other bad input."""

    def error(self, message: str) -> None:  # type: ignore[override]
        command = self.prog.removeprefix("hgad-edge").strip()
        where = f"{command}: " if command else ""
        raise UsageError(f"{where}{message} (see {self.prog} --help)")


class Help(argparse.HelpFormatter):
    """Every option's help says its default: its own words where it says "default", else the value."""

    def _get_help_string(self, action: argparse.Action) -> str:
        text = action.help or ""
        no_default = action.default in (None, False, argparse.SUPPRESS) or not action.option_strings
        if "default" in text or no_default or isinstance(action, argparse._VersionAction):
            return text
        return f"{text} (default: %(default)s)"


# ------------------------------------------------------------------------------------------ argument types


def _csv(value: str) -> list[str]:
    items = [v.strip() for v in value.split(",") if v.strip()]
    if not items:
        raise argparse.ArgumentTypeError("expected a comma-separated list, e.g. a,b")
    return items


def _number(value: str) -> float:
    try:
        return float(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{value!r} is not a number") from None


def _rate(value: str) -> float:
    v = _number(value)
    if not 0.0 < v < 1.0:
        raise argparse.ArgumentTypeError(f"{value} is not a rate between 0 and 1, e.g. 0.01")
    return v


def _positive(value: str) -> int:
    try:
        v = int(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{value!r} is not a whole number") from None
    if v < 1:
        raise argparse.ArgumentTypeError(f"{value} must be at least 1")
    return v


def _line(value: str) -> str:
    problem = valid_name(value)
    if problem:
        raise argparse.ArgumentTypeError(problem)
    return value


# ------------------------------------------------------------------------------------------ paths


def _writable_dir(path: Path, flag: str) -> None:
    """Check that `path` can be created as a folder by this user, creating nothing: a command that fails later
    leaves no empty folder behind."""
    if path.exists():
        if not path.is_dir():
            raise BadInputError(f"{flag}: {path} exists and is not a directory; give a folder")
        if not os.access(path, os.W_OK | os.X_OK):
            raise BadInputError(f"{flag}: {path} is not writable by this user")
        return
    parent = path.parent
    while not parent.exists() and parent != parent.parent:
        parent = parent.parent
    if not parent.is_dir():
        raise BadInputError(f"{flag}: cannot create {path}: {parent} is a file")
    if not os.access(parent, os.W_OK | os.X_OK):
        raise BadInputError(f"{flag}: cannot create {path}: {parent} is not writable by this user")


def _output_dir(path: Path, flag: str) -> Path:
    """Create an output folder now: a mistyped or read-only path must fail before minutes of work."""
    _writable_dir(path, flag)
    path.mkdir(parents=True, exist_ok=True)
    return path


def _output_file(path: Path | None, flag: str) -> None:
    """Check up front that `path` can be written, creating nothing."""
    if path is None:
        return
    if path.is_dir():
        raise BadInputError(f"{flag}: {path} is a directory; give a file name, e.g. {path / 'out.json'}")
    _writable_dir(path.parent, flag)


def _input_dir(path: Path, flag: str) -> Path:
    if path.is_file():
        raise BadInputError(f"{flag}: {path} is a file; give a folder")
    if not path.is_dir():
        raise BadInputError(f"{flag}: {path} does not exist")
    return path


def _write_json(path: Path | None, data: dict) -> None:
    if path is None:
        return
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(data, indent=2) + "\n")
    except OSError as exc:
        raise BadInputError(f"--json: cannot write {path}: {exc.strerror}") from None


# ------------------------------------------------------------------------------------------ commands


def cmd_synth(a: argparse.Namespace) -> int:
    from hgad.data.synth import SynthSpec, write_dataset
    from hgad.progress import bar

    _output_dir(a.out, "synth OUT")
    names = write_dataset(a.out, SynthSpec(a.classes, a.train, a.test, a.size, a.seed), progress=bar)
    print(f"wrote {len(names)} lines ({', '.join(names)}) to {a.out}")
    return EXIT_OK


def cmd_add_lines(a: argparse.Namespace) -> int:
    """`train --from`: the lines of --classes added to a trained model, as a group of their own."""
    from hgad.add_lines import add_lines
    from hgad.data.datasets import load_split, select_classes
    from hgad.model_dir import load_model, save_model
    from hgad.progress import bar
    from hgad.replay import load as load_replay

    if not a.classes:
        raise BadInputError("train --from: name the lines to add with --classes new1,new2")
    base = load_model(a.from_model)
    new = select_classes(_input_dir(a.data, "--data"), a.classes)
    _output_dir(a.out, "--out")
    replay = load_replay(base.path)
    if replay is None:
        raise BadInputError(
            f"--from: {a.from_model} was saved without a replay sample of its lines (trained before hgad-edge "
            f"0.2): train a model of every line from scratch instead"
        )
    samples = load_split(a.data, "train", new)
    print(f"adding {', '.join(new)} ({len(samples)} images) to model {base.model_id}", file=sys.stderr)
    model, report = add_lines(base, samples, replay, a.epochs, a.device, bar)
    lineage = {"from": base.model_id, "kept": report.kept, "before": base.meta.get("lineage")}
    model_id = save_model(model, a.out, report.to_dict(), report.replay, lineage=lineage)
    recalibrate = [line for line in base.model.classes if line not in report.kept]
    print(
        f"model {model_id} saved to {a.out} ({len(model.classes)} lines in {len(model.groups)} groups, "
        f"{report.seconds:.0f} s); profiles of {', '.join(report.kept) or 'no old line'} still hold"
        + (f"; recalibrate {', '.join(recalibrate)} (hgad-edge recalibrate --model {a.out})" if recalibrate else "")
    )
    unjudged = [line for line in base.model.classes if line not in report.confused]
    if unjudged:
        print(
            f"{a.from_model}: its replay sample holds no whole images of {', '.join(unjudged)} (saved before "
            f"they were kept), so whether their frames stay in their group could not be checked: recalibrate them",
            file=sys.stderr,
        )
    confused = {line: share for line, share in report.confused.items() if share > 0}
    if confused:
        shares = ", ".join(f"{line} {share:.0%}" for line, share in confused.items())
        print(
            f"class-agnostic scoring confuses lines across groups ({shares} of their stored images scored by "
            f"another group): give their cameras their line (class-aware scoring), or train every line from "
            f"scratch",
            file=sys.stderr,
        )
    return EXIT_OK


def cmd_train(a: argparse.Namespace) -> int:
    if a.from_model is not None:
        return cmd_add_lines(a)
    from hgad.config import BackboneConfig, ModelConfig, PriorConfig, TrainConfig
    from hgad.data.datasets import load_split, select_classes
    from hgad.model_dir import save_model
    from hgad.progress import bar
    from hgad.runtime.torch_backend import resolve_device
    from hgad.train import train

    device = resolve_device(a.device)
    classes = select_classes(_input_dir(a.data, "--data"), a.classes)
    _output_dir(a.out, "--out")
    train_kwargs = {"seed": a.seed} | ({"epochs": a.epochs} if a.epochs else {})
    try:
        cfg = ModelConfig(
            classes=tuple(classes),
            image_size=a.image_size,
            backbone=BackboneConfig(name=a.backbone, weights=str(a.weights) if a.weights else None),
            prior=PriorConfig(kind=a.prior),
            train=TrainConfig(**train_kwargs),
        )
    except ValueError as exc:
        raise BadInputError(f"train: {exc}") from None
    samples = load_split(a.data, "train", classes)
    print(
        f"training the {a.prior} prior on {len(samples)} images of {len(classes)} lines at {cfg.image_size} px "
        f"({cfg.train.epochs} epochs, {device})",
        file=sys.stderr,
    )
    model, report = train(cfg, samples, device, progress=bar)
    model_id = save_model(model, a.out, report.to_dict(), report.replay)
    print(
        f"model {model_id} saved to {a.out} (features {report.seconds_features:.0f} s, "
        f"flow and statistics {report.seconds_training:.0f} s)"
    )
    return EXIT_OK


def _print_eval(result: dict) -> None:
    head = f"{'class':<16}{'image AUROC':>13}{'pixel AUROC':>13}{'AUPRO':>9}"
    print(f"mode: {result['mode']}")
    print(head)
    print("-" * len(head))
    for name, r in result["classes"].items():
        print(f"{name:<16}{r['image_auroc']:>13.4f}{r['pixel_auroc']:>13.4f}{r['aupro']:>9.4f}")
    m = result["mean"]
    print("-" * len(head))
    print(f"{'mean':<16}{m['image_auroc']:>13.4f}{m['pixel_auroc']:>13.4f}{m['aupro']:>9.4f}")


def cmd_eval(a: argparse.Namespace) -> int:
    from hgad.evaluate import evaluate
    from hgad.model_dir import load_model
    from hgad.progress import bar
    from hgad.runtime.torch_backend import resolve_device

    _output_file(a.json, "--json")
    _input_dir(a.data, "--data")
    device = resolve_device(a.device)
    loaded = load_model(a.model, device)
    result = evaluate(loaded.model, a.data, a.classes, a.class_aware, device, progress=bar)
    result["model_id"] = loaded.model_id
    _print_eval(result)
    _write_json(a.json, result)
    return EXIT_OK


def cmd_calibrate(a: argparse.Namespace) -> int:
    from calibration.calibrate import calibrate_folder, resolve_mode, unknown_line_warning
    from calibration.db import open_database
    from calibration.store import ProfileStore
    from hgad.model_dir import load_model
    from hgad.progress import bar
    from hgad.runtime.torch_backend import TorchBackend

    # Everything that can fail on bad input happens before the database or any folder is touched.
    _input_dir(a.images, "--images")
    if a.anomalies is not None:
        _input_dir(a.anomalies, "--anomalies")
    _output_file(a.db, "--db")
    _output_file(a.json, "--json")
    if a.report is not None:
        _writable_dir(a.report, "--report")
    if a.db.is_file():
        open_database(a.db).dispose()  # a file that is not a database fails now, not after the scoring
    loaded = load_model(a.model)
    mode = resolve_mode(loaded.model.classes, a.line, a.mode)  # the one error line, before any warning
    warning = unknown_line_warning(loaded.model.classes, a.line)
    if warning:
        print(f"warning: {warning}", file=sys.stderr)
    backend = TorchBackend(loaded, a.device)
    result = calibrate_folder(
        loaded, backend, a.line, a.images, a.far, mode, a.confidence, anomalies=a.anomalies, progress=bar
    )
    store = ProfileStore(open_database(a.db))
    data, report_dir = _store_calibration(store, result, a.db, a.report)
    p = result.profile
    print(
        f"line {p.line}: calibration {p.calibration_id} v{p.version} active; threshold {p.threshold:.6g} "
        f"for far {p.far:g} ({p.method_detail}); n={p.n}, realised far <= {p.far_bound or float('nan'):.4f} "
        f"with 90% confidence"
    )
    if result.recall is not None:
        print(f"recall on {result.anomaly_scores.size} anomalous images: {result.recall:.3f}")
    print(f"report: {report_dir}")
    _write_json(a.json, data)
    return EXIT_OK


def _store_calibration(store, result, db: Path, report: Path | None = None) -> tuple[dict, Path]:
    """Store a calibration as its line's active profile (the one it supersedes stays, inactive) and write its
    report (default: reports/LINE/vN next to the database); its summary and the report's folder."""
    from calibration.report import write_report

    previous = store.active(result.profile.line)
    result.profile = p = store.save(result.profile, activate=True)
    report_dir = report or paths.reports(db) / p.line / f"v{p.version}"
    data = write_report(report_dir, result)
    if previous is not None:
        data["superseded"] = {k: getattr(previous, k) for k in ("calibration_id", "version", "model_id")}
    return data, report_dir


def cmd_recalibrate(a: argparse.Namespace) -> int:
    from calibration.calibrate import calibrate_folder
    from calibration.db import open_database
    from calibration.recalibrate import LEFT, REDO, plan
    from calibration.store import ProfileStore
    from hgad.model_dir import load_model
    from hgad.progress import bar
    from hgad.runtime.torch_backend import TorchBackend

    _output_file(a.json, "--json")
    if not a.db.is_file():
        raise BadInputError(f"--db: {a.db} does not exist; no line has been calibrated there (hgad-edge calibrate)")
    store = ProfileStore(open_database(a.db))
    loaded = load_model(a.model)
    steps = plan(loaded, store, a.lines)
    backend, done, left, out = None, [], [], {}
    for step in steps:
        entry: dict = {"action": step.action}
        if step.profile is not None:
            entry["was"] = {k: getattr(step.profile, k) for k in ("calibration_id", "version", "model_id")}
        if step.action == REDO and not a.dry_run:
            p = step.profile
            backend = backend or TorchBackend(loaded, a.device)
            try:
                result = calibrate_folder(
                    loaded, backend, step.line, step.folder, p.far, p.mode, p.confidence, p.pixel_far, progress=bar
                )
            except HgadError as exc:  # this line's folder no longer serves; the others still can
                entry |= {"action": LEFT, "why": str(exc)}
                left.append(step.line)
                print(f"warning: line {step.line}: {exc}", file=sys.stderr)
            else:
                _, report_dir = _store_calibration(store, result, a.db)
                new = result.profile
                entry["now"] = {k: getattr(new, k) for k in ("calibration_id", "version", "threshold", "n")}
                entry["now"]["report"] = str(report_dir)
                changed = "" if new.images_hash == p.images_hash else f"; its images changed since (n {p.n} -> {new.n})"
                print(
                    f"line {new.line}: calibration {new.calibration_id} v{new.version} active; threshold "
                    f"{new.threshold:.6g} (was {p.threshold:.6g}) for far {new.far:g}, {new.mode}, from "
                    f"{step.folder}{changed}; report: {report_dir}"
                )
                done.append(step.line)
        elif step.action == LEFT:
            entry["why"] = step.why
            left.append(step.line)
            print(f"warning: {step.describe()}", file=sys.stderr)
        else:
            entry["why"] = step.why
            print(step.describe())
        out[step.line] = entry
    verb = "would recalibrate" if a.dry_run else "recalibrated"
    redo = [s.line for s in steps if s.action == REDO] if a.dry_run else done
    print(
        f"model {loaded.model_id}: {verb} {len(redo)} line(s)"
        + (f" ({', '.join(redo)})" if redo else "")
        + (f"; left for you: {', '.join(left)}" if left else "")
    )
    _write_json(a.json, {"model_id": loaded.model_id, "dry_run": a.dry_run, "lines": out})
    return EXIT_FAILURE if left else EXIT_OK


def _calibration_frames(folder: Path | None, size: int):
    if folder is None:
        return None
    import numpy as np

    from hgad.data.datasets import load_folder
    from hgad.data.images import read_image

    return np.stack([read_image(s.path, size) for s in load_folder(folder)[:256]])


def cmd_export(a: argparse.Namespace) -> int:
    from hgad.model_dir import load_model
    from hgad.runtime.export import export_onnxruntime, export_tensorrt, export_torch

    _output_file(a.out, "--out")
    loaded = load_model(a.model)
    if a.backend in ("torch", "onnxruntime") and a.precision not in (None, "fp32"):
        raise BadInputError(f"--precision {a.precision}: the {a.backend} export is fp32; use --backend tensorrt")
    if a.backend == "torch":
        result = export_torch(loaded, a.out or a.model / "model.pt2", a.batch)
    elif a.backend == "onnxruntime":
        result = export_onnxruntime(loaded, paths.engine_cache(a.cache), a.out, a.batch)
    else:
        frames = _calibration_frames(a.calibration, loaded.model.cfg.image_size)
        result = export_tensorrt(loaded, paths.engine_cache(a.cache), a.out, a.precision or "fp16", a.batch, frames)
    p = result.parity
    print(
        f"{result.backend} {result.precision} batch {result.batch}: {result.path} "
        f"(golden parity: score error {p.max_score_error:.2e}, map error {p.max_map_error:.2e}, "
        f"tolerance {p.tolerance:g})"
    )
    return EXIT_OK


def cmd_bench(a: argparse.Namespace) -> int:
    from hgad.model_dir import load_model
    from hgad.runtime.bench import print_bench, run_bench, sustained_fps
    from hgad.runtime.select import open_backend

    if a.model is None and not a.demo:
        raise BadInputError("bench: give --model MODEL_DIR, or --demo for the demo's model")
    if (a.camera_fps or a.seconds) and not a.agent:
        raise BadInputError("bench: --camera-fps and --seconds set the agent's run; add --agent")
    _output_file(a.json, "--json")
    if a.demo:
        from .demo import DemoSpec, prepare_model

        loaded = prepare_model(DemoSpec(out=Path("demo-out")))
    else:
        loaded = load_model(a.model)
    backend, reason = open_backend(loaded, a.backend, a.device, a.precision, 1, paths.engine_cache(a.cache))
    result = run_bench(backend, a.batch, a.iters, camera_shape=a.frame)
    result["backend_choice"] = reason
    if a.agent:
        from .bench_agent import AgentBenchSpec, agent_summary, run_agent_bench

        live = f"-{a.camera_fps:g}fps" if a.camera_fps else ""
        workdir = (
            a.json.parent if a.json else Path("bench-out")
        ).resolve() / f"agent-{backend.info.name}-{a.cameras}cam{live}"
        spec = AgentBenchSpec(
            workdir, backend.info.name, a.cameras, a.frame, engine_cache=paths.engine_cache(a.cache),
            console=a.console, camera_fps=a.camera_fps, seconds=a.seconds or AgentBenchSpec.seconds,
            device=backend.runs_on(), precision=backend.info.precision,
        )  # fmt: skip

        def bare_fps(seconds: float) -> float:
            return sustained_fps(backend, seconds, camera_shape=a.frame)

        result["agent"] = run_agent_bench(loaded, backend, spec, result["batches"]["1"]["fps"], bare_fps)
    print_bench(result)
    if a.agent:
        print(agent_summary(result["agent"]))
    _write_json(a.json, result)
    return EXIT_OK


def _number_in(low: float, high: float, what: str, hint: str) -> Callable[[str], float]:
    """An argparse type: a number from low to high. A refusal names `what` it must be, then the range followed
    by `hint` (a unit, an example)."""

    def check(value: str) -> float:
        v = _number(value)
        if not low <= v <= high:
            raise argparse.ArgumentTypeError(f"{value} is not {what} ({low:g} to {high:g}{hint})")
        return v

    return check


def _frame(value: str) -> tuple[int, int]:
    """WIDTHxHEIGHT -> (height, width)."""
    try:
        w, h = (int(v) for v in value.lower().split("x"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"{value!r} is not WIDTHxHEIGHT, e.g. 1280x720") from None
    if not (16 <= w <= 8192 and 16 <= h <= 8192):
        raise argparse.ArgumentTypeError(f"{value} is not a camera frame size (16 to 8192 pixels a side)")
    return h, w


def cmd_run(a: argparse.Namespace) -> int:
    from .config import load_config
    from .logs import setup_logging

    cfg = load_config(a.config)
    if not (a.verbose or a.debug):
        setup_logging(verbose=int(cfg.log_level in ("info", "debug")), debug=cfg.log_level == "debug")
    from .daemon import Agent  # torch and OpenCV: only once the configuration is known to be good

    return Agent(cfg, exit_when_done=a.exit_when_done).run()


def cmd_demo(a: argparse.Namespace) -> int:
    from .demo import DemoSpec, run

    return run(DemoSpec(out=a.out, lines=a.lines, epochs=a.epochs, seed=a.seed), console=a.console)


def cmd_normals(a: argparse.Namespace) -> int:
    from .config import load_config
    from .feedback import export_samples

    cfg = load_config(a.config)
    _output_dir(a.out, "--out")
    counts = export_samples(cfg.normals_path, a.out, a.line)
    if not any(counts.values()):
        print(f"no false alarms kept in {cfg.normals_path}{f' for line {a.line}' if a.line else ''}")
    for line, n in counts.items():
        print(f"{line}: {n} frame(s) -> {a.out / line / 'train' / 'good'}")
    return EXIT_OK


# ------------------------------------------------------------------------------------------- parser


def _common() -> Parser:
    """Options every command takes, before or after its name."""
    c = Parser(add_help=False)
    c.add_argument("--debug", action="store_true", default=argparse.SUPPRESS, help="tracebacks and debug logs")
    c.add_argument("-v", "--verbose", action="count", default=argparse.SUPPRESS, help="info logs")
    return c


def _synth(sub, common) -> None:
    s = sub.add_parser("synth", parents=[common], formatter_class=Help, help="write a synthetic multi-line dataset")
    s.add_argument("out", type=Path, help="a new or empty folder, or an earlier synth dataset (replaced)")
    s.add_argument("--classes", type=_positive, default=6, help="product lines")
    s.add_argument("--train", type=_positive, default=100, help="normal training images per line")
    s.add_argument("--test", type=_positive, default=60, help="test images per line, 40%% of them normal")
    s.add_argument("--size", type=_positive, default=256, help="image side in pixels")
    s.add_argument("--seed", type=int, default=0, help="random seed; the same seed gives the same dataset")
    s.set_defaults(func=cmd_synth)


def _train(sub, common) -> None:
    t = sub.add_parser("train", parents=[common], formatter_class=Help, help="train one model for every line")
    t.add_argument("--data", type=Path, required=True, help="dataset root (MVTec AD, VisA or BTAD layout)")
    t.add_argument("--out", type=Path, required=True, help="model directory to write")
    t.add_argument("--classes", type=_csv, help="comma-separated lines to train on (default: every line)")
    t.add_argument(
        "--from",
        dest="from_model",
        type=Path,
        help="add the lines of --classes to this trained model instead of training from scratch",
    )
    t.add_argument(
        "--epochs", type=_positive, help="training epochs (default: the recipe's, 12; with --from, the model's)"
    )
    t.add_argument("--backbone", default="tf_efficientnet_lite0", help="timm model name")
    t.add_argument("--weights", type=Path, help="local backbone weights file (needed for other backbones)")
    t.add_argument("--image-size", type=_positive, default=DEFAULT_IMAGE_SIZE, help="model input in pixels")
    t.add_argument("--prior", choices=PRIORS, default="hgad", help="single: the N(0, I) ablation")
    t.add_argument("--device", default="cpu", help="cpu, cuda, cuda:N or auto")
    t.add_argument("--seed", type=int, default=0, help="random seed of the training")
    t.set_defaults(func=cmd_train)


def _eval(sub, common) -> None:
    e = sub.add_parser("eval", parents=[common], formatter_class=Help, help="image/pixel AUROC and AUPRO per line")
    e.add_argument("--model", type=Path, required=True, help="model directory")
    e.add_argument("--data", type=Path, required=True, help="dataset root with a test split")
    e.add_argument("--classes", type=_csv, help="lines to evaluate (default: the model's)")
    e.add_argument("--class-aware", action="store_true", help="score each line with its own mixture")
    e.add_argument("--json", type=Path, help="write the results as JSON")
    e.add_argument("--device", default="cpu", help="cpu, cuda, cuda:N or auto")
    e.set_defaults(func=cmd_eval)


def _calibrate(sub, common) -> None:
    c = sub.add_parser("calibrate", parents=[common], formatter_class=Help, help="threshold a line from normals")
    c.add_argument("--model", type=Path, required=True, help="model directory")
    c.add_argument("--line", type=_line, required=True, help="product line name")
    c.add_argument("--images", type=Path, required=True, help="folder of normal images of the line")
    c.add_argument("--far", type=_rate, default=0.01, help="target false-alarm rate per frame")
    c.add_argument("--db", type=Path, default=paths.database(), help="the agent's SQLite file")
    c.add_argument("--json", type=Path, help="write the summary as JSON")
    c.add_argument(
        "--mode",
        choices=("class-aware", "class-agnostic"),
        help="scoring mode (default: class-aware when the line is one of the model's)",
    )
    c.add_argument("--confidence", type=float, help="also bound the realised rate with this probability, e.g. 0.9")
    c.add_argument("--anomalies", type=Path, help="folder of known anomalous images: recall is reported")
    c.add_argument("--report", type=Path, help="report folder (default: reports/LINE/vN next to the database)")
    c.add_argument("--device", default="cpu", help="cpu, cuda, cuda:N or auto")
    c.set_defaults(func=cmd_calibrate)


def _recalibrate(sub, common) -> None:
    r = sub.add_parser(
        "recalibrate",
        parents=[common],
        formatter_class=Help,
        help="calibrate again, for a new model, every line calibrated from a folder",
        description="For a new model (after train --from or a retraining): every line whose active profile belongs "
        "to another model is calibrated again from the folder of normal images it was made from, with the same "
        "false-alarm rate, scoring mode and confidence. Lines calibrated live, or whose folder is gone, are named "
        "(exit code 1).",
    )
    r.add_argument("--model", type=Path, required=True, help="the new model's directory")
    r.add_argument("--lines", type=_csv, help="only these lines (default: every calibrated line and the model's)")
    r.add_argument("--db", type=Path, default=paths.database(), help="the agent's SQLite file")
    r.add_argument("--dry-run", action="store_true", help="say what would be done, change nothing")
    r.add_argument("--json", type=Path, help="write what was done, per line, as JSON")
    r.add_argument("--device", default="cpu", help="cpu, cuda, cuda:N or auto")
    r.set_defaults(func=cmd_recalibrate)


def _export(sub, common) -> None:
    x = sub.add_parser("export", parents=[common], formatter_class=Help, help="compile the model for deployment")
    x.add_argument("--model", type=Path, required=True, help="model directory")
    x.add_argument(
        "--backend",
        choices=("tensorrt", "onnxruntime", "torch"),
        required=True,
        help="tensorrt: an engine; onnxruntime: an ONNX graph (CPU, and what trtexec reads); torch: a .pt2 program",
    )
    x.add_argument("--precision", choices=("fp32", "fp16", "int8"), help="default: fp16 for tensorrt, fp32 for torch")
    x.add_argument("--out", type=Path, help="also copy it here (default: torch MODEL/model.pt2, else the engine cache)")
    x.add_argument("--batch", type=_positive, default=1, help="static batch size of the graph")
    x.add_argument("--calibration", type=Path, help="int8: folder of representative frames")
    x.add_argument("--cache", type=Path, help=f"engine cache folder (default {paths.engine_cache()})")
    x.set_defaults(func=cmd_export)


def _bench(sub, common) -> None:
    b = sub.add_parser("bench", parents=[common], formatter_class=Help, help="per-stage ms and frames/s")
    b.add_argument("--model", type=Path, help="model directory")
    b.add_argument("--demo", action="store_true", help="bench the demo's model (trained into demo-out if missing)")
    b.add_argument("--backend", choices=BACKEND_CHOICES, default="auto", help="inference backend")
    b.add_argument("--batch", type=_positive, default=8, help="the larger batch measured besides 1")
    b.add_argument("--precision", choices=("fp32", "fp16", "int8"), help="default: the backend's")
    b.add_argument("--device", default="auto", help="cpu, cuda, cuda:N or auto")
    b.add_argument("--iters", type=_positive, default=20, help="timed iterations per batch size")
    b.add_argument("--cache", type=Path, help=f"engine cache folder (default {paths.engine_cache()})")
    b.add_argument("--json", type=Path, help="write the results as JSON")
    b.add_argument("--agent", action="store_true", help="also run the real agent on camera-sized recordings")
    b.add_argument("--cameras", type=_positive, default=1, help="--agent: cameras sharing the model")
    b.add_argument(
        "--camera-fps", type=_number_in(1, 240, "a camera frame rate", " frames/s, e.g. 25"),
        help="--agent: cameras deliver this many frames/s each, as live cameras do (the newest frame is judged, "
        "the rest skipped); default: every frame of the recording is judged",
    )  # fmt: skip
    b.add_argument(
        "--seconds",
        type=_number_in(1, 3600, "a run length in seconds", ", e.g. 60"),
        help="--agent: how long the agent's run aims to last (default 15; longer is steadier)",
    )
    b.add_argument(
        "--console", action="store_true", help="--agent: run it again with the console open in a headless Chromium"
    )
    b.add_argument(
        "--frame", type=_frame, default=(720, 1280), help="camera frame size, WIDTHxHEIGHT (default 1280x720)"
    )
    b.set_defaults(func=cmd_bench)


def _run_and_demo(sub, common) -> None:
    r = sub.add_parser("run", parents=[common], formatter_class=Help, help="the agent (the daemon)")
    r.add_argument("--config", type=Path, required=True, help="configuration file (see config.example.yaml)")
    r.add_argument(
        "--exit-when-done", action="store_true", help="exit once every recording is judged and every alert delivered"
    )
    r.set_defaults(func=cmd_run)
    d = sub.add_parser("demo", parents=[common], formatter_class=Help, help="the main job end to end, in minutes")
    d.add_argument("--out", type=Path, default=Path("demo-out"), help="workspace")
    d.add_argument("--lines", type=_positive, default=3, help="product lines")
    d.add_argument("--epochs", type=_positive, help="training epochs (default: the recipe's, 12)")
    d.add_argument("--seed", type=int, default=0, help="random seed of data and training")
    d.add_argument(
        "--console", action="store_true", help="after the summary, keep the agent and its web console running"
    )
    d.set_defaults(func=cmd_demo)
    n = sub.add_parser(
        "normals", parents=[common], formatter_class=Help, help="export the frames of alerts marked false alarms"
    )
    n.add_argument("--config", type=Path, required=True, help="the agent's configuration (for its state folder)")
    n.add_argument("--out", type=Path, required=True, help="folder to write OUT/LINE/train/good/*.jpg into")
    n.add_argument("--line", type=_line, help="one line (default: every line with kept frames)")
    n.set_defaults(func=cmd_normals)


def build_parser() -> Parser:
    common = _common()
    p = Parser(
        prog="hgad-edge",
        parents=[common],
        formatter_class=Help,
        description="Edge anomaly detection for production lines: one HGAD model for every line.",
    )
    p.add_argument("--version", action="version", version=f"hgad-edge {__version__}")
    sub = p.add_subparsers(dest="command", required=True, parser_class=Parser, metavar="COMMAND")
    for add in (_synth, _train, _eval, _calibrate, _recalibrate, _export, _bench, _run_and_demo):
        add(sub, common)
    return p


def main(argv: Sequence[str] | None = None) -> int:
    from .logs import setup_logging

    argv = list(sys.argv[1:] if argv is None else argv)
    debug = "--debug" in argv
    try:
        args = build_parser().parse_args(argv)
        args.verbose, args.debug = getattr(args, "verbose", 0), getattr(args, "debug", False)
        setup_logging(args.verbose, args.debug)
        keep_freed_memory()
        func: Callable[[argparse.Namespace], int] = args.func
        return func(args)
    except KeyboardInterrupt:
        print("hgad-edge: interrupted", file=sys.stderr)
        return 130
    except HgadError as exc:
        if debug:
            raise
        print(f"hgad-edge: error: {exc}", file=sys.stderr)
        return EXIT_BAD_INPUT if isinstance(exc, BadInputError) else EXIT_FAILURE
    except Exception as exc:
        if debug:
            raise
        print(f"hgad-edge: internal error: {type(exc).__name__}: {exc} (run with --debug for details)", file=sys.stderr)
        return EXIT_FAILURE


if __name__ == "__main__":
    sys.exit(main())
