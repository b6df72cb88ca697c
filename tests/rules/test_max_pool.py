"""MaxPool, GlobalMaxPool and ReduceMax in the chain walk (one look-through entry each): the max of x * s + t is the
max of x, times s, plus t for any per-channel shift and any scale >= 0, so a BN whose gammas are all >= 0 folds
through them (forward: Conv -> MaxPool -> BN; backward: BN -> MaxPool -> Conv); a negative scale turns the max into a
min, so a BN with a negative gamma is kept with the reason. Each fold runs in ONNX Runtime against the original."""

import numpy as np
import onnx
import pytest
from click.testing import CliRunner
from onnx import TensorProto, helper, numpy_helper

import bnfold
from bnfold.cli import cli
from bnfold.rules.look_through import BOTH, MaxPool
from models.fixtures import bn_node, bn_parameters, make_model
from support import assert_same_outputs, fold_and_compare, op_types

C, K = 6, 4
POOLS = {
    "k3s2p1": {"kernel_shape": [3, 3], "strides": [2, 2], "pads": [1, 1, 1, 1]},
    "ceil_mode": {"kernel_shape": [3, 3], "strides": [2, 2], "pads": [1, 1, 1, 1], "ceil_mode": 1},
    "dilations": {"kernel_shape": [3, 3], "dilations": [2, 2], "pads": [2, 1, 2, 1]},
    "same_upper": {"kernel_shape": [2, 2], "auto_pad": "SAME_UPPER"},
    "unpadded": {"kernel_shape": [2, 2], "strides": [2, 2]},
}
NEGATIVE = ("MaxPool 'pool' commutes with a per-channel scale only where it is >= 0 (a negative scale turns its max "
            "into a min), and the scale moved across it is negative in {} of 6 channels")


def _gammas(rng, signs):
    """BN parameters with gammas of the given signs: '+' all positive, '-' one negative, '0' one zero."""
    parameters = bn_parameters(C, rng, "bn")
    gamma = np.abs(numpy_helper.to_array(parameters[0]))
    gamma[2] = {"+": gamma[2], "-": -gamma[2], "0": 0.0}[signs]
    parameters[0] = numpy_helper.from_array(gamma, "bn_scale")
    return parameters


def _value(name, dims, dtype=TensorProto.FLOAT):
    return helper.make_tensor_value_info(name, dtype, dims)


def _pool(source, output, *, op="MaxPool", indices=None, **attributes):
    outputs = [output] + ([indices] if indices else [])
    return helper.make_node(op, [source], outputs, name="pool", **attributes)


def conv_pool_bn(*, signs="+", indices=None, read_indices=False, op="MaxPool", seed=0, **pool):
    """x [N, 4, 9, 9] -> Conv 3x3 (padded) -> MaxPool(**pool) -> BN -> y (folds forward, into the Conv)."""
    rng = np.random.default_rng(seed)
    initializers = [numpy_helper.from_array(rng.normal(0, 0.5, (C, 4, 3, 3)).astype(np.float32), "W")]
    initializers += _gammas(rng, signs)
    nodes = [helper.make_node("Conv", ["x", "W"], ["c"], name="conv", pads=[1] * 4),
             _pool("c", "p", op=op, indices=indices, **pool), bn_node("p", "y", "bn")]
    outputs = [_value("y", ["N", "c", "h", "w"])]
    if read_indices:
        outputs.append(_value(indices, ["N", "c", "h", "w"], TensorProto.INT64))
    return make_model(nodes, [_value("x", ["N", 4, 9, 9])], outputs, initializers)


def bn_pool_conv(*, signs="+", kernel=1, op="MaxPool", seed=1, **pool):
    """x [N, 6, 9, 9] -> BN -> MaxPool(**pool) -> Conv kernel x kernel (unpadded) -> y (folds backward)."""
    rng = np.random.default_rng(seed)
    initializers = _gammas(rng, signs) + [
        numpy_helper.from_array(rng.normal(0, 0.5, (K, C, kernel, kernel)).astype(np.float32), "W"),
        numpy_helper.from_array(rng.normal(0, 0.5, K).astype(np.float32), "B")]
    nodes = [bn_node("x", "b", "bn"), _pool("b", "p", op=op, **pool),
             helper.make_node("Conv", ["p", "W", "B"], ["y"], name="conv")]
    return make_model(nodes, [_value("x", ["N", C, 9, 9])], [_value("y", ["N", "k", "h", "w"])], initializers)


