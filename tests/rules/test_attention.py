"""attention: a BN after softmax(Q Kᵀ) @ V (BoTNet) folds into the V rows of the qkv Conv, because the softmax rows
sum to 1; checked in ONNX Runtime against the unfolded model. The rule proves it from the graph: a Softmax that
normalizes another axis, a V whose columns mix channels, or unknown shapes keep the BN with the reason."""

import numpy as np
import pytest
from onnx import TensorProto, helper, numpy_helper

import bnfold
from models.fixtures import bn_node, bn_parameters, make_model
from support import assert_same_outputs, fold_and_compare, op_types

C, H, W = 8, 3, 4


def _attention_bn(*, heads=2, batch=2, softmax_axis=-1, opset=17, scramble=False, pool=False, seed=0):
    """x [batch, C, H, W] -> Conv 1x1 (3C, no bias) -> Split -> q, k, v as [batch * heads, HW, C / heads] (k
    transposed) -> Softmax(q kᵀ, softmax_axis) @ v -> Transpose -> Reshape [batch, C, H, W] [-> AveragePool 2x2]
    -> BN -> y. `scramble`: v is reshaped straight to [batch * heads, HW, C / heads], so a column mixes channels."""
    rng = np.random.default_rng(seed)
    head, positions = C // heads, H * W
    initializers = bn_parameters(C, rng, "bn") + [
        numpy_helper.from_array(rng.normal(0, 0.5, (3 * C, C, 1, 1)).astype(np.float32), "Wqkv"),
        numpy_helper.from_array(np.array([C, C, C], np.int64), "sizes"),
        numpy_helper.from_array(np.array([batch * heads, head, positions], np.int64), "heads"),
        numpy_helper.from_array(np.array([batch * heads, positions, head], np.int64), "scrambled"),
        numpy_helper.from_array(np.array([batch, C, H, W], np.int64), "image")]
    softmax = {"axis": softmax_axis} if softmax_axis is not None else {}
    nodes = [helper.make_node("Conv", ["x", "Wqkv"], ["qkv"], name="qkv"),
             helper.make_node("Split", ["qkv", "sizes"] if opset >= 13 else ["qkv"], ["q", "k", "v"], name="split",
                              axis=1, **({} if opset >= 13 else {"split": [C, C, C]})),
             helper.make_node("Reshape", ["q", "heads"], ["qh"], name="q_heads"),
             helper.make_node("Transpose", ["qh"], ["qt"], name="q_t", perm=[0, 2, 1]),
             helper.make_node("Reshape", ["k", "heads"], ["kh"], name="k_heads"),
             helper.make_node("MatMul", ["qt", "kh"], ["logits"], name="logits"),
             helper.make_node("Softmax", ["logits"], ["weights"], name="softmax", **softmax)]
    if scramble:
        nodes.append(helper.make_node("Reshape", ["v", "scrambled"], ["vt"], name="v_heads"))
    else:
        nodes += [helper.make_node("Reshape", ["v", "heads"], ["vh"], name="v_heads"),
                  helper.make_node("Transpose", ["vh"], ["vt"], name="v_t", perm=[0, 2, 1])]
    nodes += [helper.make_node("MatMul", ["weights", "vt"], ["attended"], name="attend"),
              helper.make_node("Transpose", ["attended"], ["at"], name="back", perm=[0, 2, 1]),
              helper.make_node("Reshape", ["at", "image"], ["out"], name="image")]
    last = "out"
    if pool:
        nodes.append(helper.make_node("AveragePool", ["out"], ["pooled"], name="pool", kernel_shape=[2, 2]))
        last = "pooled"
    nodes.append(bn_node(last, "y", "bn"))
    return make_model(nodes, [helper.make_tensor_value_info("x", TensorProto.FLOAT, [batch, C, H, W])],
                      [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)], initializers, opset=opset)


def _fold(model, **kwargs):
    """Fold with shapes inferred (the rule needs static ones), compare in ORT."""
    from onnx import shape_inference

    return fold_and_compare(shape_inference.infer_shapes(model), check=False, **kwargs)


