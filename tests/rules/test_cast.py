"""Cast in the chain walk: looked through only when it gives back every value unchanged (the same type, or a wider
float type); a narrowing Cast rounds, so a per-channel map moved across it would change the result: a boundary.
The fold and `bnfold check` share the decision (check folds in memory)."""

import itertools

import ml_dtypes
import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

import bnfold
from bnfold.graph import GraphIndex, ModelScope, scope_types
from bnfold.rules.look_through import TABLE, exact_cast
from models.fixtures import bn_node, bn_parameters, make_model
from support import assert_same_outputs, op_types, run

FLOATS = {"float64": np.dtype(np.float64), "float32": np.dtype(np.float32), "float16": np.dtype(np.float16),
          "bfloat16": np.dtype(ml_dtypes.bfloat16)}
ONNX_TYPES = {"float64": TensorProto.DOUBLE, "float32": TensorProto.FLOAT, "float16": TensorProto.FLOAT16,
              "bfloat16": TensorProto.BFLOAT16}


def _every_value(dtype: np.dtype) -> np.ndarray:
    """Every bit pattern of a 16-bit float; for wider types its extremes (largest, smallest normal and subnormal,
    both signs) and 100 000 random bit patterns."""
    if dtype.itemsize == 2:
        return np.arange(1 << 16, dtype=np.uint16).view(dtype)
    info = ml_dtypes.finfo(dtype)
    extremes = np.array([info.max, info.tiny, info.smallest_subnormal, info.eps, 1 + info.eps], dtype=dtype)
    bits = np.random.default_rng(0).integers(0, 1 << (8 * dtype.itemsize), 100_000, dtype=np.uint64,
                                             endpoint=False)
    random = bits.astype(np.dtype(f"u{dtype.itemsize}")).view(dtype)
    return np.concatenate([extremes, -extremes, random])


@pytest.mark.parametrize("source,target", list(itertools.product(FLOATS, FLOATS)))
def test_a_cast_is_exact_exactly_when_every_value_survives_the_round_trip(source, target):
    """The walk's decision against the values themselves: cast every value to the target and back."""
    values = _every_value(FLOATS[source])
    with np.errstate(over="ignore", invalid="ignore"):
        back = values.astype(FLOATS[target]).astype(FLOATS[source])
        finite = np.isfinite(values.astype(np.float64))
    survives = bool(np.array_equal(back[finite].view(f"u{values.itemsize}"),
                                   values[finite].view(f"u{values.itemsize}")))
    assert exact_cast(FLOATS[source], FLOATS[target]) == survives
    # The table entry the walk reads says the same: a boundary exactly when some value does not survive.
    model = make_model([helper.make_node("Cast", ["x"], ["y"], name="cast", to=ONNX_TYPES[target])],
                       [helper.make_tensor_value_info("x", ONNX_TYPES[source], [4])],
                       [helper.make_tensor_value_info("y", ONNX_TYPES[target], [4])])
    index = GraphIndex(model.graph, model=ModelScope(model, model_bytes=0), types=scope_types(model)[()])
    entry = TABLE["Cast"]
    why = entry.boundary(index.nodes[0], index)
    assert (why is None) == survives, why
    assert survives or why == f"it narrows {source} to {target}, rounding values a map moved across it would not see"
    assert entry.commutes(index.nodes[0], index) == type(entry.commutes(index.nodes[0], index))(scale=True, shift=True)


def _conv_casts_bn(casts, *, dtype=TensorProto.FLOAT, bn_dtype=None, seed=0, scale=1.0) -> onnx.ModelProto:
    """x -> Conv (3x3, padded) -> Cast(to) for each of `casts` -> BN -> y."""
    rng = np.random.default_rng(seed)
    np_dtype = helper.tensor_dtype_to_np_dtype(dtype)
    bn_dtype = bn_dtype or (casts[-1] if casts else dtype)
    initializers = [numpy_helper.from_array((rng.normal(0, 0.5, (6, 4, 3, 3)) * scale).astype(np_dtype), "W")]
    initializers += bn_parameters(6, rng, "bn", dtype=helper.tensor_dtype_to_np_dtype(bn_dtype))
    nodes = [helper.make_node("Conv", ["x", "W"], ["c"], name="conv", pads=[1, 1, 1, 1])]
    current = "c"
    for number, to in enumerate(casts):
        nodes.append(helper.make_node("Cast", [current], [f"cast{number}"], name=f"cast{number}", to=to))
        current = f"cast{number}"
    nodes.append(bn_node(current, "y", "bn"))
    return make_model(nodes, [helper.make_tensor_value_info("x", dtype, ["N", 4, 7, 7])],
                      [helper.make_tensor_value_info("y", bn_dtype, ["N", 6, 7, 7])], initializers)


