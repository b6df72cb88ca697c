"""Fold two models (BN kept) with bnfold and with its peers, each as a whole process, in one run.

    python benchmarks/fold_speed.py [--repeats 5] [--models resnet50,vgg11_bn] [--cache DIR]

Models (built with random weights, cached in --cache so reruns start at once): ResNet-50-sized (98 MB, 53 BN) and
VGG-11-BN-sized (507 MiB, 8 BN). Peers (each skipped with a note when not installed): ONNX Runtime's offline basic
optimization (C++: a session with ORT_ENABLE_BASIC and optimized_model_filepath writes the fused model), onnxoptimizer's
fuse_bn_into_conv pass, onnxsim, onnxslim, and `onnx.load` + `onnx.save` alone (the Python floor). Prints the
environment (versions, cores), then per model and tool the median wall time of the whole process (interpreter and
imports included) with the range of all runs, the peak RSS, ratios against bnfold, bnfold's peak memory above the
interpreter against the model size, bnfold's phases (start-up and imports, load and write, fold, check; from its JSON
report) and the median of `bnfold --help`. Machines are noisy: read the ratios, not the absolute figures. bnfold's
bytecode is compiled first, as `pip install` does, so that no run pays for compiling it; each run starts after
os.sync(), so that none pays for the writeback of the one before.
"""

from __future__ import annotations

import argparse
import compileall
import importlib.util
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper


def image_classifier(name: str, nodes, initializers) -> onnx.ModelProto:
    """The model around `nodes`: input [N, 3, 224, 224] to logits [N, 1000], opset 17, IR 8."""
    graph = helper.make_graph(nodes, name, [helper.make_tensor_value_info("input", TensorProto.FLOAT,
                                                                           ["N", 3, 224, 224])],
                              [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["N", 1000])],
                              initializers)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    return model


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
    return image_classifier("resnet50", nodes, initializers)


def vgg11_bn(seed: int = 0) -> onnx.ModelProto:
    """VGG-11-BN's topology (8 Conv+BN+ReLU, 5 MaxPool, three Gemm: ~132.9M parameters, 507 MiB), random weights."""
    rng = np.random.default_rng(seed)
    nodes, initializers = [], []

    def weight(name, shape, scale):
        initializers.append(numpy_helper.from_array(
            (rng.standard_normal(shape, dtype=np.float32) * np.float32(scale)), name))

    x, c_in = "input", 3
    for index, width in enumerate((64, "M", 128, "M", 256, 256, "M", 512, 512, "M", 512, 512, "M")):
        if width == "M":
            nodes.append(helper.make_node("MaxPool", [x], [f"pool{index}"], kernel_shape=[2, 2], strides=[2, 2]))
            x = f"pool{index}"
            continue
        name = f"l{index}"
        weight(f"{name}_w", (width, c_in, 3, 3), (2.0 / (c_in * 9)) ** 0.5)
        for role, value in (("scale", rng.uniform(0.5, 1.5, width)), ("bias", rng.normal(0, 0.1, width)),
                            ("mean", rng.normal(0, 0.1, width)), ("var", rng.uniform(0.5, 1.5, width))):
            initializers.append(numpy_helper.from_array(value.astype(np.float32), f"{name}_{role}"))
        nodes.append(helper.make_node("Conv", [x, f"{name}_w"], [f"{name}_c"], name=f"{name}_conv", pads=[1] * 4))
        nodes.append(helper.make_node("BatchNormalization", [f"{name}_c"] + [f"{name}_{r}" for r in
                                      ("scale", "bias", "mean", "var")], [f"{name}_bn"], name=f"{name}_bn"))
        nodes.append(helper.make_node("Relu", [f"{name}_bn"], [f"{name}_r"]))
        x, c_in = f"{name}_r", width
    nodes.append(helper.make_node("Flatten", [x], ["flat"]))
    x = "flat"
    for index, (k, n) in enumerate(((512 * 7 * 7, 4096), (4096, 4096), (4096, 1000))):
        weight(f"fc{index}_w", (n, k), 0.01)
        initializers.append(numpy_helper.from_array(np.zeros(n, np.float32), f"fc{index}_b"))
        out = "logits" if n == 1000 else f"fc{index}"
        nodes.append(helper.make_node("Gemm", [x, f"fc{index}_w", f"fc{index}_b"], [out], transB=1))
        if n != 1000:
            nodes.append(helper.make_node("Relu", [out], [out + "_r"]))
            out += "_r"
        x = out
    return image_classifier("vgg11_bn", nodes, initializers)


