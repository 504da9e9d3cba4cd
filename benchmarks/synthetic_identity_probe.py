"""Is identity learnable from the synthetic faces, and do degradations make it harder? (a check, not a test)

Trains a tiny CNN for a fixed number of epochs (about 30 s on one idle core) on aligned 56x56 crops of
``identities x images`` synthetic faces (the demo's size: 40 x 12), then identifies held-out images of the same
identities (image indices after the training ones, which the generator renders just as well) and reports top-1
accuracy for clean images and for heavily degraded ones (severity >= ``--heavy``), next to chance
(1 / identities). Clean accuracy well above the degraded one is what makes the severity a meaningful quality label.

Usage::

    python benchmarks/synthetic_identity_probe.py [--epochs 40] [--test-images 20] [--threads 1]
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import torch
from torch import nn

from aikd.data.synthetic import SyntheticFaces
from aikd.geometry.align import Geometry, align_image


def _faces(gen: SyntheticFaces, indices: range, size: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Aligned crops ``(N, 3, size, size)`` float32, identity labels and severities."""
    crops, labels, severity = [], [], []
    geometry = Geometry(size=size)
    for i in range(gen.n_identities):
        for j in indices:
            img, lm, meta = gen.render(i, j)
            crop, _ = align_image(img, lm, geometry)
            crops.append(crop.transpose(2, 0, 1).astype(np.float32) / 255.0)
            labels.append(i)
            severity.append(meta["severity"])
    return np.stack(crops), np.array(labels), np.array(severity)


def _tiny_cnn(classes: int) -> nn.Module:
    def block(cin: int, cout: int) -> nn.Sequential:
        return nn.Sequential(
            nn.Conv2d(cin, cout, 3, padding=1, bias=False), nn.BatchNorm2d(cout), nn.ReLU(), nn.MaxPool2d(2)
        )

    return nn.Sequential(
        block(3, 16), block(16, 32), block(32, 64), nn.Conv2d(64, 96, 3, padding=1), nn.ReLU(),
        nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Dropout(0.2), nn.Linear(96, classes),
    )  # fmt: skip


def _shift(x: torch.Tensor, g: torch.Generator, pad: int = 3) -> torch.Tensor:
    """Random translation by up to ``pad`` pixels (alignment is exact here, so a little jitter helps)."""
    n, _, h, w = x.shape
    padded = nn.functional.pad(x, (pad, pad, pad, pad), mode="replicate")
    dx, dy = torch.randint(0, 2 * pad + 1, (2,), generator=g).tolist()
    return padded[:, :, dy : dy + h, dx : dx + w]


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--identities", type=int, default=40)
    ap.add_argument("--images", type=int, default=12, help="training images per identity")
    ap.add_argument("--test-images", type=int, default=20, help="held-out images per identity")
    ap.add_argument("--epochs", type=int, default=40, help="training epochs (about 30 s on one idle core)")
    ap.add_argument("--heavy", type=float, default=0.5, help="severity threshold of 'heavily degraded'")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=1, help="torch threads (1 is fastest on a busy 2-core machine)")
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)

    gen = SyntheticFaces(n_identities=args.identities, images_per_identity=args.images, seed=args.seed)
    t0 = time.perf_counter()
    xtr, ytr, str_ = _faces(gen, range(args.images), 56)
    xte, yte, ste = _faces(gen, range(args.images, args.images + args.test_images), 56)
    print(f"rendered + aligned {len(xtr)} train / {len(xte)} test faces in {time.perf_counter() - t0:.1f}s")

    model = _tiny_cnn(args.identities)
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3, weight_decay=1e-3)
    xtr_t, ytr_t = torch.from_numpy(xtr), torch.from_numpy(ytr)
    g = torch.Generator().manual_seed(args.seed)
    t0 = time.perf_counter()
    model.train()
    for _ in range(args.epochs):
        for idx in torch.randperm(len(xtr_t), generator=g).split(64):
            loss = nn.functional.cross_entropy(model(_shift(xtr_t[idx], g)), ytr_t[idx], label_smoothing=0.1)
            opt.zero_grad()
            loss.backward()
            opt.step()
    model.eval()
    with torch.no_grad():
        pred = torch.cat([model(b).argmax(1) for b in torch.from_numpy(xte).split(256)]).numpy()
        train_acc = float((torch.cat([model(b).argmax(1) for b in xtr_t.split(256)]) == ytr_t).float().mean())
    correct = pred == yte
    print(f"trained {args.epochs} epochs in {time.perf_counter() - t0:.1f}s (last batch loss {loss.item():.3f})")
    print(f"train accuracy                  {train_acc:.3f}")
    print(f"chance                          {1 / args.identities:.3f}")
    groups = {
        "all held-out": np.ones_like(correct),
        "clean (severity 0)": ste == 0,
        f"degraded (0 < severity < {args.heavy})": (ste > 0) & (ste < args.heavy),
        f"heavy (severity >= {args.heavy})": ste >= args.heavy,
    }
    for name, m in groups.items():
        print(f"{name:<32} {correct[m].mean():.3f}  (n={int(m.sum())})")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
