"""Models that are hard on the end-to-end check, one per class of failure third-party models showed (issue 21).

Each is a correct model with BNs to fold; a sound check folds and verifies every one with no flags:

- paddle_style_dims: input declared [-1, 3, 0, 0] and an output [-1, -1, K] (older paddle2onnx exports);
- zero_channel_conv: a Conv with 0 output channels and its BN, concatenated with a real branch;
- depthwise_large_scales: a MobileFaceNet-style stack, depthwise 3x3 convs with BN scales of 7-24;
- float16_interior: float32 input and output around a float16 Conv/BN body (onnxconverter's keep_io_types);
- attention_large_logits: a self-attention block whose softmax inputs reach ~1e5, with Conv+BN projections;
- db_head: a text-detector head whose sigmoid map carries signal only on large images (a 32x32 input leaves it
  ~1e-8 everywhere), with a planted error helper for the check to catch;
- flat_region_detector: an output with signal only for image-like inputs (white noise leaves it ~0);
- gemm_bn_stack: hundreds of Linear -> BatchNorm1d pairs, one value per channel at batch 1 (float32 rounding
  accumulates over the depth, and a channel's single element says nothing of its own noise);
- wide_detector: a detector-sized model (about 400 intermediates at 1x3x800x800) for the check's cost.
"""

from __future__ import annotations

from typing import List

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from .fixtures import _conv_bn_layer, bn_node, bn_parameters, make_model


def _set_dims(value: onnx.ValueInfoProto, dims) -> None:
    """Declare raw dim values (-1 and 0 included, as some exporters write them) on a graph input or output."""
    shape = value.type.tensor_type.shape
    shape.ClearField("dim")
    for size in dims:
        shape.dim.add().dim_value = size


def paddle_style_dims(*, classes: int = 6, seed: int = 0) -> onnx.ModelProto:
    """x [-1, 3, 0, 0] -> Conv+BN+Relu -> Conv+BN -> Reshape [N, K, H*W] -> Transpose -> y [-1, -1, K]."""
    rng = np.random.default_rng(seed)
    nodes, initializers = [], []
    x = _conv_bn_layer(nodes, initializers, rng, "x", "c0", 3, 8)
    x = _conv_bn_layer(nodes, initializers, rng, x, "c1", 8, classes, kernel=1, relu=False)
    initializers.append(numpy_helper.from_array(np.array([0, classes, -1], np.int64), "tokens_shape"))
    nodes += [helper.make_node("Reshape", [x, "tokens_shape"], ["tokens"], name="tokens"),
              helper.make_node("Transpose", ["tokens"], ["y"], name="to_nlc", perm=[0, 2, 1])]
    inputs = [helper.make_tensor_value_info("x", TensorProto.FLOAT, None)]
    outputs = [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)]
    _set_dims(inputs[0], [-1, 3, 0, 0])
    _set_dims(outputs[0], [-1, -1, classes])
    return make_model(nodes, inputs, outputs, initializers)


def zero_channel_conv(*, seed: int = 0) -> onnx.ModelProto:
    """x -> [Conv(0 channels) + BN, Conv(8) + BN] -> Concat -> Relu: ONNX Runtime runs the empty branch."""
    rng = np.random.default_rng(seed)
    nodes, initializers = [], []
    initializers.append(numpy_helper.from_array(np.zeros((0, 3, 3, 3), np.float32), "empty_w"))
    initializers.extend(bn_parameters(0, rng, "empty"))
    nodes += [helper.make_node("Conv", ["x", "empty_w"], ["empty_conv"], name="empty_conv", pads=[1] * 4),
              bn_node("empty_conv", "empty_bn", "empty")]
    full = _conv_bn_layer(nodes, initializers, rng, "x", "full", 3, 8, relu=False)
    nodes += [helper.make_node("Concat", ["empty_bn", full], ["joined"], name="join", axis=1),
              helper.make_node("Relu", ["joined"], ["y"], name="relu")]
    inputs = [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 3, 12, 12])]
    outputs = [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 8, 12, 12])]
    return make_model(nodes, inputs, outputs, initializers)


