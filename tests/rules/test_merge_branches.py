"""merge_branches: parallel branches of one tensor summed by Add / Sum become one Conv, checked in ONNX Runtime
against the unmerged model (optimizations off); refusals keep the sum and say why."""

import numpy as np
import onnx
import pytest
from onnx import helper, numpy_helper

import bnfold
from models import fixtures
from support import fold_and_compare, op_types


def merged_model(model, **kwargs):
    folded, report = fold_and_compare(model, **kwargs)
    assert report.merges and all(merge.merged for merge in report.merges), report.render()
    for merge in report.merges:
        assert merge.local_error is not None and merge.local_error < 1e-4, merge
    return folded, report


def test_repvgg_block_becomes_one_conv():
    folded, report = merged_model(fixtures.repvgg_block())
    assert op_types(folded) == ["Conv", "Relu"]
    conv = folded.graph.node[0]
    weight = numpy_helper.to_array(next(t for t in folded.graph.initializer if t.name == conv.input[1]))
    assert weight.shape == (8, 8, 3, 3) and weight.dtype == np.float32
    assert conv.output[0] == folded.graph.node[1].input[0] == "block_add1"  # the sum's name, taken over
    assert [m.kernel for m in report.merges] == [[3, 3], [3, 3]]
    assert "identity through BatchNormalization" in report.merges[1].branches[1]  # kept: Mul + Add is opt-in
    assert "2 of 2 merged into one Conv" in report.render()
    assert report.to_dict()["merges_done"] == 2 and report.to_dict()["merges"][0]["into"] == "block_b0_conv"


def test_mobileone_block_depthwise_and_pointwise_stages_each_become_one_conv():
    folded, report = merged_model(fixtures.mobileone_block())
    assert op_types(folded) == ["Conv", "Relu", "Conv", "Relu"]
    depthwise, pointwise = folded.graph.node[0], folded.graph.node[2]
    assert helper.get_attribute_value(next(a for a in depthwise.attribute if a.name == "group")) == 8
    assert helper.get_attribute_value(next(a for a in pointwise.attribute if a.name == "group")) == 1
    assert report.merges[0].node == "dw_sum" and len(report.merges[0].branches) == 5


@pytest.mark.parametrize("identity", ["bn", "affine", "plain"])
@pytest.mark.parametrize("sum_op", ["Add", "Sum"])
def test_identity_branch_kinds(identity, sum_op):
    folded, _ = merged_model(fixtures.branch_block(identity=identity, sum_op=sum_op))
    assert op_types(folded) == ["Conv", "Relu"]


def test_an_identity_bn_left_as_bn_is_merged_itself():
    folded, report = merged_model(fixtures.repvgg_block(), skip="standalone")
    assert op_types(folded) == ["Conv", "Relu"]
    assert "identity through BatchNormalization 'block_id'" in report.merges[1].branches
    assert report.kept == [] and report.decisions[-1].rule == "merge_branches"


def test_a_bn_after_the_sum_folds_into_the_merged_conv():
    folded, report = merged_model(fixtures.branch_block(post_bn=True))
    assert op_types(folded) == ["Conv", "Relu"]
    assert report.decisions[-1].node == "post_bn" and report.decisions[-1].into_op == "Conv"


@pytest.mark.parametrize("specs, identity, group", [
    (({"kernel": 3, "stride": 2}, {"kernel": 1, "stride": 2, "pads": [0] * 4}), None, 1),  # RepVGG downsampling
    (({"kernel": 3, "group": 2}, {"kernel": 1, "group": 4}), "bn", 2),  # groups dividing each other
    (({"kernel": 3, "dilation": 2, "pads": [2] * 4}, {"kernel": 1}), "bn", 1),
    (({"kernel": 3, "c_out": 12}, {"kernel": 1, "c_out": 12}), None, 1),  # channels change, no identity
])
def test_strides_groups_dilations_and_channel_changes(specs, identity, group):
    folded, _ = merged_model(fixtures.branch_block(specs, identity=identity))
    assert op_types(folded) == ["Conv", "Relu"]
    conv = folded.graph.node[0]
    assert helper.get_attribute_value(next(a for a in conv.attribute if a.name == "group")) == group


def test_auto_pad_same_branches_merge():
    model = fixtures.branch_block(identity="bn")
    for node in model.graph.node:
        if node.op_type == "Conv":
            del node.attribute[:]
            node.attribute.append(helper.make_attribute("auto_pad", "SAME_UPPER"))
    folded, _ = merged_model(model)
    assert op_types(folded) == ["Conv", "Relu"]


@pytest.mark.parametrize("builder, reason", [
    (fixtures.refuse_branch_stride, "branches have strides [[1, 1], [2, 2]]"),
    (fixtures.refuse_branch_padding, "branch windows do not line up on spatial axis 0"),
])
def test_mismatched_geometry_is_refused_with_the_reason(builder, reason):
    model = builder()
    folded, report = fold_and_compare(model, expect_folded=2)
    assert op_types(folded) == ["Conv", "Conv", "Add", "Relu"]
    (merge,) = report.merges
    assert not merge.merged and merge.reason.startswith(reason)
    assert f"kept   block_add0 -> 'block_add0': {reason}" in report.render()


def test_a_conv_read_elsewhere_is_no_branch():
    """The 1x1 Conv's output is also a graph output: it is the source of nothing merged, and stays."""
    model = fixtures.repvgg_block()
    model.graph.output.append(helper.make_tensor_value_info("block_b1_bn", onnx.TensorProto.FLOAT, None))
    folded, report = fold_and_compare(model, check=False)
    assert report.merges == [] and op_types(folded).count("Conv") == 2


