"""`bnfold verify` through the click group: table or JSON on stdout, exit 0 pass / 1 fail / 2 usage."""

import json

import numpy as np
import pytest
from click.testing import CliRunner
from onnx import save

from bnfold.cli import cli
from bnfold.checking.tolerance import DEFAULT_TOLERANCES
from verify_models import conv_bn_model, conv_bn_parameters, folded_model, two_output_model, unary_model

def conv_bn_pair(perturb=0.0, input_dims=(1, 3, 8, 8)):
    """A Conv+BatchNormalization model and its fold computed by hand; `perturb` shifts one folded weight."""
    params = conv_bn_parameters()
    return conv_bn_model(params, input_dims=input_dims), folded_model(params, perturb=perturb, input_dims=input_dims)


@pytest.fixture
def write(tmp_path):
    def write_model(model, name):
        path = tmp_path / name
        save(model, path)
        return str(path)

    return write_model


def invoke(*args):
    return CliRunner().invoke(cli, ["verify", *args])


def test_correct_fold_exits_0_with_passed(write):
    original, folded = conv_bn_pair()
    result = invoke(write(original, "model.onnx"), write(folded, "folded.onnx"))
    assert result.exit_code == 0, result.output
    assert result.stdout.strip().splitlines()[-1].startswith("PASSED")
    assert "model.onnx" in result.stdout and "max abs" in result.stdout


def test_wrong_fold_exits_1_naming_the_output(write):
    original, folded = conv_bn_pair(perturb=1e-3)
    result = invoke(write(original, "model.onnx"), write(folded, "folded.onnx"))
    assert result.exit_code == 1
    assert result.stdout.strip().splitlines()[-1] == "FAILED: 1 of 1 outputs differ (y)"
    assert result.stderr.strip() == "bnfold: error: models differ: y"


def test_json_output(write):
    original, folded = conv_bn_pair(perturb=1e-3)
    result = invoke(write(original, "a.onnx"), write(folded, "b.onnx"), "--json", "--runs", "2", "--seed", "7")
    assert result.exit_code == 1
    data = json.loads(result.stdout)
    assert data["passed"] is False and data["failed_outputs"] == ["y"]
    assert data["runs"] == 2 and data["seed"] == 7 and data["ort_opt_level"] == "disable"
    output = data["outputs"][0]
    assert output["name"] == "y" and output["mismatched"] > 0 and output["elements"] == 2 * 4 * 8 * 8
    metrics = {"max_abs_error", "max_rel_error", "mean_abs_error", "cosine_similarity", "min_atol", "min_rtol"}
    assert metrics <= set(output)


def test_two_outputs_one_differs_and_per_output_tolerance(write):
    reference, candidate = write(two_output_model(), "a.onnx"), write(two_output_model(aux_offset=0.01), "b.onnx")
    failed = invoke(reference, candidate, "--json")
    assert failed.exit_code == 1
    assert {o["name"]: o["passed"] for o in json.loads(failed.stdout)["outputs"]} == {"logits": True, "aux": False}
    for tolerance_args in (["--atol", "1e-5", "aux:0.1"], ["--atol", "1e-5", "--atol", "aux:0.1"],
                           ["--atol=1e-5", "aux:0.1"]):
        result = invoke(reference, candidate, *tolerance_args, "--json")
        assert result.exit_code == 0, (tolerance_args, result.output)
        atols = {o["name"]: o["atol"] for o in json.loads(result.stdout)["outputs"]}
        assert atols == {"logits": 1e-5, "aux": 0.1}


def test_space_separated_overrides_stop_at_the_next_option(write):
    reference, candidate = write(two_output_model(), "a.onnx"), write(two_output_model(aux_offset=0.01), "b.onnx")
    result = invoke("--rtol", "0", "aux:0.1", "--atol", "0", reference, candidate, "--json")
    assert result.exit_code == 0, result.output
    by_name = {o["name"]: o for o in json.loads(result.stdout)["outputs"]}
    assert by_name["aux"]["rtol"] == 0.1 and by_name["logits"]["rtol"] == 0 and by_name["aux"]["atol"] == 0