def _depthwise_bn(nodes, initializers, rng, x, name, channels, scales, offset):
    """Depthwise 3x3 Conv (unpadded) + BN + PRelu on an input that sits at `offset` per channel: the BN subtracts what the
    conv makes of the offset (its running mean, as training would have measured it) and multiplies by `scales`
    (var 1, gamma = scale), so the conv output's rounding, relative to ~offset, is amplified in every channel."""
    weight = rng.normal(0, 1 / 3, (channels, 1, 3, 3))
    initializers.append(numpy_helper.from_array(weight.astype(np.float32), f"{name}_w"))
    parameters = bn_parameters(channels, rng, name)
    values = {"scale": scales, "mean": offset * weight.sum(axis=(1, 2, 3)), "var": np.ones(channels)}
    parameters = [numpy_helper.from_array(np.asarray(values.get(t.name[len(name) + 1:], numpy_helper.to_array(t)),
                                                     np.float32), t.name) for t in parameters]
    initializers.extend(parameters)
    nodes += [helper.make_node("Conv", [x, f"{name}_w"], [f"{name}_conv"], name=f"{name}_conv", group=channels),
              bn_node(f"{name}_conv", f"{name}_bn", name)]
    slope = numpy_helper.from_array(np.full((channels, 1, 1), 0.25, np.float32), f"{name}_slope")
    initializers.append(slope)
    nodes.append(helper.make_node("PRelu", [f"{name}_bn", f"{name}_slope"], [f"{name}_act"], name=f"{name}_act"))
    return f"{name}_act"


def depthwise_large_scales(*, blocks: int = 6, channels: int = 32, size: int = 28, offset: float = 1000.0,
                           seed: int = 0) -> onnx.ModelProto:
    """MobileFaceNet-style: pointwise Conv+BN whose output sits near `offset`, then depthwise 3x3 Conv+BN with
    scales 7-24 that takes the offset away again, and PRelu, repeated: the large scales amplify whatever rounding
    enters upstream, channel by channel."""
    rng = np.random.default_rng(seed)
    nodes, initializers = [], []
    x = _conv_bn_layer(nodes, initializers, rng, "x", "stem", 3, channels)
    for block in range(blocks):
        x = _conv_bn_layer(nodes, initializers, rng, x, f"pw{block}", channels, channels, kernel=1, relu=False,
                           bn_bias=offset + rng.normal(0, 1, channels))
        scales = rng.uniform(7, 24, channels) * rng.choice([-1, 1], channels)
        x = _depthwise_bn(nodes, initializers, rng, x, f"dw{block}", channels, scales, offset)
    initializers.append(numpy_helper.from_array(rng.normal(0, 0.05, (16, channels)).astype(np.float32), "fc_w"))
    nodes += [helper.make_node("GlobalAveragePool", [x], ["gap"], name="gap"),
              helper.make_node("Flatten", ["gap"], ["flat"], name="flat"),
              helper.make_node("Gemm", ["flat", "fc_w"], ["embedding"], name="fc", transB=1)]
    inputs = [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, size, size])]
    outputs = [helper.make_tensor_value_info("embedding", TensorProto.FLOAT, [1, 16])]
    return make_model(nodes, inputs, outputs, initializers)


def float16_interior(*, layers: int = 4, channels: int = 16, size: int = 16, seed: int = 0) -> onnx.ModelProto:
    """float32 x -> Cast(float16) -> (Conv+BN+Relu) x layers in float16 -> Cast(float32) y: keep_io_types."""
    float32 = float16_interior_float32(layers=layers, channels=channels, size=size, seed=seed)
    model = onnx.ModelProto()
    model.CopyFrom(float32)
    for tensor in model.graph.initializer:
        if tensor.data_type == TensorProto.FLOAT:
            tensor.CopyFrom(numpy_helper.from_array(numpy_helper.to_array(tensor).astype(np.float16), tensor.name))
    body = list(model.graph.node)
    first, last = body[0].input[0], model.graph.output[0].name
    body[0].input[0] = "x16"
    for node in body:
        node.output[:] = [name + "16" if name == last else name for name in node.output]
    del model.graph.node[:]
    model.graph.node.extend([helper.make_node("Cast", [first], ["x16"], name="to_half", to=TensorProto.FLOAT16),
                             *body,
                             helper.make_node("Cast", [last + "16"], [last], name="to_float", to=TensorProto.FLOAT)])
    return model


