"""Folded vs original latency of a ResNet-style and a RepVGG-style model on ONNX Runtime's CPU EP, in one run.

Two figures matter: with ORT's graph optimizations disabled (the raw gain of removing the BatchNormalization
nodes), and at ORT's default level "all" (the gain over ORT, which fuses Conv+BN itself when it builds a session,
so the ResNet ratio there is expected near 1). Both are the folded model's p50 latency over the original's.
The RepVGG-style net is timed three ways: original, BNs folded but branches kept (--skip merge_branches), and
merged (one Conv per block); ORT merges no branches itself, so the merge gains at every level.

    python benchmarks/runtime_latency.py                      # models/**/resnet*.onnx if present, else a built one
    python benchmarks/runtime_latency.py --model net.onnx --iterations 500 --json latency.json
    python benchmarks/runtime_latency.py --standalone         # BN vs the Mul + Add that replaces a standalone BN

With --standalone it measures instead whether a BatchNormalization that nothing can absorb is better replaced by
a Mul and an Add with [C, 1, 1] constants (what bnfold's standalone rule writes) or left as BN: BN after a Concat
(DenseNet), after a MaxPool, after a residual Add, each at 1x64x56x56 and 1x256x14x14, and the repository's
densenet_block.onnx folded with and without `--standalone`. The ratio is Mul+Add's p50 over BN's,
the median of --rounds short benches.

    python benchmarks/runtime_latency.py --only repvgg

The built ResNet (when no zoo model exists) has a Conv+BN+ReLU stem, basic blocks of two Conv+BN with identity or
strided Conv+BN shortcuts, global average pooling and a Gemm head, input 1x3x112x112. The RepVGG-style net has
blocks of parallel Conv3x3+BN, Conv1x1+BN and (where the shape is kept) BN(x), summed, ReLU; same input and head.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
from pathlib import Path
from typing import Optional

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

import bnfold  # noqa: E402  (after the path tweak, so the checkout runs without being installed)
from bnfold.loading import load_model  # noqa: E402


class ResNetBuilder:
    """Appends nodes and seeded initializers; BN statistics are non-trivial so folding changes the weights."""

    def __init__(self, seed: int = 0):
        self.rng = np.random.default_rng(seed)
        self.nodes = []
        self.initializers = []
        self.count = 0

    def name(self, kind: str) -> str:
        self.count += 1
        return f"{kind}{self.count}"

    def constant(self, kind: str, array: np.ndarray) -> str:
        name = self.name(kind)
        self.initializers.append(numpy_helper.from_array(array.astype(np.float32), name))
        return name

    def conv_bn(self, x: str, cin: int, cout: int, kernel: int = 3, stride: int = 1) -> str:
        fan_in = cin * kernel * kernel
        weight = self.constant("W", self.rng.standard_normal((cout, cin, kernel, kernel)) * np.sqrt(2.0 / fan_in))
        conv = self.name("conv")
        pad = kernel // 2
        self.nodes.append(helper.make_node("Conv", [x, weight], [conv], strides=[stride, stride],
                                           pads=[pad, pad, pad, pad], name=conv))
        params = [
            self.constant("gamma", 1.0 + 0.3 * self.rng.standard_normal(cout)),
            self.constant("beta", 0.3 * self.rng.standard_normal(cout)),
            self.constant("mean", 0.3 * self.rng.standard_normal(cout)),
            self.constant("var", self.rng.uniform(0.5, 2.0, cout)),
        ]
        bn = self.name("bn")
        self.nodes.append(helper.make_node("BatchNormalization", [conv, *params], [bn], epsilon=1e-5, name=bn))
        return bn

    def op(self, op_type: str, inputs, **attributes) -> str:
        output = self.name(op_type.lower())
        self.nodes.append(helper.make_node(op_type, list(inputs), [output], name=output, **attributes))
        return output

    def basic_block(self, x: str, cin: int, cout: int, stride: int) -> str:
        out = self.op("Relu", [self.conv_bn(x, cin, cout, stride=stride)])
        out = self.conv_bn(out, cout, cout)
        shortcut = x if stride == 1 and cin == cout else self.conv_bn(x, cin, cout, kernel=1, stride=stride)
        return self.op("Relu", [self.op("Add", [out, shortcut])])


    def batchnorm(self, x: str, channels: int) -> str:
        params = [
            self.constant("gamma", 1.0 + 0.3 * self.rng.standard_normal(channels)),
            self.constant("beta", 0.3 * self.rng.standard_normal(channels)),
            self.constant("mean", 0.3 * self.rng.standard_normal(channels)),
            self.constant("var", self.rng.uniform(0.5, 2.0, channels)),
        ]
        bn = self.name("bn")
        self.nodes.append(helper.make_node("BatchNormalization", [x, *params], [bn], epsilon=1e-5, name=bn))
        return bn

    def repvgg_block(self, x: str, cin: int, cout: int, stride: int) -> str:
        out = self.op("Add", [self.conv_bn(x, cin, cout, stride=stride), self.conv_bn(x, cin, cout, 1, stride)])
        if stride == 1 and cin == cout:
            out = self.op("Add", [out, self.batchnorm(x, cout)])
        return self.op("Relu", [out])


def _classifier(builder: ResNetBuilder, x: str, channels: int, classes: int, name: str) -> onnx.ModelProto:
    pooled = builder.op("Flatten", [builder.op("GlobalAveragePool", [x])])
    head = builder.constant("fc_W", builder.rng.standard_normal((classes, channels)) * 0.1)
    bias = builder.constant("fc_b", np.zeros(classes))
    builder.nodes.append(helper.make_node("Gemm", [pooled, head, bias], ["logits"], transB=1, name="fc"))
    graph = helper.make_graph(
        builder.nodes, name,
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["N", 3, 112, 112])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["N", classes])],
        builder.initializers,
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)


def standalone_case(kind: str, channels: int, size: int, seed: int = 0) -> onnx.ModelProto:
    """One BN that no rule folds into a weight: x -> PRODUCER -> BN -> Relu, where PRODUCER is a Concat of two halves
    (DenseNet), a MaxPool 3x3/1 (padded), or a residual Add. Nothing else runs, so the BN's own cost is what shows
    (densenet_block.onnx gives the effect inside a network)."""
    rng = np.random.default_rng(seed)
    half = channels // 2
    inputs = {"concat": [("a", [1, half, size, size]), ("b", [1, channels - half, size, size])],
              "maxpool": [("a", [1, channels, size, size])],
              "residual_add": [("a", [1, channels, size, size]), ("b", [1, channels, size, size])]}[kind]
    producer = {"concat": helper.make_node("Concat", ["a", "b"], ["x"], axis=1),
                "maxpool": helper.make_node("MaxPool", ["a"], ["x"], kernel_shape=[3, 3], pads=[1, 1, 1, 1]),
                "residual_add": helper.make_node("Add", ["a", "b"], ["x"])}[kind]
    params = {"gamma": rng.uniform(0.5, 1.5, channels), "beta": rng.normal(0, 0.1, channels),
              "mean": rng.normal(0, 0.1, channels), "var": rng.uniform(0.5, 1.5, channels)}
    nodes = [producer,
             helper.make_node("BatchNormalization", ["x", "gamma", "beta", "mean", "var"], ["bn"], name="bn"),
             helper.make_node("Relu", ["bn"], ["y"])]
    graph = helper.make_graph(
        nodes, f"{kind}_bn", [helper.make_tensor_value_info(name, TensorProto.FLOAT, dims) for name, dims in inputs],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, channels, size, size])],
        [numpy_helper.from_array(value.astype(np.float32), name) for name, value in params.items()])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)


def standalone_main(args) -> int:
    """BN against the Mul + Add bnfold writes for it, at ORT's disabled and default levels (see the docstring)."""
    cases = [(f"{kind} {channels}x{size}x{size}", standalone_case(kind, channels, size))
             for kind in ("concat", "maxpool", "residual_add") for channels, size in ((64, 56), (256, 14))]
    densenet = load_model(REPO / "models" / "zoo" / "densenet_block.onnx")
    rows = []
    for label, original in cases + [("densenet_block.onnx", densenet)]:
        folded, report = bnfold.fold(original, standalone=True)
        standalone = sum(1 for decision in report.decisions if decision.rule == "standalone")
        candidates = [("BN", original), ("Mul+Add", folded)]
        if label.endswith(".onnx"):
            kept, _ = bnfold.fold(original)  # the default: BNs nothing absorbs stay
            candidates = [("BN", original), ("skip standalone", kept), ("Mul+Add", folded)]
        ratios = {}
        for _ in range(args.rounds):  # short benches repeated: one slow spell of the machine cannot decide a ratio
            result = bnfold.bench(candidates, providers=["cpu"], opt_levels=["disable", "all"], warmup=args.warmup,
                                  iterations=args.iterations, intra_op_threads=args.intra_op_threads)
            for row in result.rows:
                if row.ratio is not None and row.model != "BN":
                    ratios.setdefault((row.model, row.opt_level), []).append(row.ratio)
        rows += [(label, standalone, model, level, values) for (model, level), values in ratios.items()]
        print(f"{label}: {standalone} BN became Mul+Add", flush=True)
    print(f"\n{'case':28} {'standalone':>10} {'model':16} {'ORT opt':8} {'p50 / BN p50':>12}  range over rounds")
    for label, standalone, model, level, values in rows:
        print(f"{label:28} {standalone:>10} {model:16} {level:8} {statistics.median(values):12.3f}  "
              f"{min(values):.2f}-{max(values):.2f}")
    return 0


