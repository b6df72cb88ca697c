"""bnfold.verify: ONNX Runtime runs of two models compared output by output, and compare_outputs' numerics."""

import json

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from bnfold.errors import InputFileError, InvalidModelError, ModelLoadError, UsageError
from verify_models import conv_bn_model, conv_bn_parameters, folded_model, make_model, two_output_model, unary_model
from bnfold.checking.compare import compare_outputs
from bnfold.checking.tolerance import DEFAULT_TOLERANCES, default_tolerance
from bnfold.checking.end_to_end import verify
from bnfold.checking.result import VerifyResult
from bnfold.checking.run import run_model

@pytest.fixture(scope="module")
def params():
    return conv_bn_parameters()


def test_correct_fold_passes(params):
    result = verify(conv_bn_model(params), folded_model(params))
    assert result.passed, result.summary()
    (output,) = result.outputs
    assert output.name == "y" and output.mismatched == 0 and output.elements == 4 * 8 * 8
    assert output.max_abs_error < 1e-5 and output.cosine_similarity > 0.999999
    default_atol, default_rtol = DEFAULT_TOLERANCES["float32"]
    assert output.rtol == default_rtol and default_atol <= output.atol <= default_atol * 100
    assert result.summary().splitlines()[-1].startswith("PASSED")


def test_fold_with_one_weight_off_by_1e_3_fails_naming_the_output(params):
    result = verify(conv_bn_model(params), folded_model(params, perturb=1e-3))
    assert not result.passed
    assert result.failed_outputs == ["y"]
    assert result.outputs[0].mismatched > 0
    assert result.outputs[0].max_abs_error > 1e-4
    last_line = result.summary().splitlines()[-1]
    assert last_line.startswith("FAILED") and "y" in last_line


def test_paths_and_protos_are_both_accepted(params, tmp_path):
    reference_path = tmp_path / "model.onnx"
    onnx.save(conv_bn_model(params), reference_path)
    result = verify(str(reference_path), folded_model(params))
    assert result.passed
    assert result.reference_label == str(reference_path) and result.candidate_label == "candidate"


def test_two_outputs_only_the_changed_one_fails():
    result = verify(two_output_model(), two_output_model(aux_offset=0.01))
    assert not result.passed
    by_name = {output.name: output for output in result.outputs}
    assert by_name["logits"].passed and by_name["logits"].max_abs_error == 0
    assert not by_name["aux"].passed
    assert result.failed_outputs == ["aux"]


def test_per_output_tolerance_override_lets_the_changed_output_pass():
    result = verify(two_output_model(), two_output_model(aux_offset=0.01), atol={None: 1e-6, "aux": 0.1})
    assert result.passed, result.summary()
    by_name = {output.name: output for output in result.outputs}
    assert by_name["logits"].atol == 1e-6 and by_name["aux"].atol == 0.1
    assert by_name["aux"].rtol == DEFAULT_TOLERANCES["float32"][1]


def test_tolerance_naming_an_unknown_output_is_a_usage_error():
    with pytest.raises(UsageError, match="unknown output.*'logit'"):
        verify(two_output_model(), two_output_model(), atol={"logit": 1e-3})


def test_dynamic_batch_defaults_to_one(params):
    dims = ("N", 3, 8, 8)
    result = verify(conv_bn_model(params, input_dims=dims), folded_model(params, input_dims=dims))
    assert result.passed and result.outputs[0].shape == (1, 4, 8, 8)


def test_dynamic_batch_from_input_shapes(params):
    dims = ("N", 3, 8, 8)
    reference, candidate = conv_bn_model(params, input_dims=dims), folded_model(params, input_dims=dims)
    assert verify(reference, candidate, input_shapes={"x": (3, 3, 8, 8)}).outputs[0].shape == (3, 4, 8, 8)
    assert verify(reference, candidate, input_shapes=["x:2x3x8x8"]).outputs[0].shape == (2, 4, 8, 8)