MODELS = {"resnet50": (resnet50, 53), "vgg11_bn": (vgg11_bn, 8)}

# Each peer is a Python snippet run as `python -c CODE SOURCE DESTINATION`.
PEERS = {
    "ORT basic (C++)": ("onnxruntime",
                        "import onnxruntime as ort, sys; o = ort.SessionOptions(); "
                        "o.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_BASIC; "
                        "o.optimized_model_filepath = sys.argv[2]; "
                        "ort.InferenceSession(sys.argv[1], o, providers=['CPUExecutionProvider'])"),
    "onnxoptimizer": ("onnxoptimizer",
                      "import onnx, onnxoptimizer, sys; m = onnx.load(sys.argv[1]); "
                      "onnx.save(onnxoptimizer.optimize(m, ['fuse_bn_into_conv']), sys.argv[2])"),
    "onnxsim": ("onnxsim",
                "import onnx, onnxsim, sys; m, ok = onnxsim.simplify(onnx.load(sys.argv[1])); "
                "onnx.save(m, sys.argv[2])"),
    "onnxslim": ("onnxslim", "import onnxslim, sys; onnxslim.slim(sys.argv[1], sys.argv[2])"),
}
FLOOR = ("onnx.load + onnx.save", "import onnx, sys; onnx.save(onnx.load(sys.argv[1]), sys.argv[2])")
REFERENCE = "bnfold --no-verify"


def measure(command) -> tuple:
    """(wall seconds, peak RSS bytes) of one child process. Dirty pages a previous run left (its writes, fsynced or
    not) are flushed first, untimed: otherwise a tool that fsyncs would also pay for the writeback of the tool run
    before it."""
    os.sync()
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


def cached_model(name: str, cache: Path, script: str = __file__) -> Path:
    """The model file, built on first use by `script --build NAME PATH` (in a child process: children start as
    copies of this process, and its memory would count in theirs)."""
    path = cache / f"{name}.onnx"
    if not path.exists():
        cache.mkdir(parents=True, exist_ok=True)
        partial = path.with_suffix(".partial")
        subprocess.run([sys.executable, script, "--build", name, str(partial)], check=True)
        os.replace(partial, path)
    return path


def tools_for(source: Path, workdir: Path, peers: dict) -> dict:
    out = workdir / source.stem
    tools = {
        REFERENCE: [sys.executable, "-m", "bnfold", str(source), "-o", f"{out}.bnfold.onnx", "--no-verify", "-q",
                    "--json", f"{out}.bnfold.json"],
        "bnfold (verified)": [sys.executable, "-m", "bnfold", str(source), "-o", f"{out}.bnfold_v.onnx", "-q",
                              "--json", f"{out}.bnfold_v.json"],
    }
    for name, (_, code) in peers.items():
        tools[name] = [sys.executable, "-c", code, str(source), f"{out}.{name.split()[0]}.onnx"]
    tools[FLOOR[0]] = [sys.executable, "-c", FLOOR[1], str(source), f"{out}.floor.onnx"]
    return tools


def environment() -> str:
    """What the figures depend on, printed with them so they can be compared across machines."""
    versions = []
    for module in ("onnx", "onnxruntime", "numpy", "ml_dtypes"):
        spec = subprocess.run([sys.executable, "-c", f"import {module}; print({module}.__version__)"],
                              capture_output=True, text=True)
        versions.append(f"{module} {spec.stdout.strip() or 'missing'}")
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    # `import onnx` imports ml_dtypes, whose own import cost varies by version by two orders of magnitude (0.6 s
    # with ml_dtypes 0.7.0 and numpy 2.4, 4 ms with 0.6.0): every figure here includes it.
    code = "import numpy, time; t = time.perf_counter(); import ml_dtypes; print(time.perf_counter() - t)"
    costs = [subprocess.run([sys.executable, "-c", code], capture_output=True, text=True).stdout.strip()
             for _ in range(3)]
    cost = statistics.median(float(value) for value in costs) if all(costs) else None
    return (f"environment: Python {platform.python_version()}, {', '.join(versions)}, {platform.machine()} "
            f"{platform.system()}, {cores} usable cores"
            + (f"; import ml_dtypes (inside import onnx) {cost:.3f} s" if cost is not None else ""))


