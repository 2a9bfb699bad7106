"""`hgad-edge`: the command line. Names and flags are a contract (see README, "Command line").

Exit codes: 0 ok, 2 bad input (config, paths, data), 1 anything else. Errors are one line naming the
file, key or value at fault; `--debug` shows the traceback instead.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from collections.abc import Callable, Sequence
from pathlib import Path

from hgad.config import DEFAULT_IMAGE_SIZE
from hgad.errors import BadInputError, HgadError
from hgad.memory import keep_freed_memory

log = logging.getLogger("agent.cli")

EXIT_OK, EXIT_FAILURE, EXIT_BAD_INPUT = 0, 1, 2


class UsageError(BadInputError):
    pass


class Parser(argparse.ArgumentParser):
    """argparse, but a usage error is one line (and exit code 2) like every other bad input."""

    def error(self, message: str) -> None:  # type: ignore[override]
        raise UsageError(f"{self.prog}: {message} (see {self.prog} --help)")


def _csv(value: str) -> list[str]:
    items = [v.strip() for v in value.split(",") if v.strip()]
    if not items:
        raise argparse.ArgumentTypeError("expected a comma-separated list, e.g. a,b")
    return items


def _rate(value: str) -> float:
    try:
        v = float(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{value!r} is not a number") from None
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


def _output_dir(path: Path, flag: str) -> Path:
    """Create an output folder now: a mistyped or read-only path must fail before minutes of training or
    scoring, not after them with the work lost."""
    try:
        path.mkdir(parents=True, exist_ok=True)
    except FileExistsError:
        raise BadInputError(f"{flag}: {path} exists and is not a directory; give a folder") from None
    except OSError as exc:
        raise BadInputError(f"{flag}: cannot create {path}: {exc.strerror}") from None
    if not os.access(path, os.W_OK | os.X_OK):
        raise BadInputError(f"{flag}: {path} is not writable by this user")
    return path


def _output_file(path: Path | None, flag: str) -> None:
    """Check up front that `path` can be written (its folder is created), for the same reason."""
    if path is None:
        return
    if path.is_dir():
        raise BadInputError(f"{flag}: {path} is a directory; give a file name, e.g. {path / 'out.json'}")
    _output_dir(path.parent, flag)


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


def cmd_train(a: argparse.Namespace) -> int:
    from hgad.config import BackboneConfig, ModelConfig, PriorConfig, TrainConfig
    from hgad.data.datasets import load_split, select_classes
    from hgad.model_dir import save_model
    from hgad.progress import bar
    from hgad.runtime.torch_backend import resolve_device
    from hgad.train import train

    device = resolve_device(a.device)
    classes = select_classes(a.data, a.classes)
    _output_dir(a.out, "--out")
    kwargs = {"name": a.backbone, "weights": str(a.weights) if a.weights else None}
    train_kwargs = {"seed": a.seed} | ({"epochs": a.epochs} if a.epochs else {})
    size = {"image_size": a.image_size} if a.image_size else {}
    try:
        cfg = ModelConfig(
            classes=tuple(classes),
            **size,
            backbone=BackboneConfig(**kwargs),
            prior=PriorConfig(kind=a.prior),
            train=TrainConfig(**train_kwargs),
        )
    except ValueError as exc:
        raise BadInputError(f"train: {exc}") from None
    samples = load_split(a.data, "train", classes)
    print(
        f"training {a.prior} prior on {len(samples)} images of {len(classes)} lines "
        f"({cfg.train.epochs} epochs, {device})",
        file=sys.stderr,
    )
    model, report = train(cfg, samples, device, progress=bar)
    model_id = save_model(model, a.out, report.to_dict())
    print(
        f"model {model_id} saved to {a.out} (features {report.seconds_features:.0f} s, "
        f"flows {report.seconds_training:.0f} s)"
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

    device = resolve_device(a.device)
    loaded = load_model(a.model, device)
    _output_file(a.json, "--json")
    result = evaluate(loaded.model, a.data, a.classes, a.class_aware, device, progress=bar)
    result["model_id"] = loaded.model_id
    _print_eval(result)
    _write_json(a.json, result)
    return EXIT_OK


def cmd_calibrate(a: argparse.Namespace) -> int:
    from calibration.calibrate import calibrate_folder, resolve_mode, unknown_line_warning
    from calibration.db import open_database
    from calibration.report import write_report
    from calibration.store import ProfileStore
    from hgad.model_dir import load_model
    from hgad.progress import bar
    from hgad.runtime.torch_backend import TorchBackend

    loaded = load_model(a.model)
    # A mode the line cannot have is the one error line, before any warning.
    mode = resolve_mode(loaded.model.classes, a.line, a.mode)
    warning = unknown_line_warning(loaded.model.classes, a.line)
    if warning:
        print(f"warning: {warning}", file=sys.stderr)
    backend = TorchBackend(loaded, a.device)
    _output_file(a.db, "--db")
    if a.db.is_file():
        open_database(a.db).dispose()  # a file that is not a database fails now, not after the scoring
    _output_file(a.json, "--json")
    if a.report is not None:
        _output_dir(a.report, "--report")
    # Everything that can fail on bad input happens before the database is touched.
    result = calibrate_folder(
        loaded, backend, a.line, a.images, a.far, mode, a.confidence, anomalies=a.anomalies, progress=bar
    )
    store = ProfileStore(open_database(a.db))
    previous = store.active(a.line)
    result.profile = store.save(result.profile, activate=True)
    report_dir = a.report or a.db.parent / "reports" / a.line / f"v{result.profile.version}"
    data = write_report(report_dir, result)
    if previous is not None:
        data["superseded"] = {
            "calibration_id": previous.calibration_id,
            "version": previous.version,
            "model_id": previous.model_id,
        }
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


def default_engine_cache() -> Path:
    """systemd's CacheDirectory= when run as the service, else the user's cache folder."""
    import os

    base = os.environ.get("CACHE_DIRECTORY") or os.path.join(os.path.expanduser("~"), ".cache", "hgad-edge")
    return Path(base.split(":")[0]) / "engines"


def _calibration_frames(folder: Path | None, size: int):
    if folder is None:
        return None
    import numpy as np

    from hgad.data.datasets import load_folder
    from hgad.data.images import read_image

    return np.stack([read_image(s.path, size) for s in load_folder(folder)[:256]])


def cmd_export(a: argparse.Namespace) -> int:
    from hgad.model_dir import load_model
    from hgad.runtime.export import export_tensorrt, export_torch

    loaded = load_model(a.model)
    _output_file(a.out, "--out")
    if a.backend == "torch":
        if a.precision not in (None, "fp32"):
            raise BadInputError(f"--precision {a.precision}: the torch export is fp32; use --backend tensorrt")
        result = export_torch(loaded, a.out or a.model / "model.pt2", a.batch)
    else:
        frames = _calibration_frames(a.calibration, loaded.model.cfg.image_size)
        result = export_tensorrt(
            loaded, a.cache or default_engine_cache(), a.out, a.precision or "fp16", a.batch, frames
        )
    p = result.parity
    print(
        f"{result.backend} {result.precision} batch {result.batch}: {result.path} "
        f"(golden parity: score error {p.max_score_error:.2e}, map error {p.max_map_error:.2e}, "
        f"tolerance {p.tolerance:g})"
    )
    return EXIT_OK


def cmd_bench(a: argparse.Namespace) -> int:
    from hgad.model_dir import load_model
    from hgad.runtime.bench import run_bench
    from hgad.runtime.select import open_backend

    if a.model is None and not a.demo:
        raise BadInputError("bench: give --model MODEL_DIR, or --demo for the demo's model")
    _output_file(a.json, "--json")
    if a.demo:
        from .demo import DemoSpec, agent_bench, prepare_model

        spec = DemoSpec(out=Path("demo-out"))
        loaded = prepare_model(spec)
    else:
        loaded = load_model(a.model)
    backend, reason = open_backend(loaded, a.backend, a.device, a.precision, a.batch, a.cache or default_engine_cache())
    result = run_bench(backend, a.batch, a.iters)
    result["backend_choice"] = reason
    if a.demo:
        result["agent"] = agent_bench(spec, loaded, result["batches"]["1"]["fps"])
    for b, r in result["batches"].items():
        stages = ", ".join(f"{k} {v:.1f}" for k, v in r["stages_ms"].items())
        print(
            f"batch {b}: {r['fps']:.1f} frames/s, {r['ms_per_frame']:.1f} ms/frame ({stages} ms per batch); "
            f"peak RSS so far {r['peak_rss_mb']} MB"
        )
    print(
        f"backend {result['backend']} on {result['device']} ({result['precision']}); "
        f"head/backbone {result['head_to_backbone_ratio']}; peak RSS {result['peak_rss_mb']} MB"
    )
    _write_json(a.json, result)
    return EXIT_OK


def cmd_run(a: argparse.Namespace) -> int:
    from .config import load_config
    from .daemon import Agent
    from .logs import setup_logging

    cfg = load_config(a.config)
    if not (a.verbose or a.debug):
        setup_logging(verbose=int(cfg.log_level in ("info", "debug")), debug=cfg.log_level == "debug")
    return Agent(cfg, exit_when_done=a.exit_when_done).run()


def cmd_demo(a: argparse.Namespace) -> int:
    from .demo import DemoSpec, run

    return run(DemoSpec(out=a.out, lines=a.lines, epochs=a.epochs, seed=a.seed))


# ------------------------------------------------------------------------------------------- parser


def build_parser() -> Parser:
    p = Parser(prog="hgad-edge", description="Edge anomaly detection for production lines (HGAD).")
    p.add_argument("--debug", action="store_true", help="show tracebacks and debug logs")
    p.add_argument("-v", "--verbose", action="count", default=0, help="info logs")
    sub = p.add_subparsers(dest="command", required=True, parser_class=Parser)

    s = sub.add_parser("synth", help="write a synthetic multi-line dataset (MVTec AD layout)")
    s.add_argument("out", type=Path)
    s.add_argument("--classes", type=_positive, default=6, help="number of product lines (default 6)")
    s.add_argument("--train", type=_positive, default=100, help="normal training images per line (default 100)")
    s.add_argument("--test", type=_positive, default=60, help="test images per line, 40%% normal (default 60)")
    s.add_argument("--size", type=_positive, default=256, help="image size in pixels (default 256)")
    s.add_argument("--seed", type=int, default=0)
    s.set_defaults(func=cmd_synth)

    t = sub.add_parser("train", help="train one unified model for every line of a dataset")
    t.add_argument("--data", type=Path, required=True, help="dataset root (MVTec AD, VisA or BTAD layout)")
    t.add_argument("--out", type=Path, required=True, help="model directory to write")
    t.add_argument("--classes", type=_csv, help="comma-separated lines to train on (default: all)")
    t.add_argument("--epochs", type=_positive, help="training epochs (default: the model's default)")
    t.add_argument("--backbone", default="tf_efficientnet_lite0", help="timm model name")
    t.add_argument("--weights", type=Path, help="local backbone weights file (needed for other backbones)")
    t.add_argument(
        "--image-size", type=_positive, help=f"model input in pixels (default {DEFAULT_IMAGE_SIZE}; images are resized)"
    )
    t.add_argument("--prior", choices=("hgad", "single"), default="hgad")
    t.add_argument("--device", default="cpu", help="cpu, cuda, cuda:N or auto")
    t.add_argument("--seed", type=int, default=0)
    t.set_defaults(func=cmd_train)

    e = sub.add_parser("eval", help="per-class image AUROC, pixel AUROC and AUPRO on a test split")
    e.add_argument("--model", type=Path, required=True)
    e.add_argument("--data", type=Path, required=True)
    e.add_argument("--classes", type=_csv)
    e.add_argument("--class-aware", action="store_true", help="score each class with its own mixture")
    e.add_argument("--json", type=Path)
    e.add_argument("--device", default="cpu")
    e.set_defaults(func=cmd_eval)

    c = sub.add_parser("calibrate", help="threshold a line from a folder of its normal images")
    c.add_argument("--model", type=Path, required=True)
    c.add_argument("--line", required=True)
    c.add_argument("--images", type=Path, required=True, help="folder of normal images of the line")
    c.add_argument("--far", type=_rate, default=0.01, help="target false-alarm rate (default 0.01)")
    c.add_argument("--db", type=Path, default=Path("hgad-edge.sqlite"), help="SQLite file (the agent's)")
    c.add_argument("--json", type=Path, help="write the summary as JSON")
    c.add_argument(
        "--mode",
        choices=("class-aware", "class-agnostic"),
        help="scoring mode (default: class-aware when the line is a model class)",
    )
    c.add_argument(
        "--confidence", type=float, help="also guarantee the realised rate <= far with this probability, e.g. 0.9"
    )
    c.add_argument("--anomalies", type=Path, help="folder of known anomalous images: recall is reported")
    c.add_argument("--report", type=Path, help="report folder (default: next to the database)")
    c.add_argument("--device", default="cpu")
    c.set_defaults(func=cmd_calibrate)

    x = sub.add_parser("export", help="compile the model for deployment (TensorRT engine or torch program)")
    x.add_argument("--model", type=Path, required=True)
    x.add_argument("--backend", choices=("tensorrt", "torch"), required=True)
    x.add_argument("--precision", choices=("fp32", "fp16", "int8"), help="tensorrt: default fp16")
    x.add_argument("--out", type=Path, help="output file (torch: MODEL_DIR/model.pt2; tensorrt: the engine cache)")
    x.add_argument("--batch", type=_positive, default=1, help="static batch size of the graph (default 1)")
    x.add_argument("--calibration", type=Path, help="int8: folder of representative frames")
    x.add_argument("--cache", type=Path, help="engine cache folder (default: $CACHE_DIRECTORY or ~/.cache)")
    x.set_defaults(func=cmd_export)

    b = sub.add_parser("bench", help="per-stage milliseconds and frames/s of a backend")
    b.add_argument("--model", type=Path)
    b.add_argument("--demo", action="store_true", help="bench the demo's model (trained into demo-out if missing)")
    b.add_argument("--backend", choices=("auto", "torch", "tensorrt"), default="auto")
    b.add_argument("--batch", type=_positive, default=8, help="the larger batch measured besides 1 (default 8)")
    b.add_argument("--precision", choices=("fp32", "fp16", "int8"))
    b.add_argument("--device", default="auto")
    b.add_argument("--iters", type=_positive, default=20)
    b.add_argument("--cache", type=Path)
    b.add_argument("--json", type=Path)
    b.set_defaults(func=cmd_bench)

    r = sub.add_parser("run", help="run the agent (the daemon) with a configuration file")
    r.add_argument("--config", type=Path, required=True)
    r.add_argument(
        "--exit-when-done",
        action="store_true",
        help="exit once every camera is a finished recording and every alert is delivered",
    )
    r.set_defaults(func=cmd_run)

    d = sub.add_parser("demo", help="the main job end to end: synth, train, calibrate, run the agent, summary")
    d.add_argument("--out", type=Path, default=Path("demo-out"), help="workspace (default ./demo-out)")
    d.add_argument("--lines", type=_positive, default=3, help="product lines (default 3)")
    d.add_argument("--epochs", type=_positive, default=14)
    d.add_argument("--seed", type=int, default=0)
    d.set_defaults(func=cmd_demo)
    return p


def main(argv: Sequence[str] | None = None) -> int:
    from .logs import setup_logging

    argv = list(sys.argv[1:] if argv is None else argv)
    debug = "--debug" in argv
    try:
        args = build_parser().parse_args(argv)
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
