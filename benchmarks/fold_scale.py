"""Does folding scale linearly? Fold deep Conv -> BN -> Relu stacks of 10k, 100k and 1M nodes.

    python benchmarks/fold_scale.py [--sizes 10000 100000 1000000] [--channels 2] [--repeats 1]

The fold engine alone (local_check=False: the local check's cost is benchmarks/local_check.py's subject).

For each size a fresh subprocess loads the model from disk and folds it `repeats` times with bnfold.fold (which
copies the model first), then once more copying and once in place, each after resetting the kernel's peak-RSS mark.
It prints the median fold time, the time per node, each size's time per node relative to the smallest size's
(near 1 when folding is linear), and the peak memory each fold added above the loaded model as a multiple of the
model's file size (the issue's budget: a peak under 2x the model size).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from onnx import TensorProto, helper, numpy_helper

ROOT = Path(__file__).resolve().parent.parent
NODES_PER_BLOCK = 3  # Conv, BatchNormalization, Relu


def deep_conv_stack(nodes: int, channels: int, seed: int = 0):
    """x -> [Conv 3x3 -> BN -> Relu] * (nodes / 3) -> y, every BN with non-trivial statistics."""
    rng = np.random.default_rng(seed)
    blocks = max(1, nodes // NODES_PER_BLOCK)
    graph_nodes, initializers = [], []
    current = "x"
    for index in range(blocks):
        prefix = f"b{index}"
        weight = rng.normal(0, 0.3, (channels, channels, 3, 3)).astype(np.float32)
        stats = {
            "scale": rng.uniform(0.5, 1.5, channels), "bias": rng.normal(0, 0.1, channels),
            "mean": rng.normal(0, 0.1, channels), "var": rng.uniform(0.5, 2.0, channels),
        }
        initializers.append(numpy_helper.from_array(weight, f"{prefix}_w"))
        initializers += [numpy_helper.from_array(v.astype(np.float32), f"{prefix}_{k}") for k, v in stats.items()]
        graph_nodes += [
            helper.make_node("Conv", [current, f"{prefix}_w"], [f"{prefix}_conv"], name=f"{prefix}_conv",
                             pads=[1, 1, 1, 1]),
            helper.make_node("BatchNormalization", [f"{prefix}_conv", *(f"{prefix}_{k}" for k in stats)],
                             [f"{prefix}_bn"], name=f"{prefix}_bn"),
            helper.make_node("Relu", [f"{prefix}_bn"], [f"{prefix}_relu"], name=f"{prefix}_relu"),
        ]
        current = f"{prefix}_relu"
    graph_nodes[-1].output[0] = "y"
    graph = helper.make_graph(
        graph_nodes, "deep_conv_stack",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", channels, 8, 8])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", channels, 8, 8])],
        initializers,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    return model


def _rss_kib(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise RuntimeError(f"{field} not in /proc/self/status")


def _reset_peak_rss() -> bool:
    """Reset VmHWM to the current RSS (Linux 4.0+); False where the kernel does not allow it."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
        return True
    except OSError:
        return False


def measure(path: str, mode: str, repeats: int) -> dict:
    """Run in a fresh child process: load the model, then either time `repeats` copying folds ("time"), or fold once
    copying ("copy") or in place ("inplace", what fold_file and the CLI do) and report the peak RSS it added.
    Peaks are measured in their own process: memory an earlier fold freed would hide a later fold's peak."""
    import bnfold
    from bnfold.loading import load_model

    model = load_model(path)
    if mode == "time":
        times = []
        for _ in range(repeats):
            started = time.perf_counter()
            folded, report = bnfold.fold(model, local_check=False)
            times.append(time.perf_counter() - started)
            assert report.kept_count == 0, report.render()
            del folded, report
        return {"nodes": len(model.graph.node), "median_s": statistics.median(times)}
    if not _reset_peak_rss():
        return {"peak_added_bytes": None}
    before = _rss_kib("VmRSS")
    bnfold.fold(model, inplace=mode == "inplace", local_check=False)
    return {"peak_added_bytes": (_rss_kib("VmHWM") - before) * 1024}


def _child(path: str, mode: str, repeats: int) -> dict:
    child = subprocess.run(
        [sys.executable, __file__, "--child", path, "--mode", mode, "--repeats", str(repeats)],
        capture_output=True, text=True, check=True, cwd=ROOT,
    )
    return json.loads(child.stdout.strip().splitlines()[-1])


def run_size(nodes: int, channels: int, repeats: int, directory: str) -> dict:
    model = deep_conv_stack(nodes, channels)
    path = os.path.join(directory, f"stack_{nodes}.onnx")
    with open(path, "wb") as handle:
        handle.write(model.SerializeToString())
    del model
    result = _child(path, "time", repeats)
    result["model_bytes"] = os.path.getsize(path)
    for mode in ("copy", "inplace"):
        result[f"peak_{mode}"] = _child(path, mode, 1)["peak_added_bytes"]
    return result


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[10_000, 100_000, 1_000_000])
    parser.add_argument("--channels", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=1)
    parser.add_argument("--child", help=argparse.SUPPRESS)
    parser.add_argument("--mode", choices=("time", "copy", "inplace"), default="time", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        print(json.dumps(measure(args.child, args.mode, args.repeats)))
        return
    print(f"{'nodes':>7} {'model':>9} {'fold (median)':>14} {'us/node':>8} {'vs first':>8} "
          f"{'peak: fold()':>13} {'inplace':>8}")
    first_per_node = None
    with tempfile.TemporaryDirectory() as directory:
        for size in args.sizes:
            result = run_size(size, args.channels, args.repeats, directory)
            per_node = result["median_s"] / result["nodes"]
            first_per_node = first_per_node or per_node
            peaks = [result[key] / result["model_bytes"] if result[key] is not None else None
                     for key in ("peak_copy", "peak_inplace")]
            peak_text = " ".join(f"{p:7.2f}x" if p is not None else "     n/a" for p in peaks)
            print(f"{result['nodes']:>7} {result['model_bytes'] / 2**20:7.1f} MiB {result['median_s']:12.3f} s "
                  f"{per_node * 1e6:8.1f} {per_node / first_per_node:8.2f} {peak_text:>22}")
    print("vs first: time per node relative to the smallest model (about 1 when folding is linear).\n"
          "peak: memory a fold added above the loaded model, as a multiple of the model file size, for\n"
          "bnfold.fold(model) (copies the model first) and fold(model, inplace=True) (what `bnfold` and fold_file do).")


if __name__ == "__main__":
    main()