def test_symbolic_non_batch_dims_are_chosen_and_reported(params):
    dims = ("N", 3, "H", "W")
    reference, candidate = conv_bn_model(params, input_dims=dims), folded_model(params, input_dims=dims)
    result = verify(reference, candidate)
    assert result.passed and result.input_shapes == {"x": (1, 3, 32, 32)}
    assert "H=32, W=32" in result.summary() and "input shapes: x 1x3x32x32" in result.summary()
    result = verify(reference, candidate, input_shapes=["x:1x3x5x7"])
    assert result.passed and result.outputs[0].shape == (1, 4, 5, 7)
    assert verify(reference, candidate, input_shapes="x:1x3x5x5").input_shapes == {"x": (1, 3, 5, 5)}


def test_a_dim_param_shared_by_two_inputs_gets_one_size():
    model = make_model(
        [helper.make_node("Add", ["a", "b"], ["y"])],
        [helper.make_tensor_value_info("a", TensorProto.FLOAT, ["N", "T"]),
         helper.make_tensor_value_info("b", TensorProto.FLOAT, ["N", "T"])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)],
    )
    assert verify(model, model, input_shapes=["a:1x7"]).input_shapes == {"a": (1, 7), "b": (1, 7)}
    assert verify(model, model).input_shapes == {"a": (1, 32), "b": (1, 32)}


def test_sizes_are_tried_until_the_original_runs():
    from models import fixtures

    model = fixtures.dynamic_detector()  # an FPN Add that needs H and W to be multiples of 64
    result = verify(model, model)
    assert result.passed and result.input_shapes == {"x": (1, 3, 64, 64)}
    assert "H=64, W=64 (32 did not run)" in result.summary()


def test_no_size_that_runs_raises_an_unresolved_shape_error_naming_the_option():
    from bnfold.errors import UnresolvedShapeError

    model = make_model(  # x must be 1x5 after a fixed Reshape: no trial size fits
        [helper.make_node("Reshape", ["x", "shape"], ["y"])],
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, "L"])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)],
        [numpy_helper.from_array(np.array([5], np.int64), "shape")],
    )
    with pytest.raises(UnresolvedShapeError, match=r"dynamic dim\(s\) L .*--input-shape x:1xL"):
        verify(model, model)
    assert verify(model, model, input_shapes="x:1x5").passed


def test_npz_inputs_are_used(tmp_path):
    # Relu and Abs agree exactly on non-negative data and nowhere else: a pass proves the file was used.
    data = tmp_path / "data.npz"
    np.savez(data, x=np.abs(np.random.default_rng(0).standard_normal((2, 5))).astype(np.float32))
    assert verify(unary_model("Relu"), unary_model("Abs"), input_files=[str(data)]).passed
    assert not verify(unary_model("Relu"), unary_model("Abs")).passed


def test_inputs_dict_and_npy_file(tmp_path):
    positive = np.full((2, 5), 2.0, dtype=np.float32)
    assert verify(unary_model("Relu"), unary_model("Abs"), inputs={"x": positive}).passed
    np.save(tmp_path / "x.npy", positive)
    assert verify(unary_model("Relu"), unary_model("Abs"), input_files=[f"x:{tmp_path / 'x.npy'}"]).passed


def test_input_data_of_wrong_shape_is_a_usage_error():
    with pytest.raises(UsageError, match="data for input .x. has shape 3x5, but the model declares 2x5"):
        verify(unary_model("Relu"), unary_model("Relu"), inputs={"x": np.zeros((3, 5), np.float32)})


def test_input_data_for_unknown_input_is_a_usage_error():
    with pytest.raises(UsageError, match="unknown input"):
        verify(unary_model("Relu"), unary_model("Relu"), inputs={"z": np.zeros((2, 5), np.float32)})


def test_several_runs_draw_different_inputs():
    result = verify(unary_model("Relu"), unary_model("Relu"), runs=3, seed=5)
    assert result.passed and result.runs == 3 and result.seed == 5
    assert result.outputs[0].elements == 3 * 10


