"""Cost of the local check on a stack of N Gemm -> BatchNorm1d pairs: it must grow linearly in N.

    python benchmarks/gemm_bn_stack.py [--sizes 500 1000 2000] [--features 64] [--no-cli] [--ort]

For each N: the local check of the N pieces (check_pieces, float64 path; with --ort also the ONNX Runtime float32
path, which batches every piece into one session per side), bnfold.fold with and without the local check, and the
whole `python -m bnfold MODEL -o OUT` command (fold, local check, end-to-end verification, write; its exit code is
printed: the end-to-end check may call float32 noise amplified through hundreds of layers a failure). Prints seconds
and seconds per 1000 pairs, so a quadratic term shows as a growing per-pair figure.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import onnx
from onnx import helper

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

import bnfold  # noqa: E402
from bnfold.checking import local  # noqa: E402
from models.check_fixtures import gemm_bn_stack  # noqa: E402


def pieces_of(model: onnx.ModelProto) -> list:
    """The pieces the fold engine hands to the local check."""
    collected = []
    real = local.check_pieces

    def collect(pieces, **kwargs):
        collected.extend(pieces)
        return real(pieces, **kwargs)

    local.check_pieces = collect
    try:
        bnfold.fold(model)
    finally:
        local.check_pieces = real
    return collected


def timed(function) -> float:
    start = time.perf_counter()
    function()
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[500, 1000, 2000])
    parser.add_argument("--features", type=int, default=64)
    parser.add_argument("--no-cli", action="store_true", help="Leave out the whole-command timing.")
    parser.add_argument("--ort", action="store_true", help="Also time the ONNX Runtime float32 path.")
    args = parser.parse_args()
    opsets = [helper.make_opsetid("", 17)]
    print(f"{'N':>6} {'check f64':>10} {'/1000':>7}" + (f" {'check ORT':>10} {'/1000':>7}" if args.ort else "")
          + f" {'fold':>7} {'fold -L':>8}" + ("" if args.no_cli else f" {'bnfold':>8} {'/1000':>7}"))
    for pairs in args.sizes:
        model = gemm_bn_stack(pairs, args.features)
        pieces = pieces_of(model)
        assert len(pieces) == pairs, len(pieces)
        checks = []
        exact = timed(lambda: checks.extend(local.check_pieces(pieces, opset_imports=opsets, ir_version=8)))
        assert all(check.passed for check in checks), [c.reason for c in checks if not c.passed][:3]
        row = f"{pairs:>6} {exact:>9.2f}s {exact / pairs * 1000:>6.2f}s"
        if args.ort:
            ort = timed(lambda: local.check_pieces(pieces, opset_imports=opsets, ir_version=8, exact=False))
            row += f" {ort:>9.2f}s {ort / pairs * 1000:>6.2f}s"
        row += f" {timed(lambda: bnfold.fold(model)):>6.2f}s"
        row += f" {timed(lambda: bnfold.fold(model, local_check=False)):>7.2f}s"
        if not args.no_cli:
            with tempfile.TemporaryDirectory() as folder:
                source = Path(folder) / "stack.onnx"
                onnx.save(model, source)
                command = [sys.executable, "-m", "bnfold", str(source), "-o", str(Path(folder) / "out.onnx")]
                done = []
                seconds = timed(lambda: done.append(subprocess.run(command, capture_output=True, cwd=REPO)))
            row += f" {seconds:>7.2f}s {seconds / pairs * 1000:>6.2f}s (exit {done[0].returncode})"
        print(row, flush=True)


if __name__ == "__main__":
    main()
