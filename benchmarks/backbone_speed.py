"""Parameter counts and CPU forward time of every registered FR backbone (random weights, eval mode).

Forward time is taken over ``--repeats`` timed forwards of ``--batch`` canonical faces at each backbone's own
input size, after one warm-up forward, under ``torch.inference_mode`` with ``--threads`` intra-op threads. The
best (minimum) time is the figure to quote: on a shared machine other jobs only ever add time, so the minimum is
the least disturbed measurement; the median is printed beside it to show how disturbed the run was.

Usage::

    python benchmarks/backbone_speed.py --batch 8 --threads 2 --repeats 5 [name ...]
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

from aikd.models.backbones import create_backbone, list_backbones


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("names", nargs="*", help="backbones to time (default: all registered)")
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)

    print(f"torch {torch.__version__}, {args.threads} threads, batch {args.batch}, {args.repeats} repeats")
    header = f"{'backbone':<12} {'params (M)':>10} {'input':>8} {'best (s)':>9} {'median (s)':>10} {'ms/face':>8}"
    print(header + f" {'faces/s':>8}")
    for name in args.names or list_backbones():
        model = create_backbone(name).eval()
        h, w = model.input_spec.size
        faces = torch.rand(args.batch, 3, h, w, generator=torch.Generator().manual_seed(0))
        with torch.inference_mode():
            model(faces[:1])
            times = []
            for _ in range(args.repeats):
                start = time.perf_counter()
                model(faces)
                times.append(time.perf_counter() - start)
        t, med = min(times), statistics.median(times)
        params = sum(p.numel() for p in model.parameters()) / 1e6
        row = f"{name:<12} {params:>10.2f} {f'{h}x{w}':>8} {t:>9.2f} {med:>10.2f} {1e3 * t / args.batch:>8.0f}"
        print(row + f" {args.batch / t:>8.1f}", flush=True)


if __name__ == "__main__":
    main()