def test_runs_collapse_to_one_when_every_input_is_given():
    result = verify(unary_model("Relu"), unary_model("Relu"), runs=4, inputs={"x": np.ones((2, 5), np.float32)})
    assert result.runs == 1 and result.seed is None


def test_random_inputs_match_each_input_dtype():
    model = make_model(
        [helper.make_node("Cast", ["half"], ["half_out"], to=TensorProto.FLOAT),
         helper.make_node("Add", ["count", "count"], ["count_out"]),
         helper.make_node("Not", ["mask"], ["mask_out"])],
        [helper.make_tensor_value_info("half", TensorProto.FLOAT16, [3]),
         helper.make_tensor_value_info("count", TensorProto.INT64, [4]),
         helper.make_tensor_value_info("mask", TensorProto.BOOL, [5])],
        [helper.make_tensor_value_info(name, element, None)
         for name, element in (("half_out", TensorProto.FLOAT), ("count_out", TensorProto.INT64),
                               ("mask_out", TensorProto.BOOL))],
    )
    result = verify(model, model)
    assert result.passed, result.summary()
    assert {o.name: (o.dtype, o.atol) for o in result.outputs} == {
        "half_out": ("float32", DEFAULT_TOLERANCES["float32"][0]),
        "count_out": ("int64", 0.0),
        "mask_out": ("bool", 0.0),
    }


def test_string_outputs_compare_exactly():
    labels = np.array(["cat", "dog"])
    assert compare_outputs({"label": labels}, {"label": labels.copy()}).passed
    differing = compare_outputs({"label": labels}, {"label": np.array(["cat", "cow"])})
    assert differing.outputs[0].mismatched == 1
    assert differing.merged(differing).outputs[0].mismatched == 2


def test_nan_in_the_same_places_is_equal_and_reported():
    # Log of the negative random inputs is NaN in both models.
    result = verify(unary_model("Log"), unary_model("Log"))
    output = result.outputs[0]
    assert result.passed and output.reference_nan > 0 and output.candidate_nan == output.reference_nan
    assert "NaN" in result.summary()


def test_nan_on_one_side_only_fails():
    result = verify(unary_model("Log"), make_model(
        [helper.make_node("Abs", ["x"], ["a"]), helper.make_node("Log", ["a"], ["y"])],
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, 5])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)],
    ))
    output = result.outputs[0]
    assert not result.passed
    assert output.nonfinite_mismatched == output.reference_nan > 0
    assert output.max_abs_error == float("inf")


def test_mismatched_output_names_fail_with_a_clear_message(params):
    result = verify(conv_bn_model(params), folded_model(params, output="y_folded"))
    assert not result.passed
    problems = {output.name: output.problem for output in result.outputs}
    assert problems["y"] == "missing from candidate (it has ['y_folded'] instead)"
    assert problems["y_folded"] == "only in candidate, not in reference"
    assert "missing from candidate" in result.summary()


def test_models_with_different_inputs_fail():
    other = make_model(
        [helper.make_node("Relu", ["input"], ["y"])],
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, [2, 5])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)],
    )
    result = verify(unary_model("Relu"), other)
    assert not result.passed and result.outputs == []
    assert "inputs differ" in result.problems[0]
    assert result.summary().splitlines()[-1].startswith("FAILED")


def test_float16_fold_passes_at_float16_defaults():
    params = conv_bn_parameters(seed=1)
    result = verify(conv_bn_model(params, np.float16), folded_model(params, np.float16))
    assert result.passed, result.summary()
    assert result.outputs[0].rtol == DEFAULT_TOLERANCES["float16"][1]
    assert not verify(conv_bn_model(params, np.float16), folded_model(params, np.float16, perturb=0.1)).passed