def _locally_checked(report, method="float64"):
    """Every fold passed the default local check, run by `method`: float64 for a forward fold; a backward fold's
    after side (the pool feeding the Conv) reads no independent probes, which the float64 bound needs, so ONNX
    Runtime runs that piece (as for AveragePool)."""
    assert report.local_check["failed"] == 0 and report.local_check["methods"] == {method: report.folded_count}
    assert all(d.local_error is not None for d in report.decisions if d.folded)


@pytest.mark.parametrize("pool", POOLS.values(), ids=POOLS)
def test_conv_max_pool_bn_folds_forward_when_every_gamma_is_positive(pool):
    folded, report = fold_and_compare(conv_pool_bn(**pool), expect_folded=1)
    assert op_types(folded) == ["Conv", "MaxPool"] and report.decisions[0].through == ["MaxPool"]
    assert report.decisions[0].rule == "forward"
    _locally_checked(report)


@pytest.mark.parametrize("kernel", [1, 3])
@pytest.mark.parametrize("pool", [POOLS["k3s2p1"], POOLS["ceil_mode"], POOLS["dilations"]], ids=str)
def test_bn_max_pool_conv_folds_backward_when_every_gamma_is_positive(pool, kernel):
    folded, report = fold_and_compare(bn_pool_conv(kernel=kernel, **pool), expect_folded=1)
    assert op_types(folded) == ["MaxPool", "Conv"] and report.decisions[0].rule == "backward"
    _locally_checked(report, "ORT float32")


def test_a_zero_gamma_is_a_scale_of_zero_which_crosses():
    for model in (conv_pool_bn(signs="0", **POOLS["k3s2p1"]), bn_pool_conv(signs="0", **POOLS["k3s2p1"])):
        fold_and_compare(model, expect_folded=1)


@pytest.mark.parametrize("build", [conv_pool_bn, bn_pool_conv])
def test_a_negative_gamma_keeps_the_bn_unchanged_and_says_why(build):
    model = build(signs="-", **POOLS["k3s2p1"])
    folded, report = bnfold.fold(model)
    assert report.folded_count == 0
    assert NEGATIVE.format(1) in report.decisions[0].reason, report.decisions[0].reason
    assert folded.SerializeToString() == model.SerializeToString()


def test_a_step_before_the_bn_composes_with_it_before_the_sign_is_judged():
    """Conv -> MaxPool -> Neg -> BN: the map crossing the MaxPool is -1 times the BN's, so the BN folds when all its
    gammas are negative (the Neg goes too) and is kept when all are positive."""
    for signs, folds in ((-1.0, True), (1.0, False)):
        model = conv_pool_bn(**POOLS["k3s2p1"])
        gamma = next(t for t in model.graph.initializer if t.name == "bn_scale")
        gamma.CopyFrom(numpy_helper.from_array(signs * np.abs(numpy_helper.to_array(gamma)), "bn_scale"))
        model.graph.node[2].input[0] = "n"
        model.graph.node.insert(2, helper.make_node("Neg", ["p"], ["n"], name="neg"))
        folded, report = fold_and_compare(model, expect_folded=int(folds))
        if folds:
            assert op_types(folded) == ["Conv", "MaxPool"] and report.decisions[0].through == ["MaxPool", "Neg"]
        else:
            assert NEGATIVE.format(C) in report.decisions[0].reason


def test_a_read_indices_output_stops_the_walk():
    model = conv_pool_bn(indices="idx", read_indices=True, **POOLS["k3s2p1"])
    folded, report = bnfold.fold(model)
    assert report.folded_count == 0
    assert "MaxPool node 'pool' (its Indices output 'idx' is read, and a map moved across it may change which " \
           "element is a window's max)" in report.decisions[0].reason, report.decisions[0].reason
    assert folded.SerializeToString() == model.SerializeToString()


def test_a_read_indices_output_stops_the_walk_down_too():
    model = bn_pool_conv(**POOLS["k3s2p1"])
    model.graph.node[1].output.append("idx")
    model.graph.output.append(_value("idx", None, TensorProto.INT64))
    folded, report = bnfold.fold(model)
    assert report.folded_count == 0 and folded.SerializeToString() == model.SerializeToString()
    assert "its output goes to MaxPool node 'pool' (its Indices output 'idx' is read" in report.decisions[0].reason


