"""Fold 20 small models (each verified in ONNX Runtime) with one `bnfold -j 2` run against one `bnfold` process per
model, in the same run; print the medians and the ratio.

    python benchmarks/batch_fold.py [--models 20] [--repeats 3] [--jobs 2]

The per-process loop pays interpreter start-up and the onnx / onnxruntime imports once per model; the batch pays
them once per worker. Machines are noisy: read the ratio, not the absolute figures.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import onnx

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from models.fixtures import conv_bn, conv_bn_bn, gemm_bn  # noqa: E402

BUILDERS = (lambda seed: conv_bn(seed=seed, c_in=8, c_out=16), conv_bn_bn, lambda seed: gemm_bn(seed=seed))


def write_models(directory: Path, count: int) -> list:
    paths = []
    for index in range(count):
        path = directory / f"model_{index:02d}.onnx"
        onnx.save(BUILDERS[index % len(BUILDERS)](seed=index), path)
        paths.append(path)
    return paths


def timed(commands, env) -> float:
    started = time.perf_counter()
    for command in commands:
        subprocess.run(command, check=True, env=env, stdout=subprocess.DEVNULL)
    return time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", type=int, default=20)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--jobs", type=int, default=2)
    args = parser.parse_args()
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    bnfold = [sys.executable, "-m", "bnfold"]
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        (tmp / "in").mkdir()
        paths = write_models(tmp / "in", args.models)
        batch_times, loop_times = [], []
        for repeat in range(args.repeats):
            out_batch, out_loop = tmp / f"batch{repeat}", tmp / f"loop{repeat}"
            out_batch.mkdir(), out_loop.mkdir()
            batch_times.append(timed([[*bnfold, str(tmp / "in"), "-o", str(out_batch), "-j", str(args.jobs)]],
                                     env))
            loop_times.append(timed([[*bnfold, str(path), "-o", str(out_loop / path.name), "-q"] for path in paths],
                                    env))
            for path in paths:
                assert (out_batch / path.name).read_bytes() == (out_loop / path.name).read_bytes()
    batch, loop = statistics.median(batch_times), statistics.median(loop_times)
    print(f"{args.models} models, folded and verified, median of {args.repeats}")
    print(f"  bnfold DIR -o OUT -j {args.jobs}        {batch:7.2f} s")
    print(f"  one bnfold process per model     {loop:7.2f} s")
    print(f"  ratio batch / per-process        {batch / loop:7.2f}  ({loop / batch:.1f}x faster)")


if __name__ == "__main__":
    main()