def float16_interior_float32(*, layers: int = 4, channels: int = 16, size: int = 16, seed: int = 0
                             ) -> onnx.ModelProto:
    """The float32 model float16_interior converts (the same nodes and weights)."""
    rng = np.random.default_rng(seed)
    nodes, initializers = [], []
    x, c_in = "x", 3
    for layer in range(layers):
        x = _conv_bn_layer(nodes, initializers, rng, x, f"l{layer}", c_in, channels, relu=layer < layers - 1)
        c_in = channels
    inputs = [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, size, size])]
    outputs = [helper.make_tensor_value_info(x, TensorProto.FLOAT, [1, channels, size, size])]
    return make_model(nodes, inputs, outputs, initializers)


def attention_large_logits(*, channels: int = 32, size: int = 8, offset: float = 1000.0, logit_scale: float = 0.1,
                           seed: int = 0) -> onnx.ModelProto:
    """visformer-style attention on a conv feature map: q, k, v are Conv1x1+BN; q and k share a channel near
    `offset`, so the softmax inputs reach ~offset^2 (1e5) while differing by O(1): the softmax turns float32
    rounding of its inputs (~1e-2 there) into visible changes of its outputs."""
    rng = np.random.default_rng(seed)
    nodes, initializers = [], []
    x = _conv_bn_layer(nodes, initializers, rng, "x", "stem", 3, channels)
    heads = {}
    for role in ("q", "k", "v"):
        # q and k share a large first channel (as trained attention often has), so q.k is ~offset^2 + O(1).
        bias, scale = rng.normal(0, 1, channels), rng.uniform(0.5, 2.0, channels)
        if role != "v":
            bias[0], scale[0] = offset, 0.01
        heads[role] = _conv_bn_layer(nodes, initializers, rng, x, role, channels, channels, kernel=1, relu=False,
                                     bn_scale=scale, bn_bias=bias)
    tokens = size * size
    initializers += [numpy_helper.from_array(np.array([1, channels, tokens], np.int64), "flat_shape"),
                     numpy_helper.from_array(np.array([1, channels, size, size], np.int64), "map_shape"),
                     numpy_helper.from_array(np.array(logit_scale, np.float32), "logit_scale")]
    for role in ("q", "k", "v"):
        nodes.append(helper.make_node("Reshape", [heads[role], "flat_shape"], [f"{role}_flat"], name=f"{role}_flat"))
    nodes += [helper.make_node("Transpose", ["q_flat"], ["q_t"], name="q_t", perm=[0, 2, 1]),
              helper.make_node("MatMul", ["q_t", "k_flat"], ["scores"], name="scores"),
              helper.make_node("Mul", ["scores", "logit_scale"], ["logits"], name="logits"),
              helper.make_node("Softmax", ["logits"], ["attention"], name="softmax", axis=-1),
              helper.make_node("Transpose", ["attention"], ["attention_t"], name="attention_t", perm=[0, 2, 1]),
              helper.make_node("MatMul", ["v_flat", "attention_t"], ["mixed"], name="mix"),
              helper.make_node("Reshape", ["mixed", "map_shape"], ["mixed_map"], name="mixed_map")]
    y = _conv_bn_layer(nodes, initializers, rng, "mixed_map", "proj", channels, channels, kernel=1, relu=False)
    inputs = [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, size, size])]
    outputs = [helper.make_tensor_value_info(y, TensorProto.FLOAT, [1, channels, size, size])]
    return make_model(nodes, inputs, outputs, initializers)