@pytest.mark.parametrize("sign", [1.0, -1.0])
def test_a_decomposed_bn_after_max_pool_folds_when_its_scale_is_not_negative(sign):
    """Conv -> MaxPool -> Mul -> Add (a FrozenBatchNorm2d): the decomposed rule moves the Mul's scale across the
    MaxPool on the same terms."""
    rng = np.random.default_rng(3)
    scale = rng.uniform(0.5, 2, (1, C, 1, 1)).astype(np.float32)
    scale[0, 2] *= sign
    initializers = [numpy_helper.from_array(rng.normal(0, 0.5, (C, 4, 3, 3)).astype(np.float32), "W"),
                    numpy_helper.from_array(scale, "m"),
                    numpy_helper.from_array(rng.normal(0, 1, (1, C, 1, 1)).astype(np.float32), "a")]
    nodes = [helper.make_node("Conv", ["x", "W"], ["c"], name="conv", pads=[1] * 4),
             _pool("c", "p", **POOLS["k3s2p1"]), helper.make_node("Mul", ["p", "m"], ["q"], name="mul"),
             helper.make_node("Add", ["q", "a"], ["y"], name="add")]
    model = make_model(nodes, [_value("x", ["N", 4, 9, 9])], [_value("y", ["N", C, 5, 5])], initializers)
    folded, report = fold_and_compare(model, expect_folded=int(sign > 0))
    if sign > 0:
        assert op_types(folded) == ["Conv", "MaxPool"]
    else:
        assert report.decomposed[0].reason.startswith(NEGATIVE.format(1))
        assert folded.SerializeToString() == model.SerializeToString()


@pytest.mark.parametrize("signs", ["+", "-"])
def test_a_summed_branch_through_max_pool_takes_the_bn_on_the_same_terms(signs):
    """BN(MaxPool(Conv a(x)) + Conv b(x)), rule sum_forward: the BN's scale crosses the MaxPool of branch a."""
    rng = np.random.default_rng(4)
    initializers = [numpy_helper.from_array(rng.normal(0, 0.5, (C, 4, 3, 3)).astype(np.float32), "Wa"),
                    numpy_helper.from_array(rng.normal(0, 0.5, (C, 4, 1, 1)).astype(np.float32), "Wb"),
                    numpy_helper.from_array(rng.normal(0, 0.5, C).astype(np.float32), "Bb")] + _gammas(rng, signs)
    nodes = [helper.make_node("Conv", ["x", "Wa"], ["ca"], name="conv_a", pads=[1] * 4),
             _pool("ca", "p", kernel_shape=[3, 3], pads=[1, 1, 1, 1]),
             helper.make_node("Conv", ["x", "Wb", "Bb"], ["cb"], name="conv_b"),
             helper.make_node("Add", ["p", "cb"], ["s"], name="add"), bn_node("s", "y", "bn")]
    model = make_model(nodes, [_value("x", ["N", 4, 9, 9])], [_value("y", ["N", C, 9, 9])], initializers)
    folded, report = fold_and_compare(model, expect_folded=int(signs == "+"))
    if signs == "+":
        assert op_types(folded) == ["Conv", "MaxPool", "Conv", "Add"] and report.decisions[0].rule == "sum_forward"
    else:
        assert report.decisions[0].reason.startswith(NEGATIVE.format(1))


def test_an_unread_indices_output_is_no_reader():
    folded, _ = fold_and_compare(conv_pool_bn(indices="idx", **POOLS["k3s2p1"]), expect_folded=1)
    assert op_types(folded) == ["Conv", "MaxPool"]


def test_global_max_pool_folds_both_ways_and_refuses_a_negative_gamma():
    fold_and_compare(conv_pool_bn(op="GlobalMaxPool"), expect_folded=1)
    folded, report = fold_and_compare(bn_pool_conv(op="GlobalMaxPool"), expect_folded=1)
    assert op_types(folded) == ["GlobalMaxPool", "Conv"]
    _locally_checked(report, "ORT float32")
    model = conv_pool_bn(op="GlobalMaxPool", signs="-")
    folded, report = bnfold.fold(model)
    assert report.folded_count == 0 and "GlobalMaxPool 'pool' commutes with a per-channel scale only where it is " \
                                       ">= 0" in report.decisions[0].reason
    assert folded.SerializeToString() == model.SerializeToString()


def _conv_reduce_max_bn(axes, keepdims, opset, signs="+"):
    """x -> Conv 3x3 -> ReduceMax(axes, keepdims) -> BN -> y; opset 18 passes the axes as an input."""
    rng = np.random.default_rng(2)
    initializers = [numpy_helper.from_array(rng.normal(0, 0.5, (C, 4, 3, 3)).astype(np.float32), "W")]
    initializers += _gammas(rng, signs)
    if opset >= 18:
        initializers.append(numpy_helper.from_array(np.array(axes, np.int64), "axes"))
        reduce = helper.make_node("ReduceMax", ["c", "axes"], ["r"], name="pool", keepdims=keepdims)
    else:
        reduce = helper.make_node("ReduceMax", ["c"], ["r"], name="pool", axes=axes, keepdims=keepdims)
    nodes = [helper.make_node("Conv", ["x", "W"], ["c"], name="conv", pads=[1] * 4), reduce, bn_node("r", "y", "bn")]
    return make_model(nodes, [_value("x", ["N", 4, 9, 9])], [_value("y", None)], initializers, opset=opset)


