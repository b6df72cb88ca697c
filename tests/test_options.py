"""Public API arguments: a single str where one item is natural, typed errors naming the parameter otherwise."""

from __future__ import annotations

import dataclasses
import inspect
import pickle

import numpy as np
import onnx
import pytest
from click.testing import CliRunner

import bnfold
from bnfold.cli import cli
from bnfold.options import (FileOptions, FoldFileOptions, FoldOptions, VerifyOptions, as_count, as_mapping, as_names,
                            as_paths, as_seed)
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


# One options object per layer (bnfold.options): each checks its own fields as it is made, pickles, and fold_file's
# keywords are exactly the layers' fields.

@pytest.mark.parametrize("make,parameter", [
    (lambda: FoldOptions(skip=7), "skip"),
    (lambda: FoldOptions(standalone="yes"), "standalone"),
    (lambda: FoldOptions(local_check=None), "local_check"),
    (lambda: VerifyOptions(seed=True), "seed"),
    (lambda: VerifyOptions(runs="2"), "runs"),
    (lambda: VerifyOptions(input_files=3), "input_files"),
    (lambda: VerifyOptions(atol="1e-3"), "atol"),
    (lambda: FileOptions(verify="false"), "verify"),
    (lambda: FileOptions(external_data="yes"), "external_data"),
    (lambda: FoldFileOptions(fold={"skip": "conv"}), "fold"),
    (lambda: FoldFileOptions(file=FoldOptions()), "file"),
])
def test_each_options_object_types_its_fields(make, parameter):
    with pytest.raises(bnfold.ArgumentTypeError) as raised:
        make()
    assert raised.value.parameter == parameter and str(raised.value).startswith(f"{parameter}: ")


@pytest.mark.parametrize("make,message", [
    (lambda: FoldOptions(skip="c"), r"unknown rule\(s\) \['c'\]"),
    (lambda: FoldOptions(fold_input_initializers=True, keep_input_initializers=True), "contradict each other"),
    (lambda: VerifyOptions(seed=-1), "seed: must be at least 0"),
    (lambda: VerifyOptions(runs=0), "runs: must be at least 1"),
    (lambda: VerifyOptions(intermediates="all"), "intermediates: expected True, False or 'boundaries'"),
    (lambda: VerifyOptions(ort_opt_level="max"), "ort_opt_level: unknown ORT optimization level 'max'"),
    (lambda: FoldFileOptions.from_keywords({"sede": 1}), r"unknown option\(s\) \['sede'\]"),
    (lambda: FoldFileOptions.from_keywords({"local_check": False}), r"unknown option\(s\) \['local_check'\]"),
])
def test_each_options_object_refuses_bad_values(make, message):
    with pytest.raises(bnfold.UsageError, match=message):
        make()


def test_options_are_normalized_once_as_they_are_made():
    assert FoldOptions(skip="conv").skip == ("conv",) and FoldOptions(standalone=np.bool_(True)).standalone is True
    assert VerifyOptions(input_files="a.npz", seed=np.int64(3)).input_files == ("a.npz",)
    assert type(VerifyOptions(seed=np.int64(3)).seed) is int
    assert bnfold.FoldOptions is FoldOptions and FoldOptions.of({"skip": "gemm"}) == FoldOptions(skip=("gemm",))


def test_options_objects_pickle_for_batch_workers():
    options = FoldFileOptions.from_keywords({
        "skip": ["conv"], "standalone": True, "verify": False, "external_data": True, "dry_run": True,
        "verify_options": {"seed": 4, "input_shapes": ["x:1x4x5x5"], "atol": {"y": 1e-3}}})
    copy = pickle.loads(pickle.dumps(options))
    assert copy == options and copy.fold.skip == ("conv",) and copy.fold.local_check is False
    assert copy.verification.atol == {"y": 1e-3} and copy.file.dry_run is True


def keyword_only(function):
    parameters = inspect.signature(function).parameters
    return {name: item.default for name, item in parameters.items() if item.kind is item.KEYWORD_ONLY}


def test_fold_file_keywords_are_the_fields_of_the_options_layers():
    """A new option is one field of one layer: a fold_file keyword no layer has (so nobody forwards it), a field no
    keyword sets, or a keyword whose default differs from its field's fails here."""
    keywords = keyword_only(bnfold.fold_file)
    del keywords["also_writes"], keywords["options"]  # what else fold_file writes; the options made whole
    assert set(keywords) == set(FoldFileOptions.keyword_names())
    assert FoldFileOptions.from_keywords(keywords) == FoldFileOptions()
    layers = {field.name for layer in (FoldOptions, FileOptions) for field in dataclasses.fields(layer)}
    assert layers - set(keywords) == {"local_check"}  # fold_file checks each fold when it verifies
    fold_keywords = keyword_only(bnfold.fold)
    del fold_keywords["inplace"]
    assert set(fold_keywords) == {field.name for field in dataclasses.fields(FoldOptions)}
    assert FoldOptions(**fold_keywords) == FoldOptions()
    check_fold_keywords = set(keyword_only(bnfold.check)) - {"check_model", "max_foldable", "max_standalone",
                                                             "max_kept", "options"}
    assert check_fold_keywords < set(fold_keywords)


