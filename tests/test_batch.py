"""bnfold.fold_files and `bnfold MODEL... -o DIR`: many models, one broken among them, -j workers, mirrored trees."""

from __future__ import annotations

import json
from pathlib import Path

import onnx
import pytest
from click.testing import CliRunner

import bnfold
from bnfold.cli import cli
from models.fixtures import conv_bn, gemm_bn, multi_consumer_conv, standalone_bn
from support import assert_same_outputs


def invoke(*args):
    return CliRunner().invoke(cli, [str(arg) for arg in args])


@pytest.fixture
def tree(tmp_path):
    """models/a.onnx, models/deep/b.onnx, models/deep/deeper/c.onnx (one kept BN), models/deep/broken.onnx."""
    root = tmp_path / "models"
    (root / "deep" / "deeper").mkdir(parents=True)
    models = {"a.onnx": conv_bn(seed=1), "deep/b.onnx": gemm_bn(seed=2),
              "deep/deeper/c.onnx": multi_consumer_conv(seed=3)}
    for relative, model in models.items():
        onnx.save(model, root / relative)
    (root / "deep" / "broken.onnx").write_bytes(b"not a model")
    (root / "notes.txt").write_text("not a model either, and not *.onnx")
    out = tmp_path / "folded"
    out.mkdir()
    return root, out, models


def test_fold_files_goes_on_after_a_broken_model(tree):
    root, out, models = tree
    result = bnfold.fold_files([root], out, jobs=1)
    by_source = {Path(m.source).relative_to(root).as_posix(): m for m in result.models}
    assert sorted(by_source) == ["a.onnx", "deep/b.onnx", "deep/broken.onnx", "deep/deeper/c.onnx"]
    broken = by_source["deep/broken.onnx"]
    assert broken.exit_code == 2 and "not an ONNX model" in broken.error and broken.report is None
    assert result.exit_code == 2 and result.failed == [broken]
    assert by_source["a.onnx"].verdict == "PASSED" and by_source["deep/deeper/c.onnx"].verdict == "unchanged"
    assert by_source["deep/deeper/c.onnx"].report.kept_count == 1
    written = sorted(p.relative_to(out).as_posix() for p in out.rglob("*") if p.is_file())
    assert written == ["a.onnx", "deep/b.onnx", "deep/deeper/c.onnx"]
    for relative, model in models.items():
        assert_same_outputs(model, onnx.load(out / relative))
    data = result.to_dict()
    assert data["exit_code"] == 2 and data["models_failed"] == 1 and len(data["models"]) == 4
    json.dumps(data)


def test_exit_code_is_the_worst_models():
    from bnfold.batch import worst_exit_code

    assert worst_exit_code([0, 1, 0]) == 1 and worst_exit_code([1, 2, 0]) == 2 and worst_exit_code([2, 3]) == 3
    assert worst_exit_code([3, 130, 0]) == 130 and worst_exit_code([]) == 0


def test_files_with_the_same_name_from_two_places_are_refused(tmp_path):
    for folder in ("x", "y"):
        (tmp_path / folder).mkdir()
        onnx.save(conv_bn(), tmp_path / folder / "m.onnx")
    with pytest.raises(bnfold.UsageError, match="would both be written as m.onnx"):
        bnfold.fold_files([tmp_path / "x" / "m.onnx", tmp_path / "y" / "m.onnx"], tmp_path)


def test_output_directory_inside_the_input_directory_is_not_read_back(tree):
    root, _, _ = tree
    inside = root / "folded"
    inside.mkdir()
    first = bnfold.fold_files([root], inside, jobs=1, verify=False)
    second = bnfold.fold_files([root], inside, jobs=1, verify=False)
    assert [m.source for m in first.models] == [m.source for m in second.models]
    assert not any("folded" in Path(m.source).relative_to(root).parts for m in second.models)


