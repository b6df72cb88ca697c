"""`bnfold MODEL -o OUT` through the click group and as a real process."""

import pytest
import json
import subprocess
import sys

import numpy as np
import onnx
import onnx.numpy_helper
from click.testing import CliRunner

from bnfold.cli import cli
from bnfold.rules import RULE_NAMES
from models import fixtures
from support import assert_same_outputs


def save(model, path):
    onnx.save(model, path)
    return str(path)


def invoke(*args):
    return CliRunner().invoke(cli, [str(a) for a in args])


def test_fold_writes_verified_model_and_prints_summary(tmp_path):
    source = save(fixtures.conv_bn_bn(), tmp_path / "m.onnx")
    result = invoke(source, "-o", tmp_path / "out.onnx")
    assert result.exit_code == 0, result.output
    assert "BatchNormalization: 2 of 2 folded (2 into weights, 0 as Mul + Add), 0 kept" in result.output
    assert "PASSED" in result.output
    folded = onnx.load(tmp_path / "out.onnx")
    assert [n.op_type for n in folded.graph.node] == ["Conv"]
    assert_same_outputs(onnx.load(source), folded)


def test_explicit_fold_subcommand_and_json(tmp_path):
    source = save(fixtures.multi_consumer_conv(), tmp_path / "m.onnx")
    result = invoke("fold", source, "-o", tmp_path / "out.onnx", "--json", "--no-verify")
    assert result.exit_code == 0, result.output
    report = json.loads(result.output)
    assert report["bn_kept"] == 1 and "also feeds side_relu" in report["decisions"][0]["reason"]


def test_quiet_prints_nothing_and_dry_run_writes_nothing(tmp_path):
    source = save(fixtures.conv_bn(), tmp_path / "m.onnx")
    quiet = invoke(source, "-o", tmp_path / "out.onnx", "-q")
    assert quiet.exit_code == 0 and quiet.output == ""
    dry = invoke(source, "--dry-run", "-o", tmp_path / "dry.onnx")
    assert dry.exit_code == 0 and "(not written)" in dry.output
    assert not (tmp_path / "dry.onnx").exists()


def test_refuses_to_overwrite_the_input_unless_asked(tmp_path):
    source = save(fixtures.conv_bn(), tmp_path / "m.onnx")
    before = (tmp_path / "m.onnx").read_bytes()
    result = invoke(source, "-o", source)
    assert result.exit_code == 2 and "is the input file; pass --overwrite" in result.output
    assert (tmp_path / "m.onnx").read_bytes() == before
    assert invoke(source, "-o", source, "--overwrite").exit_code == 0
    assert [n.op_type for n in onnx.load(source).graph.node] == ["Conv"]


def test_missing_output_option_is_a_usage_error(tmp_path):
    source = save(fixtures.conv_bn(), tmp_path / "m.onnx")
    result = invoke(source)
    assert result.exit_code == 2 and "pass -o/--output" in result.output


def test_rules_command_lists_the_registry():
    result = invoke("rules")
    assert result.exit_code == 0
    assert [line.split()[0] for line in result.output.splitlines()] == list(RULE_NAMES)


@pytest.mark.slow  # a real process: seconds, not milliseconds
def test_python_dash_m_bnfold_runs_without_traceback(tmp_path):
    source = save(fixtures.conv_bn(), tmp_path / "m.onnx")
    ok = subprocess.run([sys.executable, "-m", "bnfold", source, "-o", str(tmp_path / "o.onnx"), "--no-verify"],
                        capture_output=True, text=True)
    assert ok.returncode == 0, ok.stderr
    missing = subprocess.run([sys.executable, "-m", "bnfold", str(tmp_path / "nope.onnx"), "-o", "x.onnx"],
                             capture_output=True, text=True)
    assert missing.returncode == 2
    assert missing.stderr.strip().splitlines() == [f"bnfold: error: {tmp_path / 'nope.onnx'}: no such file"]


@pytest.mark.slow  # a real process: seconds, not milliseconds
def test_no_verify_does_not_import_onnxruntime(tmp_path):
    source = save(fixtures.conv_bn(), tmp_path / "m.onnx")
    code = ("import sys; from bnfold.cli import main\n"
            f"try:\n    main([{source!r}, '-o', {str(tmp_path / 'o.onnx')!r}, '--no-verify', '-q'])\n"
            "except SystemExit: pass\n"
            "assert 'onnxruntime' not in sys.modules and 'torch' not in sys.modules, 'heavy import'\n")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr


def _wrong_bias_fold(monkeypatch):
    import bnfold.rules.producers as producers

    real_fold_bias = producers.fold_bias
    monkeypatch.setattr(producers, "fold_bias", lambda *args: real_fold_bias(*args) + 0.5)  # a wrong fold