def test_unreadable_models_raise_typed_errors(tmp_path, params):
    with pytest.raises(InputFileError):
        verify(tmp_path / "missing.onnx", folded_model(params))
    garbage = tmp_path / "garbage.onnx"
    garbage.write_bytes(b"\x00not a model")
    with pytest.raises(ModelLoadError):
        verify(conv_bn_model(params), garbage)


def test_model_ort_cannot_load_names_which_side(params):
    broken = folded_model(params)
    broken.graph.node[0].op_type = "NoSuchOp"
    with pytest.raises(InvalidModelError, match="^candidate: ONNX Runtime"):
        verify(conv_bn_model(params), broken)


def test_bad_options_are_usage_errors(params):
    with pytest.raises(UsageError, match="optimization level"):
        verify(conv_bn_model(params), folded_model(params), ort_opt_level="max")
    with pytest.raises(UsageError, match="runs"):
        verify(conv_bn_model(params), folded_model(params), runs=0)
    with pytest.raises(UsageError, match="non-negative"):
        verify(conv_bn_model(params), folded_model(params), rtol=-1.0)


def test_run_model_returns_outputs_by_name():
    outputs = run_model(two_output_model(), {"x": np.ones((2, 6), np.float32)})
    assert list(outputs) == ["logits", "aux"] and outputs["aux"].shape == (2, 2)


# compare_outputs: pure numpy


def test_metrics_and_minimum_tolerances():
    reference = {"y": np.array([1.0, -2.0, 0.0, 4.0], np.float32)}
    candidate = {"y": np.array([1.0, -2.1, 0.0, 4.2], np.float32)}
    output = compare_outputs(reference, candidate, atol=0.05, rtol=0.01).outputs[0]
    errors = np.abs(candidate["y"].astype(np.float64) - reference["y"])
    assert output.max_abs_error == pytest.approx(0.2, rel=1e-6)
    assert output.mean_abs_error == pytest.approx(errors.mean())
    assert output.max_rel_error == pytest.approx(0.05, rel=1e-5)
    assert output.mismatched == 2
    # The smallest atol that passes with rtol 0.01, and the smallest rtol that passes with atol 0.05.
    assert output.min_atol == pytest.approx(max(errors - 0.01 * np.abs(reference["y"])))
    assert output.min_rtol == pytest.approx(max((errors[1:2] - 0.05) / 2.0, (errors[3] - 0.05) / 4.0), rel=1e-5)
    assert compare_outputs(reference, candidate, atol=output.min_atol * 1.0001, rtol=0.01).passed
    assert compare_outputs(reference, candidate, atol=0.05, rtol=output.min_rtol * 1.0001).passed


def test_min_rtol_is_infinite_when_a_zero_reference_differs():
    output = compare_outputs({"y": np.array([0.0, 1.0])}, {"y": np.array([0.5, 1.0])}, atol=0.0, rtol=0.0).outputs[0]
    assert output.min_rtol == float("inf") and output.min_atol == 0.5


def test_cosine_similarity():
    a = np.array([1.0, 0.0])
    assert compare_outputs({"y": a}, {"y": np.array([0.0, 1.0])}).outputs[0].cosine_similarity == pytest.approx(0.0)
    assert compare_outputs({"y": a}, {"y": 3 * a}).outputs[0].cosine_similarity == pytest.approx(1.0)
    zeros = np.zeros(3)
    assert compare_outputs({"y": zeros}, {"y": zeros}).outputs[0].cosine_similarity == 1.0


def test_nan_and_inf_positions():
    reference = np.array([np.nan, np.inf, -np.inf, 1.0])
    same = compare_outputs({"y": reference}, {"y": reference.copy()}).outputs[0]
    assert same.passed and same.reference_nan == 1 and same.reference_inf == 2 and same.compared_elements == 1
    flipped = compare_outputs({"y": reference}, {"y": np.array([np.nan, -np.inf, -np.inf, 1.0])}).outputs[0]
    assert not flipped.passed and flipped.nonfinite_mismatched == 1
    new_nan = compare_outputs({"y": np.ones(3)}, {"y": np.array([1.0, np.nan, 1.0])}).outputs[0]
    assert not new_nan.passed and new_nan.candidate_nan == 1 and new_nan.reference_nan == 0