def build_repvgg_style(classes: int = 10) -> onnx.ModelProto:
    """RepVGG-A-like stages in the training structure: 112x112 -> 56 -> 28 -> 14."""
    builder = ResNetBuilder()
    x = "input"
    for cin, cout, stride in [(3, 32, 2), (32, 32, 1), (32, 64, 2), (64, 64, 1), (64, 64, 1), (64, 128, 2),
                              (128, 128, 1), (128, 128, 1), (128, 128, 1)]:
        x = builder.repvgg_block(x, cin, cout, stride)
    return _classifier(builder, x, 128, classes, "repvgg_style")


def build_resnet_style(classes: int = 10) -> onnx.ModelProto:
    builder = ResNetBuilder()
    x = builder.op("Relu", [builder.conv_bn("input", 3, 32, stride=2)])  # 112x112 -> 56x56
    for cin, cout, stride in [(32, 32, 1), (32, 32, 1), (32, 64, 2), (64, 64, 1)]:
        x = builder.basic_block(x, cin, cout, stride)
    return _classifier(builder, x, 64, classes, "resnet_style")


def find_zoo_model() -> Optional[Path]:
    """The first models/**/resnet*.onnx that still has BatchNormalization nodes to fold."""
    for path in sorted((REPO / "models").glob("**/resnet*.onnx")):
        if any(node.op_type == "BatchNormalization" for node in load_model(path).graph.node):
            return path
    return None


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", type=Path, help="an ONNX model with BatchNormalization (default: see above)")
    parser.add_argument("--input-shape", action="append", default=[], help="NAME:D0xD1x... as in bnfold bench")
    parser.add_argument("--warmup", type=int, default=20)
    parser.add_argument("--iterations", type=int, default=200)
    parser.add_argument("--intra-op-threads", type=int, default=None)
    parser.add_argument("--json", type=Path, help="also write bnfold bench's JSON here")
    parser.add_argument("--standalone", action="store_true", help="BN vs Mul + Add where nothing absorbs the BN")
    parser.add_argument("--rounds", type=int, default=7, help="--standalone: benches per case; the median ratio")


    parser.add_argument("--json", type=Path, help="also write bnfold bench's JSON here (the RepVGG run's next to "
                        "it, with a _repvgg suffix)")
    parser.add_argument("--only", choices=["resnet", "repvgg"], help="time one of the two models only")
    args = parser.parse_args(argv)
    if args.standalone:
        return standalone_main(args)

    if args.only in (None, "resnet"):
        path = args.model or find_zoo_model()
        original = load_model(path) if path else build_resnet_style()
        label = path.name if path else "resnet_style (built)"
        folded, report = bnfold.fold(original)
        print(f"{label}: {report.folded_count} BatchNormalization folded, {report.kept_count} kept", flush=True)
        time_models(args, [("original", original), ("folded", folded)], args.json)
    if args.only in (None, "repvgg"):
        original = build_repvgg_style()
        unmerged, _ = bnfold.fold(original, skip="merge_branches")
        merged, report = bnfold.fold(original)
        convs = [sum(node.op_type == "Conv" for node in model.graph.node) for model in (original, unmerged, merged)]
        print(f"\nrepvgg_style (built): {report.folded_count} BatchNormalization folded, {len(report.merged)} of "
              f"{len(report.merges)} branch sums merged; Conv nodes {convs[0]} -> {convs[1]} (BNs folded) -> "
              f"{convs[2]} (merged)", flush=True)
        json_path = args.json.with_name(args.json.stem + "_repvgg" + args.json.suffix) if args.json else None
        time_models(args, [("original", original), ("folded", unmerged), ("merged", merged)], json_path)
    return 0


def time_models(args, models, json_path: Optional[Path]) -> None:
    result = bnfold.bench(
        models,
        providers=["cpu"],
        opt_levels=["disable", "all"],
        warmup=args.warmup,
        iterations=args.iterations,
        input_shapes=args.input_shape,
        intra_op_threads=args.intra_op_threads,
    )
    print(result.table())
    print("\np50 latency / original's, CPU EP:")
    for level, description in (("disable", "ORT optimizations disabled"), ("all", "ORT default (all)")):
        ratios = [f"{row.model} {row.ratio:.3f}" for row in result.rows
                  if row.opt_level == level and row.model != "original" and row.ratio is not None]
        print(f"  {description:<28} {', '.join(ratios)}")
    if json_path:
        json_path.write_text(json.dumps(result.to_dict(), indent=2) + "\n")


if __name__ == "__main__":
    sys.exit(main())
