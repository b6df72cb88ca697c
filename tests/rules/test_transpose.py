"""Transpose in the chain walk (one look-through entry): it moves the channel axis, and the walk follows it to
input axis a -> output axis perm.index(a). A perm that keeps the channels where a BN or reader wants them folds;
one that moves them elsewhere is refused with the axis they arrive on (a reshape-style proof would have "shown"
that perm [0, 2, 1, 3] keeps channels on axis 1, and planned a wrong fold)."""

import numpy as np
import pytest
from onnx import TensorProto, helper, numpy_helper

import bnfold
from models.fixtures import bn_node, bn_parameters, make_model
from support import assert_same_outputs, fold_and_compare, op_types


def _conv_transposes_bn(perms, *, c=8, h=8, w=5, bn_channels=None, seed=0):
    # (the BN's output has the input's dims: the perms tested here give back NCHW, or swap C and H of equal size)
    """x -> Conv(3x3, padded) -> Transpose(perm) for each perm -> BN -> y."""
    rng = np.random.default_rng(seed)
    initializers = [numpy_helper.from_array(rng.normal(0, 0.5, (c, 4, 3, 3)).astype(np.float32), "W")]
    initializers += bn_parameters(bn_channels or c, rng, "bn")
    nodes = [helper.make_node("Conv", ["x", "W"], ["t"], name="conv", pads=[1, 1, 1, 1])]
    for number, perm in enumerate(perms):
        nodes.append(helper.make_node("Transpose", [nodes[-1].output[0]], [f"p{number}"], name=f"transpose{number}",
                                      perm=perm))
    nodes.append(bn_node(nodes[-1].output[0], "y", "bn"))
    return make_model(nodes, [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 4, h, w])],
                      [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", bn_channels or c, h, w])],
                      initializers)


def test_transposes_that_bring_the_channels_back_to_axis_1_fold():
    """NCHW -> NHWC -> NCHW around a BN: the Conv absorbs it, the Transposes stay."""
    model = _conv_transposes_bn([[0, 2, 3, 1], [0, 3, 1, 2]])
    folded, report = fold_and_compare(model, expect_folded=1)
    assert op_types(folded) == ["Conv", "Transpose", "Transpose"]
    assert report.decisions[0].through == ["Transpose", "Transpose"]


def test_a_transpose_that_moves_the_channels_off_axis_1_is_refused():
    """The case the issue found: Conv [N, 8, 8, 5] -> Transpose(0, 2, 1, 3) -> BN(8): the BN normalizes what were
    the rows (H = 8, as many as the channels), not the channels; folding it into the Conv would be wrong."""
    model = _conv_transposes_bn([[0, 2, 1, 3]])
    folded, report = bnfold.fold(model, local_check=False)
    assert report.folded_count == 0
    assert "channels arrive on axis 2" in report.decisions[0].reason
    assert_same_outputs(model, folded)


def _matmul_tokens_transpose_bn(*, t=5, k=4, c=6, seed=1):
    """Tokens [N, T, K] -> MatMul W[K, C] -> [N, T, C] -> Transpose(0, 2, 1) -> [N, C, T] -> BatchNorm1d."""
    rng = np.random.default_rng(seed)
    initializers = [numpy_helper.from_array(rng.normal(0, 0.5, (k, c)).astype(np.float32), "W")]
    initializers += bn_parameters(c, rng, "bn")
    nodes = [helper.make_node("MatMul", ["x", "W"], ["m"], name="linear"),
             helper.make_node("Transpose", ["m"], ["mt"], name="to_channels", perm=[0, 2, 1]),
             bn_node("mt", "y", "bn")]
    return make_model(nodes, [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", t, k])],
                      [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", c, t])], initializers)


def test_a_token_matmul_transposed_to_channels_first_absorbs_batchnorm1d():
    folded, report = fold_and_compare(_matmul_tokens_transpose_bn(), expect_folded=1)
    assert report.decisions[0].into_op == "MatMul" and "BatchNormalization" not in op_types(folded)


@pytest.mark.parametrize("shift", [True, False])
def test_bn_reshape_transpose_matmul_folds_backward_into_the_matmul_rows(shift):
    """FastViT / Next-ViT: BN [N, C, H, W] -> Reshape [N, C, HW] -> Transpose(0, 2, 1) -> MatMul W[C, K]: the BN's
    channels reach the MatMul's last (input-channel) axis; the shift becomes an Add after it."""
    rng = np.random.default_rng(2)
    c, k = 6, 3
    initializers = bn_parameters(c, rng, "bn") + [
        numpy_helper.from_array(rng.normal(0, 0.5, (c, k)).astype(np.float32), "W"),
        numpy_helper.from_array(np.array([0, c, -1], np.int64), "tokens")]
    if not shift:
        initializers[1] = numpy_helper.from_array(np.zeros(c, np.float32), "bn_bias")
        initializers[2] = numpy_helper.from_array(np.zeros(c, np.float32), "bn_mean")
    nodes = [bn_node("x", "b", "bn"), helper.make_node("Reshape", ["b", "tokens"], ["r"], name="flatten"),
             helper.make_node("Transpose", ["r"], ["rt"], name="to_tokens", perm=[0, 2, 1]),
             helper.make_node("MatMul", ["rt", "W"], ["m"], name="linear"),
             helper.make_node("Relu", ["m"], ["y"], name="act")]
    model = make_model(nodes, [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", c, 4, 5])],
                       [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 20, k])], initializers)
    folded, report = fold_and_compare(model, expect_folded=1)
    assert report.decisions[0].rule == "backward" and report.decisions[0].through == ["Reshape", "Transpose"]
    assert op_types(folded) == ["Reshape", "Transpose", "MatMul"] + (["Add"] if shift else []) + ["Relu"]