def db_head(*, channels: int = 8, seed: int = 0) -> onnx.ModelProto:
    """A DB-style text detector on N x 3 x H x W (H, W dynamic): Conv+BN+Relu features; the head adds to each
    pixel's logit the features' sum over the whole image (text-likeness grows with the content seen), minus a
    threshold, then Sigmoid. On a 32x32 input every logit is about -18 (the map is ~1e-8 everywhere, nothing to
    compare); on 640x640 the map spans (0, 1). The head Conv (2 channels: probability and threshold maps) folds
    a BN, so a wrong fold there is what the check must see."""
    rng = np.random.default_rng(seed)
    nodes, initializers = [], []
    x = _conv_bn_layer(nodes, initializers, rng, "x", "f0", 3, channels)
    x = _conv_bn_layer(nodes, initializers, rng, x, "f1", channels, channels)
    head = _conv_bn_layer(nodes, initializers, rng, x, "head", channels, 2, kernel=1, relu=False)
    initializers += [numpy_helper.from_array(np.array(1e-5, np.float32), "content_gain"),
                     numpy_helper.from_array(np.array(-18.0, np.float32), "threshold")]
    nodes += [helper.make_node("ReduceSum", [x], ["content"], name="content", keepdims=1),
              helper.make_node("Mul", ["content", "content_gain"], ["evidence"], name="evidence"),
              helper.make_node("Add", [head, "evidence"], ["raised"], name="raise"),
              helper.make_node("Add", ["raised", "threshold"], ["logits"], name="shift"),
              helper.make_node("Sigmoid", ["logits"], ["maps"], name="maps")]
    inputs = [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 3, "H", "W"])]
    outputs = [helper.make_tensor_value_info("maps", TensorProto.FLOAT, ["N", 2, "H", "W"])]
    return make_model(nodes, inputs, outputs, initializers)


def flat_region_detector(*, channels: int = 4, seed: int = 0) -> onnx.ModelProto:
    """A detector of flat image regions on N x 3 x H x W (H, W dynamic): the local mean of squared differences of
    neighbouring pixels, through a steep Sigmoid, after a Conv+BN stem. White noise has no flat region (the map is
    ~0 at every size); an image-like input (random blocks) has many: an output that carries signal only for
    inputs that look like images."""
    rng = np.random.default_rng(seed)
    nodes, initializers = [], []
    x = _conv_bn_layer(nodes, initializers, rng, "x", "stem", 3, channels, kernel=1, relu=False)
    difference = np.zeros((channels, 1, 1, 2), np.float32)
    difference[:, 0, 0] = [1.0, -1.0]
    initializers += [numpy_helper.from_array(difference, "difference_w"),
                     numpy_helper.from_array(np.array(-2000.0, np.float32), "steepness"),
                     numpy_helper.from_array(np.array(5.0, np.float32), "level")]
    nodes += [helper.make_node("Conv", [x, "difference_w"], ["edges"], name="edges", group=channels),
              helper.make_node("Mul", ["edges", "edges"], ["energy"], name="energy"),
              helper.make_node("AveragePool", ["energy"], ["local"], name="local", kernel_shape=[5, 5],
                               pads=[2, 2, 2, 2]),
              helper.make_node("Mul", ["local", "steepness"], ["scaled"], name="scaled"),
              helper.make_node("Add", ["scaled", "level"], ["logits"], name="logits"),
              helper.make_node("Sigmoid", ["logits"], ["flat"], name="flat")]
    inputs = [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 3, "H", "W"])]
    outputs = [helper.make_tensor_value_info("flat", TensorProto.FLOAT, ["N", channels, "H", "w"])]
    return make_model(nodes, inputs, outputs, initializers)


