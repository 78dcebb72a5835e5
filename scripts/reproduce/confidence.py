#!/usr/bin/env python
"""How confident each held-aside net is against how often it is right (models/heldout/README.md's
"less confident than it is right" for googlenet_ls): top-1 and the mean top softmax probability
on the first N Fashion-MNIST test images, in Caffe.

    .venv/bin/python scripts/reproduce/confidence.py [--images 2000] [NAME ...]

Duration: about 10 s a net for 2,000 images on two cores.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

from deeprebirth.graph.model import load_model  # noqa: E402
from deeprebirth.learning import evaluate as ev  # noqa: E402
from deeprebirth.learning import preprocess  # noqa: E402
from deeprebirth.learning import sources as data  # noqa: E402


def confidence(folder: Path, images: int) -> tuple[float, float]:
    runner = ev.Runner.build(load_model(folder / "deploy.prototxt", weights=folder / "weights.caffemodel"))
    pre = preprocess.preprocess_for(runner.input_shape, folder / "train_val.prototxt")
    src = data.open_source(f"fashion-mnist:test[:{images}]")
    x = pre.apply([src.image(i) for i in range(len(src))]).astype(np.float32)
    y = np.asarray(src.labels(list(range(len(src)))))
    z = np.concatenate([runner.logits_of(x[i:i + 100]) for i in range(0, len(x), 100)])
    p = np.exp(ev.log_softmax(z))
    return float(np.mean(p.argmax(1) == y)), float(p.max(1).mean())


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("names", nargs="*", help="held-aside nets (default: every one in models/heldout)")
    ap.add_argument("--images", type=int, default=2000)
    a = ap.parse_args(argv)
    names = a.names or sorted(d.name for d in (ROOT / "models" / "heldout").iterdir()
                              if (d / "weights.caffemodel").is_file())
    missing = [n for n in names if not (ROOT / "models" / "heldout" / n / "weights.caffemodel").is_file()]
    if missing:
        print(f"confidence.py: not a held-aside net with weights: {', '.join(missing)}", file=sys.stderr)
        return 1
    print("| net | top-1 | mean top probability |\n|---|---:|---:|")
    for name in names:
        top1, conf = confidence(ROOT / "models" / "heldout" / name, a.images)
        print(f"| {name} | {100 * top1:.2f} % | {100 * conf:.2f} % |", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