@pytest.mark.parametrize("options", [{}, {"heads": 1}, {"heads": 4}, {"pool": True}, {"batch": 1},
                                     {"opset": 11, "softmax_axis": 2}, {"softmax_axis": 2}])
def test_a_bn_after_softmax_attention_folds_into_the_v_rows(options):
    folded, report = _fold(_attention_bn(**options), expect_folded=1)
    decision = report.decisions[0]
    assert decision.rule == "attention" and decision.into_op == "Conv"
    assert "Softmax" in decision.through and "BatchNormalization" not in op_types(folded)


@pytest.mark.parametrize("options, why", [
    ({"softmax_axis": 1}, "need not sum to 1"),
    ({"opset": 11, "softmax_axis": None}, "need not sum to 1"),
    ({"scramble": True}, "mixes channels"),
])
def test_what_breaks_the_proof_keeps_the_bn_with_the_reason(options, why):
    from onnx import shape_inference

    model = shape_inference.infer_shapes(_attention_bn(**options))
    folded, report = bnfold.fold(model)
    assert report.folded_count == 0 and why in report.decisions[0].reason, report.decisions[0].reason
    assert_same_outputs(model, folded)


def test_unknown_shapes_keep_the_bn_and_ask_for_static_ones():
    model = _attention_bn()
    model.graph.input[0].type.tensor_type.shape.dim[0].dim_param = "N"
    folded, report = bnfold.fold(model)
    assert report.folded_count == 0 and "static shape" in report.decisions[0].reason


def test_token_attention_with_a_matmul_projection_folds_into_its_v_columns():
    """ViT-style tokens: x [B, N, D] -> MatMul W[D, 3C] -> Split(last axis) -> v [B, N, h, C/h] -> heads first ->
    softmax(q kᵀ) @ v -> back to [B, N, C] -> Transpose -> BatchNorm1d: the V columns of the MatMul absorb the
    scale, and the shift is added after it (zero on the q and k columns)."""
    rng = np.random.default_rng(4)
    batch, tokens, dim, heads = 2, 5, 6, 2
    head = C // heads
    initializers = bn_parameters(C, rng, "bn") + [
        numpy_helper.from_array(rng.normal(0, 0.5, (dim, 3 * C)).astype(np.float32), "Wqkv"),
        numpy_helper.from_array(np.array([C, C, C], np.int64), "sizes"),
        numpy_helper.from_array(np.array([batch, tokens, heads, head], np.int64), "heads"),
        numpy_helper.from_array(np.array([batch, tokens, C], np.int64), "merged")]
    nodes = [helper.make_node("MatMul", ["x", "Wqkv"], ["qkv"], name="qkv"),
             helper.make_node("Split", ["qkv", "sizes"], ["q", "k", "v"], name="split", axis=-1)]
    for part, perm in (("q", [0, 2, 1, 3]), ("k", [0, 2, 3, 1]), ("v", [0, 2, 1, 3])):
        nodes += [helper.make_node("Reshape", [part, "heads"], [f"{part}h"], name=f"{part}_heads"),
                  helper.make_node("Transpose", [f"{part}h"], [f"{part}t"], name=f"{part}_t", perm=perm)]
    nodes += [helper.make_node("MatMul", ["qt", "kt"], ["logits"], name="logits"),
              helper.make_node("Softmax", ["logits"], ["weights"], name="softmax", axis=-1),
              helper.make_node("MatMul", ["weights", "vt"], ["attended"], name="attend"),
              helper.make_node("Transpose", ["attended"], ["tokens_first"], name="back", perm=[0, 2, 1, 3]),
              helper.make_node("Reshape", ["tokens_first", "merged"], ["out"], name="merge"),
              helper.make_node("Transpose", ["out"], ["channels_first"], name="to_channels", perm=[0, 2, 1]),
              bn_node("channels_first", "y", "bn")]
    model = make_model(nodes, [helper.make_tensor_value_info("x", TensorProto.FLOAT, [batch, tokens, dim])],
                       [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)], initializers)
    folded, report = _fold(model, expect_folded=1)
    assert report.decisions[0].rule == "attention" and report.decisions[0].into_op == "MatMul"
    assert "BatchNormalization" not in op_types(folded)
