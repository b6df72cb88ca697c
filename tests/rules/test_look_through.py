"""The look-through table states, per op, which per-channel maps cross it exactly (scale, shift) and where the
channels go. Checked here against the op itself, evaluated by ONNX Runtime: for each entry (in a configuration
its channels() accepts), op(x * s + t) is compared with op(x) * s + t on the channel axis the entry says, for a
random scale alone, a random shift alone and a scale with a negative channel; the entry's claim must match what the
values show, both ways."""

import numpy as np
import pytest
from onnx import TensorProto, helper, numpy_helper

from bnfold.graph import GraphIndex, ModelScope, scope_types
from bnfold.rules.look_through import TABLE
from bnfold.rules.views import Channels, sizes_of
from models.fixtures import make_model
from support import run as run_model

C = 3
# op -> (input shape, attributes, constant inputs as (name, value))
CASES = {
    "Identity": ((2, C, 4, 4), {}, []),
    "Cast": ((2, C, 4, 4), {"to": TensorProto.DOUBLE}, []),
    "Reshape": ((2, C, 4, 4), {}, [("shape", np.array([0, C, -1], np.int64))]),
    "Flatten": ((2, C, 1, 1), {"axis": 1}, []),
    "Squeeze": ((2, C, 1, 1), {}, [("axes", np.array([2, 3], np.int64))]),
    "Unsqueeze": ((2, C, 4), {}, [("axes", np.array([2], np.int64))]),
    "Transpose": ((2, C, 4, 5), {"perm": [0, 2, 3, 1]}, []),
    "Pad/zeros": ((2, C, 4, 4), {}, [("pads", np.array([0, 0, 1, 2, 0, 0, 2, 1], np.int64))]),
    "Pad/ones": ((2, C, 4, 4), {}, [("pads", np.array([0, 0, 1, 1, 0, 0, 1, 1], np.int64)),
                                    ("value", np.array(1.0, np.float32))]),
    "Pad/reflect": ((2, C, 4, 4), {"mode": "reflect"}, [("pads", np.array([0, 0, 1, 2, 0, 0, 2, 1], np.int64))]),
    "Pad/crop": ((2, C, 4, 4), {}, [("pads", np.array([0, 0, -1, 0, 0, 0, 0, -1], np.int64))]),
    "GlobalAveragePool": ((2, C, 4, 4), {}, []),
    "AveragePool/unpadded": ((2, C, 6, 6), {"kernel_shape": [2, 2], "strides": [2, 2]}, []),
    "AveragePool/padded-excluded": ((2, C, 5, 5), {"kernel_shape": [3, 3], "pads": [1, 1, 1, 1]}, []),
    "AveragePool/padded-counted": ((2, C, 5, 5), {"kernel_shape": [3, 3], "pads": [1, 1, 1, 1],
                                                  "count_include_pad": 1}, []),
    "ReduceMean": ((2, C, 4, 5), {"keepdims": 0}, [("axes", np.array([2, 3], np.int64))]),
    "MaxPool": ((2, C, 7, 7), {"kernel_shape": [3, 3], "strides": [2, 2], "pads": [1, 1, 1, 1], "ceil_mode": 1}, []),
    "GlobalMaxPool": ((2, C, 4, 4), {}, []),
    "ReduceMax": ((2, C, 4, 5), {"keepdims": 1}, [("axes", np.array([2, 3], np.int64))]),
}


def test_every_view_like_entry_has_a_case():
    assert {case.split("/")[0] for case in CASES} == {op for op, entry in TABLE.items() if not entry.removed}


def _single_node(case):
    op = case.split("/")[0]
    shape, attributes, constants = CASES[case]
    node = helper.make_node(op, ["x", *(name for name, _ in constants)], ["y"], name="node", **attributes)
    model = make_model([node], [helper.make_tensor_value_info("x", TensorProto.FLOAT, list(shape))],
                       [helper.make_tensor_value_info("y", TensorProto.DOUBLE if op == "Cast" else TensorProto.FLOAT,
                                                      None)],
                       [numpy_helper.from_array(value, name) for name, value in constants], opset=18)
    return model, op, shape


def _per_channel(values, axis, rank):
    return values.reshape([-1 if a == axis else 1 for a in range(rank)])


@pytest.mark.parametrize("case", CASES)
def test_the_entry_says_which_maps_cross_the_op_as_the_values_do(case):
    model, op, shape = _single_node(case)
    index = GraphIndex(model.graph, model=ModelScope(model, model_bytes=0), types=scope_types(model)[()])
    entry, node = TABLE[op], index.nodes[0]
    assert entry.boundary(node, index) is None
    after = entry.channels(node, index, Channels(C, sizes_of(list(shape), len(shape)), 1))
    claim = entry.commutes(node, index)
    rng = np.random.default_rng(0)
    x = rng.normal(0, 1, shape).astype(np.float32)
    y = np.asarray(run_model(model, {"x": x})["y"], np.float64)
    assert len(after.dims) == y.ndim and y.shape[after.axis] == C  # the channels are where the entry says
    scale, shift = rng.uniform(0.5, 2, C).astype(np.float32), rng.normal(0, 1, C).astype(np.float32)
    negative = scale * np.array([1, -1, 1], np.float32)
    for name, (s, t), claimed in (("scale", (scale, np.zeros(C, np.float32)), claim.scale),
                                  ("shift", (np.ones(C, np.float32), shift), claim.shift),
                                  ("negative scale", (negative, np.zeros(C, np.float32)),
                                   claim.scale and claim.negative_scale)):
        moved = np.asarray(run_model(model, {"x": x * _per_channel(s, 1, x.ndim) + _per_channel(t, 1, x.ndim)})["y"],
                           np.float64)
        expected = y * _per_channel(s, after.axis, y.ndim) + _per_channel(t, after.axis, y.ndim)
        assert np.allclose(moved, expected, rtol=1e-5, atol=1e-5) == claimed, (case, name, claim)