def test_a_wrong_fold_is_caught_by_its_local_check_and_not_applied(tmp_path, monkeypatch):
    _wrong_bias_fold(monkeypatch)
    source = save(fixtures.conv_bn(), tmp_path / "m.onnx")
    result = invoke(source, "-o", tmp_path / "out.onnx")
    assert result.exit_code == 0, result.output
    assert "kept   bn -> 'y': local check failed: max rel error" in result.output
    folded = onnx.load(tmp_path / "out.onnx")
    assert "BatchNormalization" in [node.op_type for node in folded.graph.node]
    assert_same_outputs(fixtures.conv_bn(), folded)


def test_failed_verification_writes_nothing_and_exits_1(tmp_path, monkeypatch):
    """A wrong fold that got past the local check (here: the check is made unavailable) fails end to end."""
    import bnfold.checking.folds as folds

    _wrong_bias_fold(monkeypatch)
    monkeypatch.setattr(folds, "_onnxruntime_available", lambda: False)
    source = save(fixtures.conv_bn(), tmp_path / "m.onnx")
    result = invoke(source, "-o", tmp_path / "out.onnx")
    assert result.exit_code == 1
    assert "FAILED" in result.output and "nothing written" in result.output
    assert not (tmp_path / "out.onnx").exists()
    assert sorted(path.name for path in tmp_path.iterdir()) == ["m.onnx"]  # the output written during the check
    (tmp_path / "out.onnx").write_bytes(b"previous")                       # is removed, and an old one kept
    assert invoke(source, "-o", tmp_path / "out.onnx").exit_code == 1
    assert (tmp_path / "out.onnx").read_bytes() == b"previous"
    forced = invoke(source, "-o", tmp_path / "out.onnx", "--force")
    assert forced.exit_code == 1 and (tmp_path / "out.onnx").read_bytes() != b"previous"
    assert sorted(path.name for path in tmp_path.iterdir()) == ["m.onnx", "out.onnx"]
    quiet = invoke(source, "-o", tmp_path / "quiet.onnx", "-q")  # -q: only what failed, the comparison
    assert quiet.exit_code == 1 and quiet.stdout.strip().splitlines()[-1].startswith("FAILED")
    assert "BatchNormalization:" not in quiet.stdout and "nothing written" in quiet.stderr


def test_dynamic_spatial_dims_are_chosen_and_printed(tmp_path):
    model = fixtures.conv_bn()
    for axis, name in ((2, "H"), (3, "W")):
        model.graph.input[0].type.tensor_type.shape.dim[axis].dim_param = name
    source = save(model, tmp_path / "m.onnx")
    result = invoke(source, "-o", tmp_path / "out.onnx")
    assert result.exit_code == 0 and (tmp_path / "out.onnx").exists(), result.output
    assert "input shapes: x 1x4x32x32" in result.output and "H=32, W=32" in result.output
    assert invoke(source, "-o", tmp_path / "out.onnx", "--input-shape", "x:2x4x7x7", "-q").exit_code == 0


def _unrunnable_dynamic_model():
    """conv_bn whose output goes through a fixed Reshape: no trial size of the dynamic dims lets it run."""
    model = fixtures.conv_bn()
    for axis, name in ((2, "H"), (3, "W")):
        model.graph.input[0].type.tensor_type.shape.dim[axis].dim_param = name
    model.graph.initializer.append(onnx.numpy_helper.from_array(np.array([1, 8, 9, 9], np.int64), "fixed"))
    model.graph.node.append(onnx.helper.make_node("Reshape", ["y", "fixed"], ["z"]))
    model.graph.output[0].name = "z"
    del model.graph.output[0].type.tensor_type.shape.dim[:]
    return model


def test_end_to_end_check_skipped_with_a_reason_unless_required(tmp_path):
    source = save(_unrunnable_dynamic_model(), tmp_path / "m.onnx")
    skipped = invoke(source, "-o", tmp_path / "out.onnx")
    assert skipped.exit_code == 0 and (tmp_path / "out.onnx").exists(), skipped.output
    assert "end-to-end check skipped: no size for the dynamic dim(s) H, W" in skipped.output
    assert "--input-shape x:1x4xHxW" in skipped.output
    quiet = invoke(source, "-o", tmp_path / "out2.onnx", "-q", "--json")
    assert quiet.exit_code == 0 and "end-to-end check skipped" in quiet.stderr
    required = invoke(source, "-o", tmp_path / "out3.onnx", "--require-end-to-end")
    assert required.exit_code == 2 and not (tmp_path / "out3.onnx").exists()
    assert "cannot verify the fold end to end" in required.stderr
    assert invoke(source, "-o", tmp_path / "out4.onnx", "--input-shape", "x:1x4x9x9").exit_code == 0


def test_fold_takes_per_output_tolerances_like_verify(tmp_path):
    source = save(fixtures.conv_bn(), tmp_path / "m.onnx")
    result = invoke(source, "-o", tmp_path / "out.onnx", "--atol", "1e-5", "y:1e-3", "--json")
    assert result.exit_code == 0, result.output
    outputs = json.loads(result.output)["verification"]["outputs"]
    assert outputs[0]["name"] == "y" and outputs[0]["atol"] == 1e-3


