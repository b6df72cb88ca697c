"""Fold a ResNet-50-sized model (BN kept) with bnfold and with its peers, each as a whole process, in one run.

    python benchmarks/fold_speed.py [--repeats 3] [--keep DIR]

Peers (each skipped with a note when not installed): onnxoptimizer's fuse_bn_into_conv pass, onnxsim, onnxslim.
Prints per tool the median wall time and peak RSS of the whole process (interpreter and imports included), the
ratios against bnfold, and bnfold's peak memory against the model size. Also times `bnfold --help`.
Machines are noisy: read the ratios, not the absolute figures.
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

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper


def resnet50(seed: int = 0) -> onnx.ModelProto:
    """ResNet-50's topology (bottlenecks 3-4-6-3, 53 Conv+BN pairs, ~25.5M parameters), random weights."""
    rng = np.random.default_rng(seed)
    nodes, initializers = [], []
    counter = [0]

    def conv_bn(x, c_in, c_out, kernel, stride, relu=True):
        counter[0] += 1
        name = f"l{counter[0]}"
        weight = rng.normal(0, (2.0 / (c_in * kernel * kernel)) ** 0.5, (c_out, c_in, kernel, kernel))
        initializers.append(numpy_helper.from_array(weight.astype(np.float32), f"{name}_w"))
        for role, value in (("scale", rng.uniform(0.5, 1.5, c_out)), ("bias", rng.normal(0, 0.1, c_out)),
                            ("mean", rng.normal(0, 0.1, c_out)), ("var", rng.uniform(0.5, 1.5, c_out))):
            initializers.append(numpy_helper.from_array(value.astype(np.float32), f"{name}_{role}"))
        pad = kernel // 2
        nodes.append(helper.make_node("Conv", [x, f"{name}_w"], [f"{name}_c"], name=f"{name}_conv",
                                      strides=[stride, stride], pads=[pad] * 4))
        nodes.append(helper.make_node("BatchNormalization", [f"{name}_c"] + [f"{name}_{r}" for r in
                                      ("scale", "bias", "mean", "var")], [f"{name}_bn"], name=f"{name}_bn"))
        if not relu:
            return f"{name}_bn"
        nodes.append(helper.make_node("Relu", [f"{name}_bn"], [f"{name}_r"]))
        return f"{name}_r"

    x = conv_bn("input", 3, 64, 7, 2)
    nodes.append(helper.make_node("MaxPool", [x], ["pool"], kernel_shape=[3, 3], strides=[2, 2], pads=[1] * 4))
    x, c_in = "pool", 64
    for stage, (blocks, width) in enumerate(zip((3, 4, 6, 3), (64, 128, 256, 512))):
        for block in range(blocks):
            stride = 2 if block == 0 and stage > 0 else 1
            y = conv_bn(x, c_in, width, 1, 1)
            y = conv_bn(y, width, width, 3, stride)
            y = conv_bn(y, width, width * 4, 1, 1, relu=False)
            shortcut = conv_bn(x, c_in, width * 4, 1, stride, relu=False) if block == 0 else x
            out = f"s{stage}b{block}"
            nodes.append(helper.make_node("Add", [y, shortcut], [out + "_sum"]))
            nodes.append(helper.make_node("Relu", [out + "_sum"], [out]))
            x, c_in = out, width * 4
    nodes.append(helper.make_node("GlobalAveragePool", [x], ["gap"]))
    nodes.append(helper.make_node("Flatten", ["gap"], ["flat"]))
    initializers.append(numpy_helper.from_array(rng.normal(0, 0.01, (1000, 2048)).astype(np.float32), "fc_w"))
    initializers.append(numpy_helper.from_array(np.zeros(1000, np.float32), "fc_b"))
    nodes.append(helper.make_node("Gemm", ["flat", "fc_w", "fc_b"], ["logits"], transB=1))
    graph = helper.make_graph(nodes, "resnet50", [helper.make_tensor_value_info("input", TensorProto.FLOAT,
                                                                                 ["N", 3, 224, 224])],
                              [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["N", 1000])],
                              initializers)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    return model