@pytest.mark.parametrize("opset", [13, 18])
@pytest.mark.parametrize("axes, keepdims", [([2, 3], 1), ([3], 1), ([-1, -2], 0)])
def test_reduce_max_over_spatial_axes_folds_forward(axes, keepdims, opset):
    model = _conv_reduce_max_bn(axes, keepdims, opset)
    folded, report = fold_and_compare(model, expect_folded=1, check=False)
    assert op_types(folded) == ["Conv", "ReduceMax"]
    _locally_checked(report)


def test_reduce_max_over_the_channels_or_with_a_negative_gamma_is_refused():
    for model, why in ((_conv_reduce_max_bn([1, 2], 1, 18), "ReduceMax 'pool' reduces over the channel axis"),
                       (_conv_reduce_max_bn([2, 3], 1, 18, signs="-"), "ReduceMax 'pool' commutes with a per-channel "
                                                                       "scale only where it is >= 0")):
        folded, report = bnfold.fold(model)
        assert report.folded_count == 0 and why in report.decisions[0].reason, report.decisions[0].reason
        assert folded.SerializeToString() == model.SerializeToString()


@pytest.mark.parametrize("build", [conv_pool_bn, bn_pool_conv])
def test_a_wrong_fold_through_max_pool_fails_the_default_local_check(monkeypatch, build):
    """Were the entry to claim that a negative scale crosses, the fold would swap maxima for minima: the default
    local check (float64 forward, ONNX Runtime backward) catches it and the BN is kept."""
    monkeypatch.setattr(MaxPool, "commutes", lambda self, node, index: BOTH)
    model = build(signs="-", **POOLS["k3s2p1"])
    folded, report = bnfold.fold(model)
    assert report.folded_count == 0 and "local check failed" in report.decisions[0].reason
    assert_same_outputs(model, folded)


def test_fold_file_verifies_and_the_cli_exits_0(tmp_path):
    source = tmp_path / "m.onnx"
    onnx.save(conv_pool_bn(**POOLS["ceil_mode"]), source)
    report = bnfold.fold_file(source, tmp_path / "api.onnx")
    assert report.folded_count == 1 and report.verification.passed, report.verification.summary()
    _locally_checked(report)
    result = CliRunner().invoke(cli, [str(source), "-o", str(tmp_path / "cli.onnx")])
    assert result.exit_code == 0, result.output
    assert "BatchNormalization: 1 of 1 folded" in result.output and "PASSED" in result.output, result.output
    assert_same_outputs(onnx.load(source), onnx.load(tmp_path / "cli.onnx"))


@pytest.mark.slow
@pytest.mark.torch
def test_a_torch_conv_max_pool_bn_block_folds_and_matches_torch(tmp_path):
    torch = pytest.importorskip("torch")
    torch.manual_seed(0)
    block = torch.nn.Sequential(torch.nn.Conv2d(3, 8, 3, padding=1), torch.nn.MaxPool2d(3, 2, 1),
                                torch.nn.BatchNorm2d(8))
    with torch.no_grad():
        bn = block[2]
        bn.weight.copy_(torch.rand(8) + 0.1)
        bn.bias.copy_(torch.randn(8))
        bn.running_mean.copy_(torch.randn(8))
        bn.running_var.copy_(torch.rand(8) + 0.5)
    block.eval()
    x = torch.randn(2, 3, 17, 17)
    bnfold.export(block, (x,), tmp_path / "block.onnx", input_names=["x"], output_names=["y"], dynamic_batch=True)
    report = bnfold.fold_file(tmp_path / "block.onnx", tmp_path / "folded.onnx")
    assert report.folded_count == 1 and report.kept == [] and report.verification.passed
    assert report.decisions[0].through == ["MaxPool"]
    from bnfold.checking.run import run_model

    folded = onnx.load(tmp_path / "folded.onnx")
    assert "BatchNormalization" not in {node.op_type for node in folded.graph.node}
    (output,) = run_model(folded, {"x": x.numpy()}).values()
    with torch.no_grad():
        expected = block(x).numpy()
    np.testing.assert_allclose(output, expected, rtol=1e-4, atol=1e-4)
