"""Cost and noise floor of the local check on the 53 Conv+BN folds of a ResNet-50, in one run.

    python benchmarks/local_check.py [--repeats 3] [--dtype float32]

Builds one piece per Conv+BN of ResNet-50 (bottlenecks 3-4-6-3; ~25.5M weights, 102 MiB in float32) with random
BN statistics (extreme: scales 0.1-10 of either sign, means up to 5x the conv outputs' spread, variances 0.1-10x
the true one; or trained-looking: BN roughly standardizes), folded
correctly here with plain numpy from the stored constants. Prints, for the ONNX Runtime path and the float64 path,
the median wall time of check_pieces, the sessions it made, the largest error of the correct folds against their
bound; then how many "eps ignored" folds each path catches, and for scale the ONNX Runtime path with one call per
piece (what batching saves). Machines are noisy: read the ratios, not the absolute figures.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import numpy as np
from onnx import helper

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bnfold.checking import local  # noqa: E402
from bnfold.graph.pieces import Piece, PieceInput  # noqa: E402

EPS = 1e-5


def resnet50_layers():
    """(in channels, out channels, kernel, stride) of ResNet-50's 53 convolutions, in graph order."""
    layers = [(3, 64, 7, 2)]
    c_in = 64
    for width, blocks, stride in ((64, 3, 1), (128, 4, 2), (256, 6, 2), (512, 3, 2)):
        for block in range(blocks):
            s = stride if block == 0 else 1
            layers += [(c_in, width, 1, 1), (width, width, 3, s), (width, width * 4, 1, 1)]
            if block == 0:
                layers.append((c_in, width * 4, 1, s))
            c_in = width * 4
    return layers


def conv_bn_piece(index, c_in, c_out, kernel, stride, dtype, rng, extreme=True, eps=EPS):
    weight = rng.normal(0, (2.0 / (c_in * kernel * kernel)) ** 0.5, (c_out, c_in, kernel, kernel))
    conv_bias = rng.normal(0, 0.1, c_out)
    spread = np.sqrt((weight**2).sum(axis=(1, 2, 3)))  # std of the conv output on unit-normal inputs
    if extreme:
        scale = np.exp(rng.uniform(np.log(0.1), np.log(10.0), c_out)) * rng.choice([-1, 1], c_out)
        bias = rng.normal(0, 1, c_out)
        mean = conv_bias + rng.uniform(-5, 5, c_out) * spread
        var = spread**2 * np.exp(rng.uniform(np.log(0.1), np.log(10.0), c_out))
    else:  # trained-looking: BN roughly standardizes the conv output
        scale, bias = rng.uniform(0.5, 1.5, c_out), rng.normal(0, 0.1, c_out)
        mean, var = conv_bias + rng.normal(0, 0.1, c_out) * spread, spread**2 * rng.uniform(0.5, 1.5, c_out)
    # Fold the stored (rounded) constants, as bnfold does: the folded weights are then the exact map rounded once.
    weight, conv_bias, scale, bias, mean, var = (np.asarray(a, dtype).astype(np.float64)
                                                 for a in (weight, conv_bias, scale, bias, mean, var))
    multiplier = scale / np.sqrt(var + np.float64(np.float32(eps)))  # eps=0: the "eps ignored" bug
    pads = [kernel // 2] * 4
    stats = {"s": scale, "bb": bias, "m": mean, "v": var}
    return Piece(
        label=f"conv{index}",
        inputs=[PieceInput("x", np.dtype(dtype), (None, c_in, None, None))],
        outputs=["y"],
        before=[
            helper.make_node("Conv", ["x", "w", "b"], ["c"], strides=[stride] * 2, pads=pads),
            helper.make_node("BatchNormalization", ["c", "s", "bb", "m", "v"], ["y"], epsilon=EPS),
        ],
        after=[helper.make_node("Conv", ["x", "w", "b"], ["y"], strides=[stride] * 2, pads=pads)],
        constants_before={
            "w": weight.astype(dtype),
            "b": conv_bias.astype(dtype),
            **{name: value.astype(dtype) for name, value in stats.items()},
        },
        constants_after={
            "w": (weight * multiplier[:, None, None, None]).astype(dtype),
            "b": ((conv_bias - mean) * multiplier + bias).astype(dtype),
        },
        channel_axes={"y": 1},
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--dtype", default="float32", choices=("float32", "float16"))
    parser.add_argument("--stats", default="extreme", choices=("extreme", "trained"), help="BN statistics")
    args = parser.parse_args()
    import onnxruntime

    rng = np.random.default_rng(0)
    pieces = [
        conv_bn_piece(i, *layer, np.dtype(args.dtype), rng, extreme=args.stats == "extreme")
        for i, layer in enumerate(resnet50_layers())
    ]
    constants = sum(a.nbytes for p in pieces for a in p.constants_before.values()) / 2**20

    sessions = []
    real = onnxruntime.InferenceSession

    class Counting(real):
        def __init__(self, *a, **k):
            sessions.append(1)
            super().__init__(*a, **k)

    onnxruntime.InferenceSession = Counting
    opsets = [helper.make_opsetid("", 17)]
    print(f"{len(pieces)} Conv+BN pieces of ResNet-50 ({args.dtype}, {args.stats} BN statistics, "
          f"{constants:.0f} MiB of constants before)")
    times = {False: [], True: []}  # the two paths alternate, so both see the same machine load
    checks, counted = {}, {}
    for _ in range(args.repeats):
        for exact in (False, True):
            sessions.clear()
            start = time.perf_counter()
            checks[exact] = local.check_pieces(pieces, opset_imports=opsets, ir_version=8, exact=exact)
            times[exact].append(time.perf_counter() - start)
            counted[exact] = len(sessions)
    for exact, name in ((False, "ONNX Runtime path (exact=False)"), (True, "float64 path (default)")):
        worst = max(checks[exact], key=lambda check: check.max_error)
        print(f"  {name}: median {statistics.median(times[exact]):.2f} s (min {min(times[exact]):.2f} s), "
              f"{counted[exact]} sessions; passed {sum(c.passed for c in checks[exact])}/{len(checks[exact])} "
              f"({', '.join(sorted({c.method for c in checks[exact]}))})")
        print(f"    largest per-channel error of a correct fold {worst.max_error:.2e} ({worst.label}), "
              f"tolerance there {worst.tolerance:.1e}")
        if exact:
            ratio = max(check.bound_ratio for check in checks[exact])
            print(f"    largest error / rounding bound of a correct fold: {ratio:.3f}")
    wrong = [conv_bn_piece(i, *layer, np.dtype(args.dtype), np.random.default_rng(0),
                           extreme=args.stats == "extreme", eps=0.0) for i, layer in enumerate(resnet50_layers())]
    for exact, name in ((False, "ONNX Runtime path"), (True, "float64 path")):
        checks = local.check_pieces(wrong, opset_imports=opsets, ir_version=8, exact=exact)
        ratios = [check.bound_ratio for check in checks if check.bound_ratio is not None]
        smallest = f"; smallest error / bound {min(ratios):.1f}" if ratios else ""
        print(f"  eps ignored, {name}: caught {sum(c.failed for c in checks)}/{len(checks)}{smallest}")

    sessions.clear()
    start = time.perf_counter()
    for piece in pieces:
        local.check_pieces([piece], opset_imports=opsets, ir_version=8, exact=False)
    print(f"  ONNX Runtime path one piece per call: {time.perf_counter() - start:.2f} s, {len(sessions)} sessions")


if __name__ == "__main__":
    main()