PEERS = {
    "onnxoptimizer": ("onnxoptimizer",
                      "import onnx, onnxoptimizer, sys; m = onnx.load(sys.argv[1]); "
                      "onnx.save(onnxoptimizer.optimize(m, ['fuse_bn_into_conv']), sys.argv[2])"),
    "onnxsim": ("onnxsim",
                "import onnx, onnxsim, sys; m, ok = onnxsim.simplify(onnx.load(sys.argv[1])); "
                "onnx.save(m, sys.argv[2])"),
    "onnxslim": ("onnxslim", "import onnxslim, sys; onnxslim.slim(sys.argv[1], sys.argv[2])"),
}


def measure(command) -> tuple:
    """(wall seconds, peak RSS bytes) of one child process."""
    started = time.perf_counter()
    process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    _, status, usage = os.wait4(process.pid, 0)
    elapsed = time.perf_counter() - started
    process.returncode = os.waitstatus_to_exitcode(status)
    if process.returncode != 0:
        raise RuntimeError(f"{command[:3]} failed: {process.stderr.read().decode()[-500:]}")
    return elapsed, usage.ru_maxrss * 1024


def installed(module: str) -> bool:
    return subprocess.run([sys.executable, "-c", f"import {module}"], capture_output=True).returncode == 0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--keep", type=Path, help="directory to keep the model and outputs in")
    parser.add_argument("--build", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.build:
        onnx.save(resnet50(), args.build)
        return
    workdir = Path(args.keep or tempfile.mkdtemp(prefix="bnfold-bench-"))
    workdir.mkdir(parents=True, exist_ok=True)
    source = workdir / "resnet50_bn.onnx"
    # Built in a child process: children start as copies of this process, and its memory would count in theirs.
    subprocess.run([sys.executable, __file__, "--build", str(source)], check=True)
    model_bytes = source.stat().st_size
    print(f"model: {source} ({model_bytes / 2**20:.1f} MiB, 53 BatchNormalization)")

    tools = {
        "bnfold --no-verify": [sys.executable, "-m", "bnfold", str(source), "-o", str(workdir / "bnfold.onnx"),
                               "--no-verify", "-q"],
        "bnfold (verified)": [sys.executable, "-m", "bnfold", str(source), "-o", str(workdir / "bnfold_v.onnx"),
                              "-q"],
    }
    for name, (module, code) in PEERS.items():
        if installed(module):
            tools[name] = [sys.executable, "-c", code, str(source), str(workdir / f"{name}.onnx")]
        else:
            print(f"{name}: not installed (pip install {module}), skipped")
    baseline = [sys.executable, "-c", "import onnx"]
    results = {}
    for name, command in {"python -c 'import onnx'": baseline, **tools}.items():
        runs = [measure(command) for _ in range(args.repeats)]
        results[name] = (statistics.median(r[0] for r in runs), max(r[1] for r in runs))
    help_times = [measure([sys.executable, "-m", "bnfold", "--help"])[0] for _ in range(5)]

    reference_time, reference_memory = results["bnfold --no-verify"]
    print(f"\n{'tool':28} {'median s':>9} {'peak MiB':>9} {'time / bnfold':>14} {'mem / bnfold':>13}")
    for name, (elapsed, memory) in results.items():
        print(f"{name:28} {elapsed:9.2f} {memory / 2**20:9.0f} {elapsed / reference_time:14.2f} "
              f"{memory / reference_memory:13.2f}")
    _, interpreter_memory = results["python -c 'import onnx'"]
    print(f"\nbnfold --help: median {statistics.median(help_times):.3f} s (target < 0.3 s)")
    print(f"bnfold peak memory above the interpreter with onnx imported: "
          f"{(reference_memory - interpreter_memory) / model_bytes:.2f}x the model size (target < 2x)")
    peers = [results[name][0] for name in PEERS if name in results]
    if peers:
        print(f"bnfold / fastest peer wall time: {reference_time / min(peers):.2f} (target <= 1)")


if __name__ == "__main__":
    main()