def wide_detector(*, size: int = 800, stages: int = 5, blocks: int = 10, channels: int = 24, seed: int = 0
                  ) -> onnx.ModelProto:
    """Detector-sized: a 1 x 3 x size x size input, `stages` strided stages of `blocks` residual Conv+BN+Relu
    blocks each (about 8 intermediates per block: ~400 at the defaults), and a per-pixel head on the first stage."""
    rng = np.random.default_rng(seed)
    nodes, initializers = [], []
    x = _conv_bn_layer(nodes, initializers, rng, "x", "stem", 3, channels, stride=2)
    first = None
    for stage in range(stages):
        if stage:
            x = _conv_bn_layer(nodes, initializers, rng, x, f"down{stage}", channels, channels, stride=2)
        for block in range(blocks):
            name = f"s{stage}b{block}"
            inner = _conv_bn_layer(nodes, initializers, rng, x, f"{name}a", channels, channels)
            inner = _conv_bn_layer(nodes, initializers, rng, inner, f"{name}b", channels, channels, relu=False)
            nodes.append(helper.make_node("Add", [x, inner], [f"{name}_sum"], name=f"{name}_sum"))
            nodes.append(helper.make_node("Relu", [f"{name}_sum"], [f"{name}_out"], name=f"{name}_out"))
            x = f"{name}_out"
        if first is None:
            first = x
    head = _conv_bn_layer(nodes, initializers, rng, first, "head", channels, 4, kernel=1, relu=False)
    initializers.append(numpy_helper.from_array(rng.normal(0, 0.1, (10, channels)).astype(np.float32), "fc_w"))
    nodes += [helper.make_node("GlobalAveragePool", [x], ["gap"], name="gap"),
              helper.make_node("Flatten", ["gap"], ["flat"], name="flat"),
              helper.make_node("Gemm", ["flat", "fc_w"], ["classes"], name="fc", transB=1)]
    inputs = [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, size, size])]
    outputs = [helper.make_tensor_value_info(head, TensorProto.FLOAT, [1, 4, size // 2, size // 2]),
               helper.make_tensor_value_info("classes", TensorProto.FLOAT, [1, 10])]
    return make_model(nodes, inputs, outputs, initializers)


def gemm_bn_stack(pairs: int, features: int, seed: int = 0) -> onnx.ModelProto:
    """x [batch, features] -> (Gemm -> BatchNormalization) x pairs, as torch exports Linear -> BatchNorm1d. The BN
    statistics are those of the Gemm's outputs on normal inputs (as training leaves them), so the stack stays
    finite however deep it is."""
    rng = np.random.default_rng(seed)
    nodes, initializers, source = [], [], "x"
    activations = rng.normal(size=(256, features))
    for i in range(pairs):
        weight = rng.normal(0, features**-0.5, (features, features)).astype(np.float32)
        bias = rng.normal(0, 0.1, features)
        outputs = activations @ weight.T.astype(np.float64) + bias
        scale, shift = rng.uniform(0.8, 1.2, features), rng.normal(0, 0.1, features)
        mean, var = outputs.mean(axis=0), outputs.var(axis=0)
        activations = (outputs - mean) / np.sqrt(var + 1e-5) * scale + shift
        arrays = {f"w{i}": weight, f"b{i}": bias, f"s{i}": scale, f"bb{i}": shift, f"m{i}": mean, f"v{i}": var}
        initializers += [numpy_helper.from_array(np.asarray(a, np.float32), name) for name, a in arrays.items()]
        nodes.append(helper.make_node("Gemm", [source, f"w{i}", f"b{i}"], [f"g{i}"], name=f"gemm{i}", transB=1))
        nodes.append(helper.make_node("BatchNormalization", [f"g{i}", f"s{i}", f"bb{i}", f"m{i}", f"v{i}"],
                                      [f"y{i}"], name=f"bn{i}"))
        source = f"y{i}"
    graph = helper.make_graph(nodes, "gemm_bn_stack",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", features])],
                              [helper.make_tensor_value_info(source, TensorProto.FLOAT, ["batch", features])],
                              initializers)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)


def plant_bias_error(folded: onnx.ModelProto, conv_name_part: str, fraction: float = 0.05,
                     channel: int = 0) -> onnx.ModelProto:
    """A copy of a folded model whose Conv (the first whose name contains `conv_name_part`) has the bias of one
    channel moved by `fraction` of the range of its biases: the kind of wrong fold the check must catch."""
    model = onnx.ModelProto()
    model.CopyFrom(folded)
    conv = next(node for node in model.graph.node if node.op_type == "Conv" and conv_name_part in node.name)
    tensor = next(t for t in model.graph.initializer if t.name == conv.input[2])
    bias = numpy_helper.to_array(tensor).astype(np.float64)
    spread = max(float(bias.max() - bias.min()), float(np.abs(bias).max()), 1e-3)
    bias[channel] += fraction * spread
    tensor.CopyFrom(numpy_helper.from_array(bias.astype(np.float32), tensor.name))
    return model


ALL: List[str] = ["paddle_style_dims", "zero_channel_conv", "depthwise_large_scales", "float16_interior",
                  "attention_large_logits", "db_head", "flat_region_detector"]
