"""Small models for the verify tests: a Conv+BN model and its fold computed by hand, multi-output and unary ones."""

import numpy as np
from onnx import TensorProto, helper, numpy_helper

EPSILON = 1e-5


def make_model(nodes, inputs, outputs, initializers=()):
    graph = helper.make_graph(nodes, "test", inputs, outputs, list(initializers))
    # ir_version 8: the onnxruntime this runs on may not read the newest IR version onnx writes by default.
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)


def conv_bn_parameters(seed=0, channels=4):
    rng = np.random.default_rng(seed)
    return {
        "W": rng.standard_normal((channels, 3, 3, 3)) * 0.3,
        "b": rng.standard_normal(channels) * 0.1,
        "gamma": rng.uniform(0.5, 1.5, channels),
        "beta": rng.standard_normal(channels) * 0.2,
        "mean": rng.standard_normal(channels) * 0.3,
        "var": rng.uniform(0.2, 2.0, channels),
    }


def conv_bn_model(params, dtype=np.float32, input_dims=(1, 3, 8, 8)):
    """x -> Conv -> BatchNormalization -> y, the shape of a model before folding."""
    initializers = [numpy_helper.from_array(value.astype(dtype), name) for name, value in params.items()]
    nodes = [
        helper.make_node("Conv", ["x", "W", "b"], ["conv"], pads=[1, 1, 1, 1]),
        helper.make_node("BatchNormalization", ["conv", "gamma", "beta", "mean", "var"], ["y"], epsilon=EPSILON),
    ]
    element = helper.np_dtype_to_tensor_dtype(np.dtype(dtype))
    return make_model(
        nodes,
        [helper.make_tensor_value_info("x", element, list(input_dims))],
        [helper.make_tensor_value_info("y", element, None)],
        initializers,
    )


def folded_model(params, dtype=np.float32, perturb=0.0, output="y", input_dims=(1, 3, 8, 8)):
    """The same model folded by hand in float64: one Conv. `perturb` is added to one folded weight."""
    scale = params["gamma"] / np.sqrt(params["var"] + EPSILON)
    weight = params["W"] * scale[:, None, None, None]
    bias = (params["b"] - params["mean"]) * scale + params["beta"]
    weight.flat[5] += perturb
    element = helper.np_dtype_to_tensor_dtype(np.dtype(dtype))
    return make_model(
        [helper.make_node("Conv", ["x", "W", "b"], [output], pads=[1, 1, 1, 1])],
        [helper.make_tensor_value_info("x", element, list(input_dims))],
        [helper.make_tensor_value_info(output, element, None)],
        [numpy_helper.from_array(weight.astype(dtype), "W"), numpy_helper.from_array(bias.astype(dtype), "b")],
    )


def two_output_model(aux_offset=0.0):
    """x -> MatMul -> logits and x -> MatMul -> aux; `aux_offset` shifts one weight of aux only."""
    rng = np.random.default_rng(3)
    head = rng.standard_normal((6, 4)).astype(np.float32)
    aux = rng.standard_normal((6, 2)).astype(np.float32)
    aux[0, 0] += aux_offset
    return make_model(
        [helper.make_node("MatMul", ["x", "head"], ["logits"]), helper.make_node("MatMul", ["x", "aux_w"], ["aux"])],
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, 6])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, None),
         helper.make_tensor_value_info("aux", TensorProto.FLOAT, None)],
        [numpy_helper.from_array(head, "head"), numpy_helper.from_array(aux, "aux_w")],
    )


def unary_model(op, dims=(2, 5), output="y"):
    return make_model(
        [helper.make_node(op, ["x"], [output])],
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, list(dims))],
        [helper.make_tensor_value_info(output, TensorProto.FLOAT, None)],
    )
