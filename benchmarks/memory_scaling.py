"""Peak memory of distillation vs dataset size: it must not grow with the number of faces.

    python benchmarks/memory_scaling.py --identities 32 128 512

Runs ``train.py`` (teacher training, teacher-score cache, one distillation epoch) on generated datasets of
``identities x 16`` faces in separate processes and prints each run's peak resident memory (the pipeline records
``peak_rss_mb`` per stage in ``results.json``). Images are streamed from disk and teacher scores are memory-mapped,
so the peak should stay flat while the dataset grows.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def main(argv: list[str] | None = None) -> list[dict]:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--identities", type=int, nargs="+", default=[32, 128, 512])
    ap.add_argument("--images", type=int, default=16)
    ap.add_argument("--workers", type=int, default=2)
    args = ap.parse_args(argv)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for n in args.identities:
            out = Path(tmp) / f"n{n}"
            n_train = int(n * 0.75)
            cmd = [
                sys.executable,
                str(ROOT / "train.py"),
                f"hydra.run.dir={out}",
                "stages=[prepare,teacher,distill]",
                "trainer.max_epochs=1",
                "teacher.fit.epochs=1",
                f"data.train.n_identities={n}",
                f"data.train.images_per_identity={args.images}",
                f"data.train.identities=[0,{n_train - 1}]",
                f"data.val.identities=[{n_train},{n - 1}]",
                f"data.num_workers={args.workers}",
                "logger=none",
            ]
            env = {**os.environ, "AIKD_CACHE": str(Path(tmp) / "cache")}
            subprocess.run(cmd, check=True, env=env, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            res = json.loads((out / "results.json").read_text())
            rss = res["peak_rss_mb"]["distill"]
            rows.append(
                {
                    "identities": n,
                    "images": n * args.images,
                    "process_mb": rss["process"],
                    "largest_child_mb": rss["largest_child"],
                }
            )
            print(
                f"{n * args.images:7d} images: peak RSS {rss['process']:8.1f} MB (main), "
                f"{rss['largest_child']:8.1f} MB (largest loader worker)"
            )
    return rows


if __name__ == "__main__":
    main()
