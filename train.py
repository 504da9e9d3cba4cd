"""Hydra entry point: ``python train.py [group=option ...] [key=value ...]``.

Composes ``conf/train.yaml`` and runs the pipeline (see ``aikd.app.pipeline``). With no arguments it runs the demo
end to end on generated faces. Examples::

    python train.py                                   # demo, no download
    python train.py experiment=cfp_crfiqa_facenet     # a real run on CFP
    python train.py -m misalign=jitter3,mixed         # a sweep, one output directory per job
"""

import os
import sys
from pathlib import Path

import hydra
from omegaconf import DictConfig

import aikd.config  # noqa: F401  (registers resolvers: the run directory's name uses one)

os.environ.setdefault("PROJECT_ROOT", str(Path(__file__).resolve().parent))


@hydra.main(version_base="1.3", config_path="conf", config_name="train")
def main(cfg: DictConfig) -> float | None:
    """Run the pipeline; return the optimised metric (for sweepers) when one is configured."""
    from aikd.app.pipeline import run
    from aikd.app.validate import ConfigError

    try:
        results = run(cfg)
    except ConfigError as err:  # a configuration mistake: the message names the keys and fixes, no traceback
        print(f"error: {err}", file=sys.stderr)
        sys.exit(2)
    metric = cfg.get("optimized_metric")
    if not metric:
        return None
    metrics = results.get("metrics", {})
    if metric not in metrics:
        # A sweeper cannot rank a trial without its value: say which metrics the configured stages produced.
        raise KeyError(
            f"optimized_metric={metric!r} is not among this run's metrics {sorted(metrics)}; "
            f"check the stages ({list(cfg.stages)}: val/* come from distill, pAUC from evaluate)"
        )
    return float(metrics[metric])


if __name__ == "__main__":
    try:
        main()
    except SystemExit as exc:
        if exc.code == 1:  # Hydra refused the command line (or the run failed): explain misspelt keys
            from aikd.app.validate import override_hints

            for hint in override_hints(sys.argv[1:], Path(__file__).resolve().parent / "conf"):
                print(f"hint: {hint}", file=sys.stderr)
        raise
