"""`bnfold check` and bnfold.check: a lint gate that folds in memory, writes nothing and never needs ONNX Runtime."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx
import pytest
from click.testing import CliRunner
from onnx import TensorProto, helper, numpy_helper

import bnfold
from bnfold.cli import cli
from models.fixtures import conv_bn, multi_consumer_conv, standalone_bn

ROOT = Path(__file__).resolve().parents[2]


def invoke(*args):
    return CliRunner().invoke(cli, ["check", *map(str, args)])


def save(model, path: Path) -> Path:
    onnx.save(model, path)
    return path


def layer_norm_after_conv_bn() -> onnx.ModelProto:
    """Conv -> BN -> LayerNormalization: one foldable BN, one per-sample normalization."""
    model = conv_bn()
    graph = model.graph
    graph.node.append(helper.make_node("LayerNormalization", ["y", "ln_scale"], ["z"], name="ln", axis=-1))
    graph.initializer.append(numpy_helper.from_array(np.ones(9, np.float32), "ln_scale"))
    del graph.output[:]
    graph.output.append(helper.make_tensor_value_info("z", TensorProto.FLOAT, ["N", 8, 9, 9]))
    return model


def test_foldable_bn_fails_the_gate_and_lists_it(tmp_path):
    before = save(conv_bn(), tmp_path / "m.onnx").read_bytes()
    result = invoke(tmp_path / "m.onnx")
    assert result.exit_code == 1, result.output
    assert "1 BN foldable into weights, 0 only as Mul+Add, 0 kept: FAIL" in result.stdout
    assert "foldable  bn -> 'y' into Conv conv [forward]" in result.stdout
    assert (tmp_path / "m.onnx").read_bytes() == before and sorted(tmp_path.iterdir()) == [tmp_path / "m.onnx"]
    assert invoke(tmp_path / "m.onnx", "--max-foldable", "1").exit_code == 0


def test_kept_and_standalone_bns_are_counted_apart(tmp_path):
    kept = save(multi_consumer_conv(), tmp_path / "kept.onnx")
    alone = save(standalone_bn(), tmp_path / "alone.onnx")
    result = invoke(kept, alone)
    assert result.exit_code == 0, result.output
    assert "0 BN foldable into weights, 0 only as Mul+Add, 1 kept: ok" in result.stdout
    assert "kept      bn -> 'y': Conv 'conv' output 'conv_out' also feeds side_relu" in result.stdout
    assert "0 BN foldable into weights, 1 only as Mul+Add, 0 kept: ok" in result.stdout
    assert invoke(kept, "--max-kept", "0").exit_code == 1
    assert invoke(alone, "--max-standalone", "0").exit_code == 1
    assert invoke(alone, "--skip", "standalone", "--max-kept", "0").exit_code == 1


def test_other_normalizations_are_listed_with_why(tmp_path):
    result = invoke(save(layer_norm_after_conv_bn(), tmp_path / "ln.onnx"), "--max-foldable", "1")
    assert result.exit_code == 0, result.output
    assert "LayerNormalization ln: not foldable, it normalizes each sample" in result.stdout


def test_json_and_exit_codes_with_a_broken_model(tmp_path):
    good = save(conv_bn(), tmp_path / "good.onnx")
    broken = tmp_path / "broken.onnx"
    broken.write_bytes(b"junk")
    result = invoke(good, broken, "--json")
    assert result.exit_code == 2, result.output
    data = json.loads(result.stdout)
    assert data["exit_code"] == 2
    first, second = data["models"]
    assert first["exit_code"] == 1 and first["bn_foldable"] == 1 and first["foldable"][0]["into_op"] == "Conv"
    assert first["violations"] == ["1 BN foldable into weights > --max-foldable 0"]
    assert second["exit_code"] == 2 and "not an ONNX model" in second["error"]
    report = tmp_path / "check.json"
    assert invoke(good, "--max-foldable", "5", "--json", report).exit_code == 0
    assert json.loads(report.read_text())["models"][0]["bn_foldable"] == 1


def test_directory_is_searched_recursively(tmp_path):
    (tmp_path / "sub").mkdir()
    save(multi_consumer_conv(), tmp_path / "a.onnx")
    save(conv_bn(), tmp_path / "sub" / "b.onnx")
    result = invoke(tmp_path, "-q")
    assert result.exit_code == 1
    assert result.stdout.startswith(f"{tmp_path / 'sub' / 'b.onnx'}: 1 BN foldable") and "a.onnx" not in result.stdout


def test_api_returns_data(tmp_path):
    path = save(layer_norm_after_conv_bn(), tmp_path / "ln.onnx")
    result = bnfold.check(path)
    assert [d.node for d in result.foldable] == ["bn"] and result.kept == [] and result.exit_code == 1
    assert [(o.op_type, o.node) for o in result.other_normalizations] == [("LayerNormalization", "ln")]
    assert bnfold.check(path, max_foldable=None).exit_code == 0
    with pytest.raises(bnfold.InputFileError, match="no such file"):
        bnfold.check(tmp_path / "missing.onnx")


@pytest.mark.slow
def test_check_never_imports_onnxruntime(tmp_path):
    path = save(conv_bn(), tmp_path / "m.onnx")
    code = ("import sys; from bnfold.__main__ import main\n"
            "try:\n    main(['check', sys.argv[1]])\n"
            "except SystemExit as exit:\n"
            "    assert 'onnxruntime' not in sys.modules, 'onnxruntime imported'\n    raise\n")
    child = subprocess.run([sys.executable, "-c", code, str(path)], capture_output=True, text=True, cwd=ROOT,
                           env={"PYTHONPATH": str(ROOT), "PATH": "/usr/bin:/bin"})
    assert child.returncode == 1, child.stderr
    assert "onnxruntime imported" not in child.stderr and "FAIL" in child.stdout


def test_an_identity_bn_a_branch_merge_absorbs_counts_as_foldable(tmp_path):
    """check reports what the default fold does: the RepVGG identity BN ends inside the merged Conv."""
    from models.fixtures import repvgg_block

    result = bnfold.check(save(repvgg_block(), tmp_path / "block.onnx"))
    assert [d.rule for d in result.foldable] == ["forward", "forward", "merge_branches"]
    assert result.standalone == [] and result.kept == []


def test_one_summary_line_and_the_command_that_fixes_it(tmp_path):
    """The run ends with one line; -q and --json FILE print only the failures and it; the fix command works."""
    kept = save(multi_consumer_conv(), tmp_path / "kept.onnx")
    first, second = save(conv_bn(), tmp_path / "a b.onnx"), save(standalone_bn(), tmp_path / "c.onnx")
    result = invoke(kept, first, second, "--max-standalone", "0")
    assert result.exit_code == 1
    lines = result.stdout.splitlines()
    assert lines[-1] == ("check: 3 models (2 over a limit, 0 in error); BN: 1 foldable into weights, 1 only as "
                         "Mul+Add, 1 kept: FAIL (exit 1)")
    assert lines[-2].startswith("to fold them: for m in ") and "--standalone" in lines[-2]
    assert any(line.startswith(f"{kept}: ") for line in lines)  # without -q, every model is listed
    for brief in (["-q"], ["--json", tmp_path / "check.json"]):
        quiet = invoke(kept, first, second, "--max-standalone", "0", *brief)
        assert quiet.exit_code == 1 and not any(line.startswith(f"{kept}: ") for line in quiet.stdout.splitlines())
        assert quiet.stdout.splitlines()[-2:] == lines[-2:]
    assert json.loads((tmp_path / "check.json").read_text())["exit_code"] == 1


@pytest.mark.slow
def test_the_fix_command_check_prints_folds_every_model_it_names(tmp_path):
    """Run as a shell would, with `bnfold` on the path: afterwards the same check passes."""
    kept = save(multi_consumer_conv(), tmp_path / "kept.onnx")
    first, second = save(conv_bn(), tmp_path / "a b.onnx"), save(standalone_bn(), tmp_path / "c.onnx")
    lines = invoke(kept, first, second, "--max-standalone", "0").stdout.splitlines()
    fix = lines[-2][len("to fold them: "):]
    shell = f'bnfold() {{ "{sys.executable}" -m bnfold "$@"; }}\n{fix}\n'
    child = subprocess.run(["bash", "-c", shell], capture_output=True, text=True, cwd=ROOT,
                           env={"PYTHONPATH": str(ROOT), "PATH": "/usr/bin:/bin"})
    assert child.returncode == 0, child.stderr
    fixed = invoke(kept, first, second, "--max-standalone", "0")
    assert fixed.exit_code == 0, fixed.output
    assert fixed.stdout.splitlines()[-1].endswith("1 kept: ok (exit 0)") and "to fold them" not in fixed.stdout


def test_single_model_fix_and_no_fix_for_kept_bns(tmp_path):
    model = save(conv_bn(), tmp_path / "m.onnx")
    result = invoke(model, "-q")
    assert result.stdout.splitlines()[-2] == f"to fold them: bnfold {model} -o {model} --overwrite"
    kept = save(multi_consumer_conv(), tmp_path / "kept.onnx")
    result = invoke(kept, "--max-kept", "0")
    assert result.exit_code == 1 and "to fold them" not in result.stdout
    assert result.stdout.splitlines()[-1].endswith("FAIL (exit 1)")
    result = invoke(model, "--json")
    assert result.exit_code == 1 and json.loads(result.stdout)["exit_code"] == 1  # stdout holds the JSON alone


def test_summary_counts_models_in_error(tmp_path):
    broken = tmp_path / "broken.onnx"
    broken.write_bytes(b"junk")
    result = invoke(save(conv_bn(), tmp_path / "good.onnx"), broken)
    assert result.exit_code == 2
    assert result.stdout.splitlines()[-1] == ("check: 2 models (1 over a limit, 1 in error); BN: 1 foldable into "
                                              "weights, 0 only as Mul+Add, 0 kept: FAIL (exit 2)")
    assert "broken.onnx" in result.stderr and result.stderr.startswith("bnfold: error: ")