@pytest.mark.parametrize("local_check", [True, False])
def test_a_float16_round_trip_is_a_boundary_the_fold_does_not_cross(local_check):
    """Conv -> Cast(float16) -> Cast(float32) -> BN: moving the BN into the Conv would round its result to float16
    instead of the Conv's output (and overflow to inf where the Conv's output does not)."""
    model = _conv_casts_bn([TensorProto.FLOAT16, TensorProto.FLOAT])
    folded, report = bnfold.fold(model, local_check=local_check)
    onnx.checker.check_model(folded, full_check=True)
    [decision] = report.decisions
    assert not decision.folded
    assert "narrows float32 to float16" in decision.reason and "cast0" in decision.reason
    assert op_types(folded) == op_types(model)
    assert_same_outputs(model, folded, rtol=0)


def test_check_and_fold_agree_on_a_narrowing_round_trip(tmp_path):
    path = tmp_path / "round_trip.onnx"
    onnx.save(_conv_casts_bn([TensorProto.FLOAT16, TensorProto.FLOAT]), path)
    result = bnfold.check(str(path))
    # Not foldable into weights: the walk stops at the Cast, so only --standalone's Mul + Add could replace it.
    assert (len(result.foldable), len(result.standalone), len(result.kept)) == (0, 1, 0)
    assert "narrows float32 to float16" in result.standalone[0].reason
    report = bnfold.fold_file(path, tmp_path / "out.onnx", verify=False)
    assert report.folded_count == 0 and report.decisions[0].reason == result.standalone[0].reason


@pytest.mark.parametrize("to", [TensorProto.BFLOAT16, TensorProto.INT32])
def test_other_narrowing_casts_are_boundaries(to):
    """float32 -> bfloat16 -> float32 keeps the range but not the mantissa; a cast to an integer type rounds."""
    model = _conv_casts_bn([to, TensorProto.FLOAT])
    folded, report = bnfold.fold(model)
    assert report.folded_count == 0
    assert "narrows float32 to bfloat16" in report.decisions[0].reason if to == TensorProto.BFLOAT16 else \
        "not float to float" in report.decisions[0].reason
    assert_same_outputs(model, folded, rtol=0)


def test_a_narrowing_cast_of_a_large_output_would_have_overflowed():
    """The case the issue measured: the Conv's output exceeds float16's range, the BN scales it back; folding across
    the round trip would give inf where the original is finite. The fold keeps the BN, so both stay finite."""
    model = _conv_casts_bn([TensorProto.FLOAT16, TensorProto.FLOAT], scale=2e4)
    for tensor in model.graph.initializer:
        if tensor.name == "bn_var":
            tensor.CopyFrom(numpy_helper.from_array(np.full(6, 1e10, np.float32), "bn_var"))
    folded, report = bnfold.fold(model, local_check=False)
    assert report.folded_count == 0
    feeds = {"x": np.random.default_rng(1).normal(0, 1, (2, 4, 7, 7)).astype(np.float32)}
    assert np.array_equal(run(folded, feeds)["y"], run(model, feeds)["y"])


@pytest.mark.parametrize("source,casts,rtol", [
    (TensorProto.FLOAT16, [TensorProto.FLOAT], 2e-3),
    (TensorProto.FLOAT16, [TensorProto.FLOAT, TensorProto.DOUBLE], 2e-3),
    (TensorProto.FLOAT, [TensorProto.FLOAT], 2e-5),
    (TensorProto.FLOAT, [TensorProto.DOUBLE], 2e-6),
])
def test_a_widening_or_same_type_cast_is_looked_through(source, casts, rtol):
    """The Conv absorbs the BN in its own dtype; the Cast after it stays and widens the folded values, which carry
    the rounding of the Conv's weight dtype (the tolerance), as any fold into those weights does. Without the local
    check: it judges a fold at the output's dtype, and float16 weights feeding a float32 BN do not reach that."""
    model = _conv_casts_bn(casts, dtype=source)
    folded, report = bnfold.fold(model, local_check=False)
    onnx.checker.check_model(folded, full_check=True)
    assert report.folded_count == 1 and report.decisions[0].through == ["Cast"] * len(casts)
    assert "BatchNormalization" not in op_types(folded)
    assert_same_outputs(model, folded, rtol=rtol)


def test_a_narrowing_cast_stops_the_backward_walk_too():
    """BN -> Cast(float16) -> Conv(float16): the Conv would scale its input before the rounding, not after."""
    rng = np.random.default_rng(0)
    initializers = bn_parameters(4, rng, "bn") + [
        numpy_helper.from_array(rng.normal(0, 0.5, (6, 4, 1, 1)).astype(np.float16), "W")]
    nodes = [bn_node("x", "b", "bn"), helper.make_node("Cast", ["b"], ["h"], name="half", to=TensorProto.FLOAT16),
             helper.make_node("Conv", ["h", "W"], ["y"], name="reader")]
    model = make_model(nodes, [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 4, 5, 5])],
                       [helper.make_tensor_value_info("y", TensorProto.FLOAT16, ["N", 6, 5, 5])], initializers)
    folded, report = bnfold.fold(model)
    assert report.folded_count == 0 and "nothing to fold it into" in report.decisions[0].reason
    assert "its output goes to Cast node 'half' (it narrows float32 to float16" in report.decisions[0].reason
    assert_same_outputs(model, folded, rtol=0)
