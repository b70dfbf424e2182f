#!/usr/bin/env python3
"""featviz from Python: list the hosted models, render two objectives, save PNGs.

    ~/fv/bin/python client/python/examples/example.py --server 127.0.0.1:8980 --out out/example

with the client installed (`pip install ./client/python`), or from a checkout
without installing it:

    PYTHONPATH=build/python:client/python /usr/bin/python3 \
        client/python/examples/example.py --server 127.0.0.1:8980 --out out/example
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from featviz_client import Client, FeatvizError

OBJECTIVES = [("logit(7)", "logit_7"), ("conv2:5", "conv2_5")]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--server", default=os.environ.get("FEATVIZ_SERVER", "127.0.0.1:8980"),
                        help="host:port (default $FEATVIZ_SERVER or 127.0.0.1:8980)")
    parser.add_argument("--model", default="mnist_classifier")
    parser.add_argument("--out", type=Path, default=Path("featviz_out"), help="folder for the PNGs")
    parser.add_argument("--steps", type=int, default=256)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()

    with Client(args.server) as featviz:
        try:
            for model in featviz.list_models():
                layers = ", ".join(f"{layer.path} ({layer.channels})" for layer in model.layers)
                print(f"{model.name} v{model.version} on {model.device or '?'}: {layers}")

            args.out.mkdir(parents=True, exist_ok=True)
            for objective, stem in OBJECTIVES:
                result = featviz.render(args.model, objective, steps=args.steps, seed=args.seed,
                                        tensor=False, png=True)
                probs = "  ".join(f"{c}:{p:.3f}" for c, p in enumerate(result.probs[0]))
                print(f"{result.objective}  seed {result.seed}  "
                      f"total {result.final_total:.4f}\n  probs  {probs}")
                for i, png in enumerate(result.png):
                    path = args.out / f"{stem}_{i}.png"
                    path.write_bytes(png)
                    print(f"  wrote {path}")
        except FeatvizError as err:
            print(f"example: {err}", file=sys.stderr)
            return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