def test_cli_summary_lines_and_json_file(tree, tmp_path):
    root, out, _ = tree
    report = tmp_path / "report.json"
    result = invoke(root, "-o", out, "-j", "1", "--json", report)
    assert result.exit_code == 2, result.output
    lines = result.stdout.splitlines()
    assert [line.split("]")[0] for line in lines[:4]] == ["[1/4", "[2/4", "[3/4", "[4/4"]
    assert lines[4].split() == ["model", "BN", "folded", "BN", "kept", "verification", "time"]
    a_row = next(line for line in lines if line.startswith(str(root / "a.onnx")))
    assert a_row.split()[1:4] == ["1", "0", "PASSED"]
    assert lines[-1].startswith("4 models, 1 failed, 1 job") and lines[-1].endswith("exit code 2")
    assert result.stderr.splitlines() == [line for line in result.stderr.splitlines()
                                          if line.startswith("bnfold: error: ") and "broken.onnx" in line]
    data = json.loads(report.read_text())
    assert data["exit_code"] == 2 and [m["exit_code"] for m in data["models"]].count(0) == 3


def test_cli_several_files_need_an_existing_directory(tmp_path):
    for name in ("a.onnx", "b.onnx"):
        onnx.save(conv_bn(), tmp_path / name)
    result = invoke(tmp_path / "a.onnx", tmp_path / "b.onnx", "-o", tmp_path / "out.onnx")
    assert result.exit_code == 2 and "-o must name a directory, not a model file" in result.stderr
    result = invoke(tmp_path / "a.onnx", tmp_path / "b.onnx")
    assert result.exit_code == 2 and "no output directory" in result.stderr
    result = invoke(tmp_path / "a.onnx", tmp_path / "b.onnx", "--dry-run", "--no-verify", "--json", "-j", "1")
    assert result.exit_code == 0, result.output
    assert [m["report"]["bn_folded"] for m in json.loads(result.stdout)["models"]] == [1, 1]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.onnx", "b.onnx"]


def test_cli_json_target_that_looks_like_a_model_is_refused(tmp_path):
    onnx.save(conv_bn(), tmp_path / "a.onnx")
    data = (tmp_path / "a.onnx").read_bytes()
    result = invoke("--json", tmp_path / "a.onnx", tmp_path / "a.onnx", "-o", tmp_path / "out.onnx")
    assert result.exit_code == 2 and "looks like a model" in result.output
    assert (tmp_path / "a.onnx").read_bytes() == data


@pytest.mark.slow
def test_workers_write_the_same_bytes_as_one_process(tmp_path):
    sources = []
    for index, model in enumerate([conv_bn(seed=4), gemm_bn(seed=5), standalone_bn(seed=6), conv_bn(seed=7)]):
        sources.append(tmp_path / f"m{index}.onnx")
        onnx.save(model, sources[-1])
    (tmp_path / "bad.onnx").write_bytes(b"\x08")
    sources.append(tmp_path / "bad.onnx")
    one, two = tmp_path / "one", tmp_path / "two"
    one.mkdir(), two.mkdir()
    sequential = bnfold.fold_files(sources, one, jobs=1)
    result = invoke(*sources, "-o", two, "-j", "2")
    assert result.exit_code == sequential.exit_code == 2, result.output
    assert "2 jobs" in result.stdout.splitlines()[-1]
    names = sorted(p.name for p in one.iterdir())
    assert names == sorted(p.name for p in two.iterdir()) == ["m0.onnx", "m1.onnx", "m2.onnx", "m3.onnx"]
    for name in names:
        assert (one / name).read_bytes() == (two / name).read_bytes()
    parallel = bnfold.fold_files(sources, one, jobs=2)
    assert [m.exit_code for m in parallel.models] == [m.exit_code for m in sequential.models]
    assert [m.report.to_dict()["decisions"] for m in parallel.models[:4]] == \
        [m.report.to_dict()["decisions"] for m in sequential.models[:4]]


def test_fold_files_creates_the_output_directory(tmp_path):
    onnx.save(conv_bn(), tmp_path / "a.onnx")
    result = bnfold.fold_files([tmp_path / "a.onnx"], tmp_path / "new" / "deeper", jobs=1)
    assert result.exit_code == 0 and [n.op_type for n in onnx.load(tmp_path / "new" / "deeper" / "a.onnx").graph.node] \
        == ["Conv"]
    (tmp_path / "file").write_bytes(b"")
    with pytest.raises(bnfold.OutputError, match="cannot create the output directory"):
        bnfold.fold_files([tmp_path / "a.onnx"], tmp_path / "file", jobs=1)
