"""Reasons a user can act on (issue 24 section 3): the most specific reason first, and a rank the model does not
say named in words, with what would help. Every kept BN leaves the model computing what it did (ORT)."""

import numpy as np
from onnx import TensorProto, helper, numpy_helper

import bnfold
from models import fixtures
from support import assert_same_outputs, fold_and_compare


def test_a_bn_before_a_padded_conv_says_why_the_backward_fold_failed_first():
    """Pre-activation ResNet stem: BN -> padded Conv. The backward refusal (the padding and the shift) is the reason;
    the standalone hint follows it instead of replacing it with "nothing to fold it into"."""
    model = fixtures.standalone_input_bn()
    folded, report = bnfold.fold(model)
    reason = report.decisions[0].reason
    assert reason.startswith("Conv 'conv' pads its input (pads=[1, 1, 1, 1]) and the shift is not zero: the padded "
                             "zeros would not receive it [backward]"), reason
    assert reason.endswith("; --standalone would make it Mul + Add, which ONNX Runtime runs 1.1-1.5x slower than "
                           "BatchNormalization")
    assert "nothing to fold it into" not in reason and report.decisions[0].standalone_possible
    assert_same_outputs(model, folded)


def test_nothing_to_fold_into_stays_the_reason_when_no_rule_matched():
    model = fixtures.standalone_bn()
    _, report = bnfold.fold(model)
    assert report.decisions[0].reason.startswith("input 'x' comes from a graph input; nothing to fold it into (")


def _custom_matmul_mul_bn(declare: bool):
    """x -> custom op (no type) -> MatMul W[4, 6] -> Mul(c[6]) -> BN -> y: without a declared shape for the custom
    op's output nobody knows the MatMul's rank, so which axis the constant broadcasts along is unknown."""
    rng = np.random.default_rng(0)
    initializers = fixtures.bn_parameters(6, rng, "bn") + [
        numpy_helper.from_array(rng.normal(0, 0.5, (4, 6)).astype(np.float32), "W"),
        numpy_helper.from_array(rng.uniform(0.5, 2, 6).astype(np.float32), "c")]
    nodes = [helper.make_node("Mystery", ["x"], ["h"], domain="example.custom", name="mystery"),
             helper.make_node("MatMul", ["h", "W"], ["mm"], name="linear"),
             helper.make_node("Mul", ["mm", "c"], ["scaled"], name="scale"), fixtures.bn_node("scaled", "y", "bn")]
    model = fixtures.make_model(nodes, [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 4])],
                                [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 6])], initializers)
    model.opset_import.append(helper.make_opsetid("example.custom", 1))
    if declare:
        model.graph.value_info.append(helper.make_tensor_value_info("h", TensorProto.FLOAT, ["N", 4]))
    return model


def test_an_unknown_rank_is_said_in_words_with_what_would_help():
    _, report = bnfold.fold(_custom_matmul_mul_bn(declare=False), local_check=False)
    reason = report.decisions[0].reason
    assert "axis None" not in reason and "rank unknown" not in reason
    assert "Mul 'scale' constant of shape [6] cannot be matched to the channels: the rank of 'mm' is unknown: the " \
           "model declares no shape for it and ONNX shape inference found none; declaring its shape in value_info" \
           in reason


def test_declaring_the_shape_as_the_reason_says_lets_it_fold():
    """What the reason suggests works: with the custom op's output shape declared, the BN folds into the MatMul.
    (The custom op cannot run in ONNX Runtime, so the fold is checked by replacing it with an Identity.)"""
    model = _custom_matmul_mul_bn(declare=True)
    folded, report = bnfold.fold(model, local_check=False)
    assert report.folded_count == 1 and report.decisions[0].into_op == "MatMul"
    for graph in (model.graph, folded.graph):
        mystery = next(node for node in graph.node if node.op_type == "Mystery")
        mystery.op_type, mystery.domain = "Identity", ""
    assert_same_outputs(model, folded)


def test_a_skipped_producer_is_named_in_the_reason():
    _, report = bnfold.fold(fixtures.bn_conv(), skip="conv")
    assert report.folded_count == 0
    assert report.decisions[0].reason.startswith("Conv 'conv' could absorb it, but rule 'conv' is skipped")
