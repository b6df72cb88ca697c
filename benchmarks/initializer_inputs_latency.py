"""Latency on ONNX Runtime's CPU EP of an old-style PyTorch export (every initializer also a graph input) before and
after bnfold's default fold, at ORT's optimization levels "disable" and "all".

ONNX Runtime treats an initializer listed as a graph input as overridable: it warns at load time and fuses no
Conv+BN, folds no constants through it. bnfold folds such a model by default when nearly all its initializers are
inputs (an exporter's keep_initializers_as_inputs), and drops the unread ones from the inputs, so at level "all"
the gain is over ORT's own optimizations, which cannot run on the original.

    python benchmarks/initializer_inputs_latency.py                          # models/zoo/centerface_style_...
    python benchmarks/initializer_inputs_latency.py --model centerface.onnx --input-shape input:1x3x480x640

The default model is models/zoo/centerface_style_initializer_inputs.onnx (models/build_zoo.py writes it: a
CenterFace-style detector, torchscript exporter with keep_initializers_as_inputs=True, dynamic height and width),
timed at 1x3x256x256.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

import bnfold  # noqa: E402  (after the path tweak, so the checkout runs without being installed)

DEFAULT_MODEL = REPO / "models" / "zoo" / "centerface_style_initializer_inputs.onnx"


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", type=Path, default=DEFAULT_MODEL)
    parser.add_argument("--input-shape", action="append", default=None,
                        help="NAME:D0xD1x... (repeatable); default input:1x3x256x256 for the default model")
    parser.add_argument("--iterations", type=int, default=200)
    parser.add_argument("--warmup", type=int, default=20)
    parser.add_argument("--threads", type=int, default=None, help="ORT intra-op threads (default: all cores)")
    parser.add_argument("--json", type=Path, default=None, help="also write the results as JSON here")
    args = parser.parse_args(argv)
    shapes = args.input_shape or (["input:1x3x256x256"] if args.model == DEFAULT_MODEL else [])
    result = bnfold.bench(args.model, fold=True, opt_levels=("disable", "all"), input_shapes=shapes,
                          warmup=args.warmup, iterations=args.iterations, intra_op_threads=args.threads)
    info = result.fold_report.initializer_inputs
    print(info.describe() if info is not None else "fewer than 90% of the initializers are graph inputs")
    print(result.table())
    if args.json:
        args.json.write_text(json.dumps(result.to_dict(), indent=2) + "\n", encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main())