def test_a_conv_before_the_shared_tensor_is_not_taken_for_a_branch():
    """RepGhost: x1 = Conv+BN, read by a depthwise Conv+BN and by an identity BN that are summed. The identity BN
    cannot fold into the first Conv (x1 has other readers) and stays; the sum merges it as x1's identity branch."""
    rng = np.random.default_rng(0)
    nodes, initializers = [], []
    x1 = fixtures._conv_bn_layer(nodes, initializers, rng, "x", "primary", 4, 8, relu=False)
    total = fixtures._branch_block(nodes, initializers, rng, x1, "cheap", 8, [{"kernel": 3, "group": 8}])
    nodes.append(helper.make_node("Concat", [x1, total], ["y"], name="concat", axis=1))
    x = helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, ["N", 4, 6, 6])
    y = helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, ["N", 16, 6, 6])
    folded, report = merged_model(fixtures.make_model(nodes, [x], [y], initializers))
    assert op_types(folded) == ["Conv", "Conv", "Concat"]
    assert report.merges[0].branches == ["Conv 'cheap_b0_conv'", "identity through BatchNormalization 'cheap_id'"]
    (identity,) = [d for d in report.decisions if d.node == "cheap_id"]
    assert identity.folded and identity.rule == "merge_branches" and report.kept == []


def residual_block():
    """x -> Conv+BN -> Relu -> Conv+BN, plus x: a ResNet basic block, whose second Conv does not read x."""
    rng = np.random.default_rng(0)
    nodes, initializers = [], []
    out = fixtures._conv_bn_layer(nodes, initializers, rng, "x", "c1", 8, 8)
    out = fixtures._conv_bn_layer(nodes, initializers, rng, out, "c2", 8, 8, relu=False)
    nodes.append(helper.make_node("Add", [out, "x"], ["y"], name="residual"))
    x = helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, ["N", 8, 6, 6])
    y = helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, ["N", 8, 6, 6])
    return fixtures.make_model(nodes, [x], [y], initializers)


def test_a_residual_add_is_no_candidate():
    folded, report = fold_and_compare(residual_block(), expect_folded=2)
    assert report.merges == [] and op_types(folded) == ["Conv", "Relu", "Conv", "Add"]


def test_skip_merge_branches_leaves_the_branches():
    folded, report = fold_and_compare(fixtures.repvgg_block(), skip="merge_branches")
    assert report.merges == [] and op_types(folded).count("Conv") == 2 and "Add" in op_types(folded)
    assert "merge_branches" in bnfold.rules.RULE_NAMES


def _with_shape_readers(model, names):
    """`model` with a Shape node reading each of `names`, its result a graph output."""
    for name in names:
        model.graph.node.append(helper.make_node("Shape", [name], [f"shape_{name}"], name=f"shape_of_{name}"))
        model.graph.output.append(helper.make_tensor_value_info(f"shape_{name}", onnx.TensorProto.INT64, [4]))
    return model


# A Conv branch merged away (b1), a step of the identity branch (id), the Conv the merge keeps (b0), the first sum.
SHAPE_READ = ("block_b1_conv", "block_id", "block_b0_conv", "block_add0")


def test_a_shape_node_reading_a_merged_away_branch_reads_the_merged_output():
    """Issue 22 item 4: the Shape was left reading a removed tensor (an invalid model). Every branch tensor has
    the sum's shape, so the Shape reads the merged output instead; the model is valid and computes the same."""
    model = _with_shape_readers(fixtures.repvgg_block(), SHAPE_READ)
    for local_check in (True, False):
        folded, report = merged_model(model, local_check=local_check) if local_check else \
            fold_and_compare(model, local_check=False)
        assert all(merge.merged for merge in report.merges)
        assert op_types(folded) == ["Conv", "Relu"] + ["Shape"] * len(SHAPE_READ)
        assert {node.input[0] for node in folded.graph.node if node.op_type == "Shape"} == {"block_add1"}


def test_shape_readers_of_merged_branches_through_graphsurgeon():
    gs = pytest.importorskip("onnx_graphsurgeon")
    from support import assert_same_outputs

    model = _with_shape_readers(fixtures.repvgg_block(), SHAPE_READ)
    folded, report = bnfold.fold(gs.import_onnx(model))
    exported = gs.export_onnx(folded)
    onnx.checker.check_model(exported, full_check=True)
    assert all(merge.merged for merge in report.merges)
    assert_same_outputs(model, exported)


@pytest.mark.parametrize("verify", [False, True])
def test_shape_readers_of_merged_branches_from_the_command_line(tmp_path, verify):
    from click.testing import CliRunner

    from bnfold.cli import cli
    from support import assert_same_outputs

    model = _with_shape_readers(fixtures.repvgg_block(), SHAPE_READ)
    onnx.save(model, tmp_path / "in.onnx")
    result = CliRunner().invoke(cli, [str(tmp_path / "in.onnx"), "-o", str(tmp_path / "out.onnx")]
                                + ([] if verify else ["--no-verify"]))
    assert result.exit_code == 0, result.output
    folded = onnx.load(tmp_path / "out.onnx")
    onnx.checker.check_model(folded, full_check=True)
    assert op_types(folded) == ["Conv", "Relu"] + ["Shape"] * len(SHAPE_READ)
    assert_same_outputs(model, folded)