def test_shape_and_dtype_mismatches():
    result = compare_outputs(
        {"a": np.zeros((2, 3), np.float32), "b": np.zeros(3, np.float32)},
        {"a": np.zeros((3, 2), np.float32), "b": np.zeros(3, np.float64)},
    )
    problems = {output.name: output.problem for output in result.outputs}
    assert problems == {"a": "shape differs: reference 2x3, candidate 3x2",
                        "b": "dtype differs: reference float32, candidate float64"}
    assert not result.passed and result.failed_outputs == ["a", "b"]


def test_integer_and_bool_outputs_must_match_exactly():
    assert default_tolerance(np.int64) == (0.0, 0.0) and default_tolerance(np.bool_) == (0.0, 0.0)
    assert compare_outputs({"k": np.array([1, 2])}, {"k": np.array([1, 2])}).passed
    assert not compare_outputs({"k": np.array([1, 2])}, {"k": np.array([1, 3])}).passed
    assert not compare_outputs({"m": np.array([True])}, {"m": np.array([False])}).passed


def test_dtype_aware_defaults():
    assert default_tolerance(np.float16)[0] > default_tolerance(np.float32)[0] > default_tolerance(np.float64)[0]
    import ml_dtypes

    assert default_tolerance(np.dtype(ml_dtypes.bfloat16)) == DEFAULT_TOLERANCES["bfloat16"]
    # A float16 difference the float32 defaults would reject passes at float16's defaults.
    reference = np.array([1.0, 2.0], np.float16)
    candidate = np.array([1.001, 2.0], np.float16)
    assert compare_outputs({"y": reference}, {"y": candidate}).passed
    assert not compare_outputs({"y": reference.astype(np.float32)}, {"y": candidate.astype(np.float32)}).passed


def test_labels_and_dict_are_json_ready():
    result = compare_outputs(
        {"y": np.array([1.0, np.nan])}, {"y": np.array([1.0, 2.0])},
        reference_label="torch", candidate_label="onnx",
    )
    data = json.loads(json.dumps(result.to_dict(), allow_nan=False))
    assert data["passed"] is False and data["reference"] == "torch" and data["candidate"] == "onnx"
    assert data["outputs"][0]["max_abs_error"] == "inf" and data["failed_outputs"] == ["y"]
    assert "onnx" in result.summary()


def test_runs_merge_worst_case():
    first = compare_outputs({"y": np.array([1.0, 2.0])}, {"y": np.array([1.0, 2.5])})
    second = compare_outputs({"y": np.array([1.0, 2.0])}, {"y": np.array([1.1, 2.0])})
    merged = first.merged(second)
    output = merged.outputs[0]
    assert isinstance(merged, VerifyResult) and merged.runs == 2
    assert output.elements == 4 and output.mismatched == 2
    assert output.max_abs_error == 0.5 and output.mean_abs_error == pytest.approx(0.6 / 4)


def test_default_atol_scales_with_the_output_peak_but_explicit_atol_does_not():
    reference = {"logits": np.array([12000.0, -3.0, 0.001], np.float32)}
    candidate = {"logits": np.array([12000.0, -3.0 + 4e-3, 0.001], np.float32)}  # rounding-sized at this peak
    scaled = compare_outputs(reference, candidate)
    assert scaled.passed and scaled.outputs[0].atol == pytest.approx(DEFAULT_TOLERANCES["float32"][0] * 12000.0)
    assert not compare_outputs(reference, candidate, atol=1e-4).passed
    wrong = {"logits": np.array([12000.0 * (1 + 1e-3), -3.0, 0.001], np.float32)}  # a 1e-3 relative error
    assert not compare_outputs(reference, wrong).passed