def test_help_imports_no_heavy_module():
    """`bnfold --help` stays fast: onnx, onnxruntime and torch are imported by commands only when they run."""
    code = ("import sys\nfrom bnfold.cli import main\n"
            "try:\n    main(['--help'])\nexcept SystemExit:\n    pass\n"
            "heavy = [m for m in ('onnx', 'onnxruntime', 'torch') if m in sys.modules]\nassert not heavy, heavy\n")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr


def test_what_happened_is_said_in_a_line_each(tmp_path):
    """Fold time and end-to-end check time apart; `wrote OUT (size)`; `unchanged` when nothing folded."""
    source = save(fixtures.conv_bn(), tmp_path / "m.onnx")
    result = invoke(source, "-o", tmp_path / "out.onnx")
    assert result.exit_code == 0, result.output
    bn_line = next(line for line in result.output.splitlines() if line.startswith("BatchNormalization:"))
    assert "(fold " in bn_line and ", end-to-end check " in bn_line
    size = (tmp_path / "out.onnx").stat().st_size
    last = result.output.splitlines()[-1]
    shown = f"{size} B" if size < 1024 else f"{size / 1024:.1f} KiB"
    assert last.startswith(f"wrote {tmp_path / 'out.onnx'} ({shown}) in "), last
    assert "unchanged" not in result.output
    report = json.loads(invoke(source, "-o", tmp_path / "out2.onnx", "--json").output)
    assert report["verify_s"] > 0 and 0 < report["fold_s"] <= report["elapsed_s"]

    kept = save(fixtures.training_mode_bn(), tmp_path / "kept.onnx")
    result = invoke(kept, "-o", tmp_path / "kept_out.onnx")
    assert result.exit_code == 0, result.output
    assert "unchanged: nothing was folded or merged; the model written has the input's graph" in result.output
    assert "end-to-end check" not in result.output  # nothing changed, nothing to check
    assert result.output.splitlines()[-1].startswith(f"wrote {tmp_path / 'kept_out.onnx'}")
    report = json.loads(invoke(kept, "--dry-run", "--json").output)
    assert report["verify_s"] is None and report["bn_folded"] == 0


def test_decomposed_bn_alone_is_verified_end_to_end(tmp_path):
    source = save(fixtures.frozen_bn_stem(), tmp_path / "m.onnx")
    result = invoke(source, "-o", tmp_path / "out.onnx")
    assert result.exit_code == 0, result.output
    assert "PASSED" in result.output and "unchanged" not in result.output


def test_two_paths_without_o_suggest_it(tmp_path):
    source = save(fixtures.conv_bn(), tmp_path / "m.onnx")
    result = invoke(source, tmp_path / "out.onnx")
    assert result.exit_code == 2
    assert result.stderr.strip() == (f"bnfold: error: {tmp_path / 'out.onnx'} does not exist, so it is not a model "
                                     f"to fold: to write the folded model there, pass -o: bnfold {source} -o "
                                     f"{tmp_path / 'out.onnx'}")
    assert not (tmp_path / "out.onnx").exists()


def test_output_directory_for_several_models_is_created(tmp_path):
    models = tmp_path / "models"
    (models / "sub").mkdir(parents=True)
    save(fixtures.conv_bn(), models / "a.onnx")
    save(fixtures.gemm_bn(), models / "sub" / "b.onnx")
    result = invoke(models, "-o", tmp_path / "folded" / "deep", "-j", "1")
    assert result.exit_code == 0, result.output
    for relative in ("a.onnx", "sub/b.onnx"):
        folded = onnx.load(tmp_path / "folded" / "deep" / relative)
        assert "BatchNormalization" not in [n.op_type for n in folded.graph.node]
        assert_same_outputs(onnx.load(models / relative), folded)
    result = invoke(models / "a.onnx", models / "sub" / "b.onnx", "-o", tmp_path / "flat", "-j", "1", "-q")
    assert result.exit_code == 0, result.output
    assert sorted(p.name for p in (tmp_path / "flat").iterdir()) == ["a.onnx", "b.onnx"]
    (tmp_path / "file").write_bytes(b"")
    result = invoke(models, "-o", tmp_path / "file")
    assert result.exit_code == 2 and "exists and is not a directory" in result.stderr
    result = invoke(models, "-o", tmp_path / "x.onnx")
    assert result.exit_code == 2 and "not a model file" in result.stderr and not (tmp_path / "x.onnx").exists()


def test_wrote_line_names_the_external_data_file(tmp_path):
    source = save(fixtures.conv_bn(c_in=16, c_out=32), tmp_path / "m.onnx")
    result = invoke(source, "-o", tmp_path / "out.onnx", "--external-data", "--no-verify")
    assert result.exit_code == 0, result.output
    data = (tmp_path / "out.onnx.data").stat().st_size
    shown = f"{data} B" if data < 1024 else f"{data / 1024:.1f} KiB"
    assert f", weights in out.onnx.data: {shown}) in " in result.output.splitlines()[-1]
    result = invoke(source, "-o", tmp_path / "out.onnx", "--no-verify")  # the old data file is not this run's
    assert result.exit_code == 0 and "weights in" not in result.output