def phases(command) -> dict:
    """bnfold's own timings of the run that just ended (its --json report): load + write, fold, end-to-end check."""
    report = json.loads(Path(command[command.index("--json") + 1]).read_text())
    fold = report["fold_s"]
    verify = report.get("verify_s") or 0.0
    return {"load + write": report["elapsed_s"] - fold - verify, "fold": fold, "check": verify,
            "call": report["elapsed_s"]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--models", default=",".join(MODELS), help=f"comma-separated, of {', '.join(MODELS)}")
    parser.add_argument("--cache", type=Path, default=Path(tempfile.gettempdir()) / "bnfold-bench-models",
                        help="where the generated models are kept between runs")
    parser.add_argument("--no-verified", action="store_true", help="skip the verified bnfold run (faster)")
    parser.add_argument("--build", nargs=2, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.build:
        onnx.save(MODELS[args.build[0]][0](), args.build[1])
        return
    peers = {}
    for name, (module, code) in PEERS.items():
        if installed(module):
            peers[name] = (module, code)
        else:
            print(f"{name}: not installed (pip install {module}), skipped")
    # Bytecode first, as `pip install` compiles it: with PYTHONDONTWRITEBYTECODE set, or an edited checkout, every
    # bnfold run would otherwise compile its modules again (about 50 ms), and no peer does.
    compileall.compile_dir(os.path.dirname(importlib.util.find_spec("bnfold").origin), quiet=1)
    print(environment())
    workdir = Path(tempfile.mkdtemp(prefix="bnfold-bench-"))
    baseline = [sys.executable, "-c", "import onnx"]
    help_times = [measure([sys.executable, "-m", "bnfold", "--help"])[0] for _ in range(5)]
    print(f"bnfold --help: median {statistics.median(help_times):.3f} s (target < 0.3 s)")
    for model_name in args.models.split(","):
        source = cached_model(model_name, args.cache)
        model_bytes = source.stat().st_size
        print(f"\nmodel: {source} ({model_bytes / 2**20:.1f} MiB, {MODELS[model_name][1]} BatchNormalization)")
        tools = tools_for(source, workdir, peers)
        if args.no_verified:
            del tools["bnfold (verified)"]
        commands = {"python -c 'import onnx'": baseline, **tools}
        runs = {name: [] for name in commands}
        timings = {name: [] for name in commands if "--json" in commands[name]}
        for _ in range(args.repeats):  # interleaved, so a slow spell of the machine hits every tool alike
            for name, command in commands.items():
                runs[name].append(measure(command))
                if name in timings:
                    timings[name].append(dict(phases(command), process=runs[name][-1][0]))
        for path in workdir.glob(f"{source.stem}.*"):
            path.unlink()
        results = {name: (statistics.median(r[0] for r in values), max(r[1] for r in values))
                   for name, values in runs.items()}
        reference_time, reference_memory = results[REFERENCE]
        _, interpreter_memory = results["python -c 'import onnx'"]
        print(f"{'tool':28} {'median s':>9} {'range s':>11} {'peak MiB':>9} {'time / bnfold':>14} "
              f"{'mem / bnfold':>13} {'(mem-interp)/model':>19}")
        for name, (elapsed, memory) in results.items():
            times = [r[0] for r in runs[name]]
            print(f"{name:28} {elapsed:9.2f} {min(times):5.2f}-{max(times):<5.2f} {memory / 2**20:9.0f} "
                  f"{elapsed / reference_time:14.2f} {memory / reference_memory:13.2f} "
                  f"{(memory - interpreter_memory) / model_bytes:19.2f}")
        for name, values in timings.items():
            median = {key: statistics.median(value[key] for value in values) for key in values[0]}
            startup = statistics.median(value["process"] - value["call"] for value in values)
            parts = [f"start-up and imports {startup:.2f}", f"load + write {median['load + write']:.2f}",
                     f"fold {median['fold']:.2f}"] + ([f"check {median['check']:.2f}"] if median["check"] else [])
            print(f"{name} phases (median s): {', '.join(parts)}")
        print(f"bnfold peak memory above the interpreter with onnx imported: "
              f"{(reference_memory - interpreter_memory) / model_bytes:.2f}x the model size (target <= 2x)")
        ort = "ORT basic (C++)"
        if ort in results:
            print(f"bnfold / {ort} wall time: {reference_time / results[ort][0]:.2f} (target <= 1)")
        others = [results[name][0] for name in peers if name != ort]
        if others:
            print(f"bnfold / fastest Python peer wall time: {reference_time / min(others):.2f} (target <= 1)")


if __name__ == "__main__":
    main()
