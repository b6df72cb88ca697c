"""The chain walk: look-through ops between a producer and its BN (or a BN and its readers) compose into one
per-channel map that the producer (or the readers) absorb, exactly; what may move elements between channels stops
the walk with a reason. Sizes of views are tracked symbolically (rules.views.Size)."""

import pytest

import bnfold
from bnfold.engine import VALIDATED_OPS
from bnfold.rules import chain
from bnfold.rules.views import Size
from bnfold.rules.producers import PRODUCERS, Producer
from models import fixtures
from support import fold_and_compare, op_types


@pytest.mark.parametrize("kind", fixtures.CHAIN_KINDS)
def test_a_forward_chain_folds_into_the_producer(kind):
    folded, report = fold_and_compare(fixtures.look_through_chain(kind), expect_folded=1)
    decision = report.decisions[0]
    assert decision.rule == "forward" and decision.into == "producer"
    assert not {"BatchNormalization", "Add", "Sub", "Mul", "Div"} & set(op_types(folded))
    assert decision.local_error is not None and decision.local_error < 1e-4


@pytest.mark.parametrize("kind", fixtures.CHAIN_KINDS)
def test_the_backward_mirror_folds_into_the_reader(kind):
    folded, report = fold_and_compare(fixtures.look_through_chain(kind, backward=True), expect_folded=1)
    decision = report.decisions[0]
    assert decision.rule == "backward" and decision.into == "reader"
    assert not {"BatchNormalization", "Add", "Sub", "Mul", "Div"} & set(op_types(folded))


def test_sizes_multiply_and_divide_symbolically():
    n, h = Size.unknown(), Size.unknown()
    total = n * Size(8) * h * Size(5)
    assert total.divided_by(n * Size(8)) == h * Size(5)
    assert total.divided_by(Size(16)) is None  # 40 * n * h / 16 is not provably a whole size
    assert Size(8) == 8 and not (h == 1)


def test_every_op_a_rule_reads_is_validated_and_every_producer_is_complete():
    """Adding a producer is one entry in the table: the engine validates its nodes, and the entry implements the
    whole interface (a missing method would raise NotImplementedError mid-fold)."""
    assert set(PRODUCERS) | set(chain.LOOK_THROUGH) <= VALIDATED_OPS
    for entry in PRODUCERS.values():
        for method in ("output_rank", "output_channels", "input_channels", "forward", "backward"):
            assert getattr(type(entry), method) is not getattr(Producer, method), (entry.op_type, method)


def test_a_reshape_with_dynamic_spatial_dims_is_proven_symbolically():
    """Reshape(x, [0, C, -1]) keeps every element in its channel whatever H and W are."""
    model = fixtures.conv_reshape_bn(target=(0, 8, -1))
    for axis in (2, 3):
        model.graph.input[0].type.tensor_type.shape.dim[axis].dim_param = f"S{axis}"
    del model.graph.value_info[:]
    folded, report = bnfold.fold(model)
    assert report.folded_count == 1, report.render()
    from support import assert_same_outputs

    assert_same_outputs(model, folded)


def test_token_matmul_through_a_batch_merging_reshape_folds_as_batchnorm1d():
    """LeViT's LinearNorm: MatMul on [B, N, C] tokens -> Reshape [B*N, C] -> BatchNorm1d -> Reshape back. The BN's
    channel is the MatMul's last axis; a Shape node reading the MatMul output reads no values."""
    folded, report = fold_and_compare(fixtures.token_linear_norm(), expect_folded=1)
    assert report.decisions[0].rule == "forward" and "BatchNormalization" not in op_types(folded)


def test_bn_before_global_pooling_and_flatten_folds_backward_into_the_head():
    """ConvMixer's head: BN -> GlobalAveragePool -> Flatten -> Gemm. Averaging commutes with a per-channel map."""
    folded, report = fold_and_compare(fixtures.bn_pool_linear_head(), expect_folded=1)
    assert report.decisions[0].rule == "backward" and op_types(folded) == ["GlobalAveragePool", "Flatten", "Gemm"]


def test_an_attention_block_without_bn_reports_no_bn():
    """(q @ k^T) * scale + bias has no BatchNormalization and no constant weight: nothing to report, nothing done."""
    model = fixtures.attention_without_bn()
    folded, report = bnfold.fold(model)
    assert report.decisions == [] and report.decomposed == [] and report.to_dict()["bn_total"] == 0
    assert "BatchNormalization: 0 of 0" in report.render()
    assert folded.SerializeToString() == model.SerializeToString()


def test_bn_after_a_channel_concat_of_convs_folds_a_slice_into_each():
    """timm's MixedConv2d (mixnet): no tool folds this BN; each Conv absorbs its own channels."""
    folded, report = fold_and_compare(fixtures.mixed_kernel_concat_bn(), expect_folded=1)
    assert op_types(folded) == ["Conv", "Conv", "Conv", "Concat"]
    assert report.decisions[0].into == "conv0, conv1, conv2"


def test_a_concat_with_an_input_no_conv_made_keeps_the_bn_with_the_reason():
    from onnx import helper

    model = fixtures.mixed_kernel_concat_bn()
    model.graph.node.insert(1, helper.make_node("Relu", ["c0"], ["r0"], name="relu"))
    model.graph.node[-2].input[0] = "r0"
    folded, report = bnfold.fold(model)
    assert report.folded_count == 0 and "comes from Relu node 'relu'" in report.kept[0].reason
    assert folded.SerializeToString() == model.SerializeToString()


@pytest.mark.parametrize("kind", fixtures.CHAIN_KINDS)
def test_the_fold_command_verifies_a_chain_fold_end_to_end(kind, tmp_path):
    """The views a fold keeps (Cast, Identity, Reshape) now carry the folded values: the end-to-end check leaves
    them out of its intermediates instead of failing a correct fold on them."""
    import onnx

    source = tmp_path / "model.onnx"
    onnx.save(fixtures.look_through_chain(kind), source)
    report = bnfold.fold_file(source, tmp_path / "folded.onnx")
    assert report.verification.passed, report.verification.summary()
    assert report.decisions[0].rewritten  # the producer's output and the kept views


@pytest.mark.parametrize("backward", [False, True])
@pytest.mark.parametrize("kind", fixtures.CHAIN_KINDS)
def test_shape_readers_of_every_chain_tensor_stay_valid(kind, backward):
    """A sibling of the branch-merge Shape defect: a Shape node reading any tensor a fold removes or renames reads
    a tensor of the same shape afterwards; the model stays valid and computes the same shapes and values."""
    from onnx import TensorProto, helper

    model = fixtures.look_through_chain(kind, backward=backward)
    for name in [output for node in model.graph.node for output in node.output if output != "y"]:
        model.graph.node.append(helper.make_node("Shape", [name], [f"shape_{name}"], name=f"shape_of_{name}"))
        model.graph.output.append(helper.make_tensor_value_info(f"shape_{name}", TensorProto.INT64, ["r"]))
    fold_and_compare(model, expect_folded=1)
