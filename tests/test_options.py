"""Public API arguments: a single str where one item is natural, typed errors naming the parameter otherwise."""

from __future__ import annotations

import pytest

import bnfold
from bnfold.options import as_count, as_mapping, as_names, as_paths, as_seed
from models.fixtures import conv_bn
from support import assert_same_outputs


def test_a_single_str_is_one_name_not_its_characters():
    assert as_names("conv", "skip") == ("conv",)
    assert as_names(["conv", "gemm"], "skip") == ("conv", "gemm")
    assert as_names(None, "skip") == ()
    assert as_paths("a.npz", "input_files") == ("a.npz",)


@pytest.mark.parametrize("value", [3, b"conv", {"conv": 1}, ["conv", 2]])
def test_wrong_types_name_the_parameter(value):
    with pytest.raises(bnfold.ArgumentTypeError, match="^skip: ") as raised:
        as_names(value, "skip")
    assert isinstance(raised.value, TypeError) and isinstance(raised.value, bnfold.UsageError)
    assert raised.value.parameter == "skip"


def test_counts_mappings_and_seeds():
    assert as_count(3, "jobs", minimum=1) == 3 and as_count(None, "max_kept", optional=True) is None
    assert as_mapping({"a": 1}, "verify_options") == {"a": 1}
    with pytest.raises(bnfold.ArgumentTypeError, match="jobs"):
        as_count(True, "jobs")
    with pytest.raises(bnfold.UsageError, match="jobs: must be at least 1"):
        as_count(0, "jobs", minimum=1)
    with pytest.raises(bnfold.ArgumentTypeError, match="verify_options"):
        as_mapping(["x"], "verify_options")
    with pytest.raises(bnfold.UsageError, match="seed: must be at least 0"):
        as_seed(-1)


def test_fold_skip_as_a_single_rule_name():
    model = conv_bn()
    _, skipped = bnfold.fold(model, skip="conv")
    _, skipped_list = bnfold.fold(model, skip=["conv"])
    assert skipped.folded_count == skipped_list.folded_count == 0
    folded, report = bnfold.fold(model, skip="gemm")
    assert report.folded_count == 1
    assert_same_outputs(model, folded)
    with pytest.raises(bnfold.UsageError, match="unknown rule"):
        bnfold.fold(model, skip="c")


@pytest.mark.parametrize("call,parameter", [
    (lambda: bnfold.fold(42), "model"),
    (lambda: bnfold.fold(conv_bn(), skip=7), "skip"),
    (lambda: bnfold.fold(conv_bn(), inline_functions="yes"), "inline_functions"),
    (lambda: bnfold.fold_file(42, "out.onnx"), "source"),
    (lambda: bnfold.fold_file("in.onnx", 42), "destination"),
    (lambda: bnfold.fold_file("in.onnx", "out.onnx", verify_options=["seed"]), "verify_options"),
    (lambda: bnfold.save_model("x", "out.onnx"), "model"),
    (lambda: bnfold.save_model(conv_bn(), 42), "path"),
    (lambda: bnfold.fold_files(42, "out"), "paths"),
    (lambda: bnfold.check(42), "path"),
])
def test_api_type_errors_are_typed(call, parameter):
    with pytest.raises(bnfold.ArgumentTypeError) as raised:
        call()
    assert raised.value.parameter == parameter and str(raised.value).startswith(f"{parameter}: ")


def test_verify_options_are_typed_and_a_mapping_of_their_fields_is_accepted():
    from bnfold.options import VerifyOptions

    options = VerifyOptions.of({"seed": 3, "input_shapes": "x:1x4x5x5"})
    assert options == VerifyOptions(seed=3, input_shapes="x:1x4x5x5")
    assert VerifyOptions.of(options) is options and VerifyOptions.of(None) == VerifyOptions()
    with pytest.raises(bnfold.UsageError, match=r"unknown option\(s\) \['sede'\]"):
        VerifyOptions.of({"sede": 3})
