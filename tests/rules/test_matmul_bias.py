"""A backward fold into a MatMul followed by its bias Add (a Linear on tokens exports as MatMul + Add) adds the
shift to that Add's constant instead of inserting a second Add; checked in ONNX Runtime."""

import numpy as np
import pytest
from onnx import TensorProto, helper, numpy_helper

from models.fixtures import bn_node, bn_parameters, make_model
from support import fold_and_compare, op_types

C, K, T = 6, 4, 5


def _bn_tokens_linear(bias_shape):
    """x [N, C, T] -> BN -> Transpose -> MatMul W[C, K] -> Add(bias of `bias_shape`) -> y."""
    rng = np.random.default_rng(0)
    initializers = bn_parameters(C, rng, "bn") + [
        numpy_helper.from_array(rng.normal(0, 0.5, (C, K)).astype(np.float32), "W"),
        numpy_helper.from_array(rng.normal(0, 0.5, bias_shape).astype(np.float32), "b")]
    nodes = [bn_node("x", "n", "bn"), helper.make_node("Transpose", ["n"], ["t"], name="tokens", perm=[0, 2, 1]),
             helper.make_node("MatMul", ["t", "W"], ["m"], name="linear"),
             helper.make_node("Add", ["m", "b"], ["y"], name="bias")]
    return make_model(nodes, [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", C, T])],
                      [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", T, K])], initializers)


@pytest.mark.parametrize("bias_shape", [(K,), (1, 1, K)])
def test_the_shift_joins_the_linear_bias(bias_shape):
    folded, _ = fold_and_compare(_bn_tokens_linear(bias_shape), expect_folded=1)
    assert op_types(folded) == ["Transpose", "MatMul", "Add"]


def test_a_bias_that_is_not_per_column_gets_its_own_add():
    folded, _ = fold_and_compare(_bn_tokens_linear((T, K)), expect_folded=1)
    assert op_types(folded) == ["Transpose", "MatMul", "Add", "Add"]