def test_dynamic_dims_with_and_without_input_shape(write):
    original, folded = conv_bn_pair(input_dims=("N", 3, "H", "W"))
    reference, candidate = write(original, "a.onnx"), write(folded, "b.onnx")
    chosen = invoke(reference, candidate, "--json")
    assert chosen.exit_code == 0, chosen.output
    assert json.loads(chosen.stdout)["input_shapes"] == {"x": [1, 3, 32, 32]}
    result = invoke(reference, candidate, "--input-shape", "x:2x3x6x6", "--json")
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["outputs"][0]["shape"] == [2, 4, 6, 6]


def test_dynamic_batch_defaults_to_one(write):
    original, folded = conv_bn_pair(input_dims=("N", 3, 8, 8))
    result = invoke(write(original, "a.onnx"), write(folded, "b.onnx"), "--json")
    assert result.exit_code == 0 and json.loads(result.stdout)["outputs"][0]["shape"] == [1, 4, 8, 8]


def test_npz_inputs(write, tmp_path):
    # Relu and Abs agree only on non-negative data: passing proves the file's data was used.
    reference, candidate = write(unary_model("Relu"), "relu.onnx"), write(unary_model("Abs"), "abs.onnx")
    data = tmp_path / "data.npz"
    np.savez(data, x=np.full((2, 5), 3.0, np.float32))
    assert invoke(reference, candidate, "--inputs", str(data)).exit_code == 0
    assert invoke(reference, candidate).exit_code == 1


def test_nan_in_same_places_passes_and_is_reported(write):
    result = invoke(write(unary_model("Log"), "a.onnx"), write(unary_model("Log"), "b.onnx"))
    assert result.exit_code == 0 and "NaN" in result.stdout


def test_mismatched_output_names_fail(write):
    result = invoke(write(unary_model("Relu"), "a.onnx"), write(unary_model("Relu", output="out"), "b.onnx"))
    assert result.exit_code == 1
    assert "b.onnx (it has ['out'] instead)" in result.stdout  # named by the candidate's path


@pytest.mark.parametrize(
    "args, message",
    [
        (["--atol", "tight"], "--atol"),
        (["--atol", "-1"], "--atol"),
        (["--atol", "nosuch:1e-3"], "unknown output"),
        (["--ort-opt-level", "max"], "--ort-opt-level"),
        (["--runs", "0"], "--runs"),
        (["--input-shape", "x:2x5x"], "bad shape"),
        (["--inputs", "missing.npz"], "not found"),
    ],
)
def test_bad_usage_exits_2(write, args, message):
    result = invoke(write(unary_model("Relu"), "a.onnx"), write(unary_model("Relu"), "b.onnx"), *args)
    assert result.exit_code == 2, result.output
    assert message in result.output


def test_unreadable_model_exits_2(write, tmp_path):
    garbage = tmp_path / "garbage.onnx"
    garbage.write_bytes(b"not a model")
    reference = write(unary_model("Relu"), "a.onnx")
    for other in (str(garbage), str(tmp_path / "missing.onnx")):
        result = invoke(reference, other)
        assert result.exit_code == 2 and result.stderr.startswith("bnfold: error:")


def test_help_states_default_tolerances():
    result = CliRunner().invoke(cli, ["verify", "--help"])
    assert result.exit_code == 0
    for dtype, (atol, rtol) in DEFAULT_TOLERANCES.items():
        assert any(line.split()[:3] == [dtype, f"{atol:g}", f"{rtol:g}"] for line in result.output.splitlines())
    assert "--ort-opt-level" in result.output and "disable" in result.output


def test_json_file_and_quiet_follow_the_common_convention(write, tmp_path):
    """`verify --json v.json` (an optional FILE, as on every command) writes it and prints the table; -q prints
    nothing on success and the table on failure."""
    original, folded = conv_bn_pair()
    reference, candidate = write(original, "a.onnx"), write(folded, "b.onnx")
    result = invoke(reference, candidate, "--json", str(tmp_path / "v.json"))
    assert result.exit_code == 0, result.output
    assert json.loads((tmp_path / "v.json").read_text())["passed"] is True
    assert result.stdout.strip().splitlines()[-1].startswith("PASSED")
    quiet = invoke(reference, candidate, "-q")
    assert quiet.exit_code == 0 and quiet.output == ""
    wrong = write(conv_bn_pair(perturb=1e-3)[1], "wrong.onnx")
    quiet = invoke(reference, wrong, "-q")
    assert quiet.exit_code == 1 and quiet.stdout.strip().splitlines()[-1] == "FAILED: 1 of 1 outputs differ (y)"