@pytest.mark.parametrize("name", FoldFileOptions.keyword_names())
def test_each_fold_file_keyword_sets_its_own_field_and_no_other(name):
    default = FoldFileOptions()
    value = {"skip": ("conv",), "external_data": True, "verify_options": VerifyOptions(seed=5)}.get(
        name, not default.keyword(name) if isinstance(default.keyword(name), bool) else None)
    made = FoldFileOptions.from_keywords({name: value})
    assert made.keyword(name) == value
    changed = {other for other in FoldFileOptions.keyword_names() if made.keyword(other) != default.keyword(other)}
    assert changed == {name}
    assert made.fold.local_check == made.file.verify  # fold_file checks each fold when it verifies


@pytest.fixture
def model_file(tmp_path):
    path = tmp_path / "model.onnx"
    onnx.save(conv_bn(), path)
    return path


def test_fold_file_takes_the_options_made_whole(model_file, tmp_path):
    by_keywords = bnfold.fold_file(model_file, tmp_path / "a.onnx", verify=False, skip="gemm", standalone=True)
    options = FoldFileOptions(fold=FoldOptions(skip=("gemm",), standalone=True, local_check=False),
                              file=FileOptions(verify=False))
    whole = bnfold.fold_file(model_file, tmp_path / "b.onnx", options=options)
    assert by_keywords.folded_count == whole.folded_count == 1
    assert (tmp_path / "a.onnx").read_bytes() == (tmp_path / "b.onnx").read_bytes()
    skipped = bnfold.fold_file(model_file, options=FoldFileOptions(fold=FoldOptions(skip="conv"),
                                                                   file=FileOptions(dry_run=True)))
    assert skipped.folded_count == 0 and not skipped.written


def test_an_option_given_both_whole_and_as_a_keyword_is_a_usage_error(model_file, tmp_path):
    with pytest.raises(bnfold.UsageError, match="options: given together with skip, verify"):
        bnfold.fold_file(model_file, tmp_path / "a.onnx", skip="conv", verify=False, options=FoldFileOptions())
    with pytest.raises(bnfold.ArgumentTypeError, match="^options: expected a bnfold.options.FoldFileOptions"):
        bnfold.fold_file(model_file, tmp_path / "a.onnx", options={"skip": "conv"})
    with pytest.raises(bnfold.UsageError, match="options: given together with keep_input_initializers"):
        bnfold.check(model_file, keep_input_initializers=True, options=FoldOptions())
    assert list(tmp_path.glob("a.onnx*")) == []


@pytest.mark.parametrize("call,message", [
    (lambda missing, out: bnfold.fold_file(missing, out / "f.onnx", skip="c"), "unknown rule"),
    (lambda missing, out: bnfold.fold_file(missing, out / "f.onnx", verify_options={"runs": 0}), "runs: must"),
    (lambda missing, out: bnfold.fold_files([missing], out, sede=1), r"unknown option\(s\) \['sede'\]"),
    (lambda missing, out: bnfold.fold_files([missing], out, force="yes"), "force: expected True or False"),
    (lambda missing, out: bnfold.check(missing, skip="c"), "unknown rule"),
    (lambda missing, out: bnfold.bench(missing, fold=True, fold_options={"skip": "c"}), "unknown rule"),
])
def test_the_api_checks_its_options_before_reading_any_model(tmp_path, call, message):
    with pytest.raises(bnfold.UsageError, match=message):
        call(tmp_path / "missing.onnx", tmp_path)
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("command", [["{missing}", "-o", "{out}/f.onnx"], ["{missing}", "{missing}", "-o", "{out}"],
                                     ["check", "{missing}"], ["bench", "{missing}", "--fold"]])
def test_the_cli_refuses_bad_fold_flags_before_reading_any_model(tmp_path, command):
    args = [word.format(missing=tmp_path / "missing.onnx", out=tmp_path) for word in command]
    result = CliRunner().invoke(cli, [*args, "--skip", "c"])
    assert result.exit_code == 2 and result.output.count("bnfold: error:") == 1, result.output
    assert "unknown rule(s) ['c']" in result.output and "missing.onnx" not in result.output
