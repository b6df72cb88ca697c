"""The end-to-end check on models that are hard on it (models/check_fixtures.py): each correct fold folds and
verifies with no flags, and the wrong ones planted here still fail."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx
import pytest

import bnfold
from bnfold.checking import pair
from bnfold.checking.intermediates import shared_tensors
from bnfold.checking.noise import exact_values
from bnfold.checking.run import run_model
from models import check_fixtures

REPO = Path(__file__).resolve().parents[2]


def _runnable(model):
    """A copy whose graph inputs and outputs declare no size of 0 or below (ONNX Runtime would demand it)."""
    copy = onnx.ModelProto()
    copy.CopyFrom(model)
    for value in (*copy.graph.input, *copy.graph.output):
        for dim in value.type.tensor_type.shape.dim:
            if dim.HasField("dim_value") and dim.dim_value <= 0:
                dim.Clear()
    return copy


def _feeds(model, size=None):
    shape = [d.dim_value if d.dim_value > 0 else (1 if axis == 0 else size or 16)
             for axis, d in enumerate(model.graph.input[0].type.tensor_type.shape.dim)]
    return {model.graph.input[0].name: np.random.default_rng(3).standard_normal(shape).astype(np.float32)}


@pytest.mark.slow
@pytest.mark.parametrize("name", check_fixtures.ALL)
def test_each_hard_model_folds_and_verifies_with_no_flags(name, tmp_path):
    model = getattr(check_fixtures, name)()
    source, target = tmp_path / f"{name}.onnx", tmp_path / f"{name}.folded.onnx"
    onnx.save(model, source)
    completed = subprocess.run([sys.executable, "-m", "bnfold", str(source), "-o", str(target)], cwd=REPO,
                               capture_output=True, text=True)
    assert completed.returncode == 0, completed.stdout + completed.stderr
    assert "PASSED" in completed.stdout
    # The written model computes what the original computes, as far as the original's own arithmetic is from the
    # exact (float64) result, plus the rounding of folded weights to their dtype (float16: 2^-11 relative, grown
    # over four layers): measured here, independently of the check's tolerances.
    weight_rounding = 1e-2 if name == "float16_interior" else 1e-5
    feeds = _feeds(model, size=24)
    names = [value.name for value in model.graph.output]
    original, folded = run_model(_runnable(model), feeds), run_model(_runnable(onnx.load(target)), feeds)
    exact = exact_values(model, feeds, names)
    for output in names:
        own_error = np.abs(original[output].astype(np.float64) - exact[output]).max()
        peak = max(1.0, float(np.abs(exact[output]).max()))
        assert np.abs(folded[output].astype(np.float64) - exact[output]).max() <= \
            4 * own_error + weight_rounding * peak


@pytest.mark.slow
def test_a_planted_head_bias_error_fails_verify_with_no_flags(tmp_path):
    model = check_fixtures.db_head()
    folded, _ = bnfold.fold(model)
    onnx.save(model, tmp_path / "db.onnx")
    onnx.save(check_fixtures.plant_bias_error(folded, "head"), tmp_path / "wrong.onnx")
    onnx.save(folded, tmp_path / "right.onnx")
    wrong = subprocess.run([sys.executable, "-m", "bnfold", "verify", "db.onnx", "wrong.onnx"], cwd=tmp_path,
                           capture_output=True, text=True)
    assert wrong.returncode == 1, wrong.stdout + wrong.stderr
    assert "an output carried no signal at the first size that ran" in wrong.stdout
    right = subprocess.run([sys.executable, "-m", "bnfold", "verify", "db.onnx", "right.onnx"], cwd=tmp_path,
                           capture_output=True, text=True)
    assert right.returncode == 0, right.stdout + right.stderr


def test_the_chosen_size_is_the_first_where_outputs_carry_signal():
    model = check_fixtures.db_head()
    folded, _ = bnfold.fold(model)
    result = bnfold.verify(model, folded)
    assert result.passed
    size = result.input_shapes["x"][2]
    assert size > 320 and result.evidence["maps"].signal
    small = bnfold.verify(model, folded, input_shapes="x:1x3x32x32")
    assert not small.evidence["maps"].signal
    assert "carries no signal" in small.summary() and "no evidence" in small.summary()


def test_an_output_with_no_signal_anywhere_is_reported_not_passed_as_evidence():
    model = check_fixtures.db_head()
    constant = onnx.ModelProto()
    constant.CopyFrom(model)
    for tensor in constant.graph.initializer:
        if tensor.name == "threshold":
            tensor.CopyFrom(onnx.numpy_helper.from_array(np.array(-200.0, np.float32), "threshold"))
    result = bnfold.verify(constant, constant)
    assert result.passed and not result.evidence["maps"].signal
    assert result.to_dict()["evidence"]["maps"]["signal"] is False


def test_a_float32_output_of_a_float16_interior_is_judged_at_the_float16_tolerance():
    model = check_fixtures.float16_interior()
    folded, _ = bnfold.fold(model)
    result = bnfold.verify(model, folded, intermediates=True)
    assert result.passed, result.summary()
    assert result.outputs[0].dtype == "float32" and result.outputs[0].tolerance_dtype == "float16"
    plain = check_fixtures.float16_interior_float32()
    plain_result = bnfold.verify(plain, bnfold.fold(plain)[0])
    assert plain_result.outputs[0].tolerance_dtype is None


def test_the_noise_floor_passes_a_correct_fold_and_still_fails_a_wrong_one():
    model = check_fixtures.attention_large_logits()
    folded, _ = bnfold.fold(model)
    result = bnfold.verify(model, folded, intermediates=True)
    assert result.passed, result.summary()
    judged = [item for item in result.intermediates if item.noise_floor is not None]
    assert judged, "the softmax tensors need the noise floor"
    wrong = check_fixtures.plant_bias_error(folded, "proj", fraction=0.05, channel=3)
    failed = bnfold.verify(model, wrong, intermediates=True)
    assert not failed.passed and "proj_bn" in failed.failed_outputs


@pytest.mark.slow
def test_intermediates_in_small_chunks_give_the_verdicts_of_one_run(monkeypatch):
    model = check_fixtures.depthwise_large_scales(blocks=2)
    folded, report = bnfold.fold(model)
    whole = bnfold.verify(model, folded, intermediates=True)
    monkeypatch.setattr(pair, "CHUNK_BYTES", 1)  # one tensor per run of each model
    chunked = bnfold.verify(model, folded, intermediates=True)
    assert [(item.name, item.passed) for item in whole.intermediates] == \
        [(item.name, item.passed) for item in chunked.intermediates]
    shared = shared_tensors(model, folded)
    assert len(chunked.intermediates) == len(shared.names)


@pytest.mark.slow
def test_boundaries_first_then_a_failure_is_localized(monkeypatch):
    model = check_fixtures.depthwise_large_scales(blocks=3)
    folded, report = bnfold.fold(model)
    wrong = check_fixtures.plant_bias_error(folded, "pw1", fraction=0.5)
    labels = {d.output: d.label for d in report.folded}
    result = bnfold.verify(model, wrong, intermediates="boundaries", fold_labels=labels)
    assert not result.passed
    assert result.first_divergence == "pw1_bn" and "pw1" in result.divergence_source
    passed = bnfold.verify(model, folded, intermediates="boundaries")
    assert passed.passed and passed.intermediates_scope == "boundaries"
    assert 0 < len(passed.intermediates) <= len(shared_tensors(model, folded).boundaries)


def test_declared_dims_of_minus_one_and_zero_are_open_and_left_as_declared():
    model = check_fixtures.paddle_style_dims()
    folded, _ = bnfold.fold(model, local_check=False)
    before = folded.SerializeToString()
    result = bnfold.verify(model, folded)
    assert result.passed, result.summary()
    assert folded.SerializeToString() == before
    assert [d.dim_value for d in folded.graph.input[0].type.tensor_type.shape.dim] == [-1, 3, 0, 0]


def test_an_unresolved_unnamed_dim_is_given_a_placeholder_in_the_example():
    from onnx import TensorProto, helper, numpy_helper

    from bnfold.errors import UnresolvedShapeError

    model = helper.make_model(helper.make_graph(
        [helper.make_node("Reshape", ["x", "shape"], ["y"])], "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, None])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)],
        [numpy_helper.from_array(np.array([5], np.int64), "shape")]), opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    with pytest.raises(UnresolvedShapeError, match=r"--input-shape x:1xN\b"):
        bnfold.verify(model, model)


def test_image_inputs_get_random_blocks_when_white_noise_leaves_an_output_without_signal():
    model = check_fixtures.flat_region_detector()
    folded, _ = bnfold.fold(model)
    result = bnfold.verify(model, folded)
    assert result.passed and result.evidence["flat"].signal
    assert any("random blocks" in note for note in result.shape_notes)
    noise_only = bnfold.verify(model, folded, inputs={"x": np.random.default_rng(0).standard_normal(
        (1, 3, 32, 32)).astype(np.float32)})
    assert not noise_only.evidence["flat"].signal and "proves little" in noise_only.summary()


@pytest.mark.slow
def test_a_deep_linear_batchnorm1d_stack_verifies_with_every_intermediate():
    model = check_fixtures.gemm_bn_stack(700, 64)
    folded, report = bnfold.fold(model)
    assert report.folded_count == 700
    result = bnfold.verify(model, folded, intermediates=True)
    assert result.passed, result.summary()
    wrong = onnx.ModelProto()
    wrong.CopyFrom(folded)
    gemm = next(node for node in wrong.graph.node if node.name == "gemm350")
    bias = next(t for t in wrong.graph.initializer if t.name == gemm.input[2])
    values = onnx.numpy_helper.to_array(bias).copy()
    values[5] += 0.05 * (values.max() - values.min())
    bias.CopyFrom(onnx.numpy_helper.from_array(values, bias.name))
    assert not bnfold.verify(model, wrong, intermediates=True).passed
