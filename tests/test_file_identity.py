"""Every file bnfold writes (model, external data, JSON report) against every file it reads (the model and its
external data) and against each other, by identity: refused with exit 2 before anything is written."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

import onnx
import pytest
from click.testing import CliRunner
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import bnfold
from bnfold.cli import cli
from bnfold.errors import OutputError
from bnfold.file_identity import identity
from bnfold.saving import save_model
from models.fixtures import conv_bn
from support import assert_same_outputs


def invoke(*args):
    return CliRunner().invoke(cli, [str(arg) for arg in args])


def snapshot(directory: Path) -> dict:
    """Every file below `directory` (links followed) by name, with its bytes."""
    return {path.relative_to(directory).as_posix(): path.read_bytes()
            for path in sorted(directory.rglob("*")) if path.is_file()}


def renamed_pair(directory: Path) -> Path:
    """orig.onnx whose weights are in model.onnx.data: an exported pair whose .onnx was renamed."""
    save_model(conv_bn(c_in=16, c_out=32, kernel=3, seed=1), directory / "model.onnx", external_data=True)
    os.rename(directory / "model.onnx", directory / "orig.onnx")
    assert (directory / "model.onnx.data").stat().st_size > 4096
    return directory / "orig.onnx"


def test_identity_sees_through_links_and_spellings(tmp_path):
    (tmp_path / "m.onnx").write_bytes(b"x")
    (tmp_path / "x").mkdir()
    os.link(tmp_path / "m.onnx", tmp_path / "hard.onnx")
    os.symlink(tmp_path / "m.onnx", tmp_path / "soft.onnx")
    os.symlink(tmp_path / "x", tmp_path / "linked_dir")
    same = {identity(tmp_path / name) for name in ("m.onnx", "hard.onnx", "soft.onnx", "x/../m.onnx")}
    assert len(same) == 1
    # Files that do not exist yet: one through a symlinked directory is the same file as the direct path.
    assert identity(tmp_path / "linked_dir" / "new.json") == identity(tmp_path / "x" / "new.json")
    assert identity(tmp_path / "x" / "new.json") != identity(tmp_path / "new.json")
    os.symlink(tmp_path / "x" / "target.onnx", tmp_path / "dangling.onnx")
    assert identity(tmp_path / "dangling.onnx") == identity(tmp_path / "x" / "target.onnx")


@pytest.mark.parametrize("args, words", [
    (["-o", "model.onnx", "--external-data"], "external data file"),
    (["-o", "model.onnx.data"], "the output model"),
    (["-o", "out.onnx", "--json", "model.onnx.data"], "the JSON report"),
    (["-o", "out.onnx", "--json", "orig.onnx.json", "--external-data"], None),  # a JSON beside: fine
    (["-o", "out.onnx", "--json", "out.onnx.data", "--external-data"], "are the same file"),
    (["-o", "out.onnx", "--json", "x/../model.onnx.data"], "the JSON report"),
    (["-o", "out.bin", "--json", "./x/../out.bin"], "are the same file"),
    (["-o", "soft.data"], "the output model"),
    (["-o", "out.onnx", "--json", "soft.data"], "the JSON report"),
    (["-o", "orig.json"], "is the input file"),
    (["-o", "out.onnx", "--json", "orig.json"], "the JSON report"),
])
def test_outputs_that_are_files_it_reads_are_refused_before_anything_is_written(tmp_path, monkeypatch, args,
                                                                                 words):
    source = renamed_pair(tmp_path)
    (tmp_path / "x").mkdir()
    os.symlink(tmp_path / "model.onnx.data", tmp_path / "soft.data")
    os.link(source, tmp_path / "orig.json")
    monkeypatch.chdir(tmp_path)
    before = snapshot(tmp_path)
    result = invoke("orig.onnx", *args)
    if words is None:
        assert result.exit_code == 0, result.output
        assert all(snapshot(tmp_path)[name] == data for name, data in before.items())
        assert_same_outputs(conv_bn(c_in=16, c_out=32, kernel=3, seed=1), bnfold.load_model(tmp_path / "out.onnx"))
        return
    assert result.exit_code == 2, result.output
    assert words in result.output
    assert "nothing was written" in result.output or "pass --overwrite" in result.output
    assert snapshot(tmp_path) == before  # nothing written, no temporary file left
    assert_same_outputs(conv_bn(c_in=16, c_out=32, kernel=3, seed=1), bnfold.load_model(source))


def test_overwrite_replaces_the_model_and_its_own_data_file(tmp_path):
    save_model(conv_bn(c_in=16, c_out=32, kernel=3, seed=1), tmp_path / "m.onnx", external_data=True)
    report = bnfold.fold_file(tmp_path / "m.onnx", tmp_path / "m.onnx", overwrite=True, external_data=True)
    assert report.written and report.verification.passed
    folded = bnfold.load_model(tmp_path / "m.onnx")
    assert not any(node.op_type == "BatchNormalization" for node in folded.graph.node)
    assert_same_outputs(conv_bn(c_in=16, c_out=32, kernel=3, seed=1), folded)


def test_overwrite_does_not_let_the_output_replace_another_models_data(tmp_path):
    source = renamed_pair(tmp_path)
    before = snapshot(tmp_path)
    with pytest.raises(OutputError, match="external data of"):
        bnfold.fold_file(source, tmp_path / "model.onnx", overwrite=True, external_data=True)
    assert snapshot(tmp_path) == before


def test_a_batch_output_that_is_another_models_input_is_refused(tmp_path):
    """src/sub/y.onnx is written to out/sub/y.onnx, which is out/sub/y.onnx given as a model of the same run."""
    (tmp_path / "src" / "sub").mkdir(parents=True)
    (tmp_path / "out" / "sub").mkdir(parents=True)
    onnx.save(conv_bn(seed=1), tmp_path / "src" / "sub" / "y.onnx")
    onnx.save(conv_bn(seed=2), tmp_path / "out" / "sub" / "y.onnx")
    before = snapshot(tmp_path)
    with pytest.raises(OutputError, match="an input model"):
        bnfold.fold_files([tmp_path / "out" / "sub" / "y.onnx", tmp_path / "src"], tmp_path / "out", jobs=1)
    assert snapshot(tmp_path) == before


def test_a_batch_output_data_file_that_is_an_inputs_data_file_is_refused(tmp_path):
    """models/model.onnx written with --external-data to out/ where out/model.onnx.data is (a hard link of) the
    data file another input reads."""
    (tmp_path / "models").mkdir()
    (tmp_path / "out").mkdir()
    source = renamed_pair(tmp_path / "models")
    onnx.save(conv_bn(seed=3), tmp_path / "models" / "plain.onnx")
    os.link(tmp_path / "models" / "model.onnx.data", tmp_path / "out" / "plain.onnx.data")
    before = snapshot(tmp_path)
    with pytest.raises(OutputError, match="external data of"):
        bnfold.fold_files([source, tmp_path / "models" / "plain.onnx"], tmp_path / "out", jobs=1,
                          external_data=True)
    assert snapshot(tmp_path) == before


def test_batch_json_naming_an_input_is_refused(tmp_path):
    (tmp_path / "models").mkdir()
    (tmp_path / "out").mkdir()
    onnx.save(conv_bn(seed=1), tmp_path / "models" / "a.onnx")
    os.symlink(tmp_path / "models" / "a.onnx", tmp_path / "report.json")
    before = snapshot(tmp_path)
    result = invoke(tmp_path / "models", "-o", tmp_path / "out", "-j", "1", "--json", tmp_path / "report.json")
    assert result.exit_code == 2 and "the JSON report" in result.output
    assert snapshot(tmp_path) == before


def test_check_json_naming_a_model_is_refused(tmp_path):
    onnx.save(conv_bn(seed=1), tmp_path / "a.onnx")
    os.link(tmp_path / "a.onnx", tmp_path / "a.json")
    before = snapshot(tmp_path)
    result = invoke("check", tmp_path / "a.onnx", "--json", tmp_path / "a.json")
    assert result.exit_code == 2 and "the JSON report" in result.output
    assert snapshot(tmp_path) == before


# --- property: any set of aliasing paths ------------------------------------------------------------------------

# Files of the scene: the input pair, and names that do not exist yet.
_TARGETS = ["orig.onnx", "model.onnx.data", "new.onnx", "new.onnx.data", "report.json"]
_SPELLINGS = ["plain", "dotdot", "symlink", "hardlink"]


def _spell(directory: Path, target: str, spelling: str, serial: int) -> str:
    """A path naming `target` in `directory`: as is, through `x/..`, a symlink or a hard link (of a file that
    exists; else as is). A hard link of the data file makes onnx refuse to read it (a "hardlink attack"): that
    run must end with exit 2 and nothing written too."""
    path = directory / target
    if spelling == "dotdot":
        return str(directory / "x" / ".." / target)
    if spelling == "symlink":
        link = directory / f"soft{serial}"
        os.symlink(path, link)
        return str(link)
    if spelling == "hardlink" and path.exists():
        link = directory / f"hard{serial}"
        os.link(path, link)
        return str(link)
    return str(path)


@settings(max_examples=30, deadline=None, suppress_health_check=list(HealthCheck))
@given(output=st.tuples(st.sampled_from(_TARGETS), st.sampled_from(_SPELLINGS)),
       report=st.none() | st.tuples(st.sampled_from(_TARGETS), st.sampled_from(_SPELLINGS)),
       external_data=st.sampled_from([None, True, False]), verify=st.booleans())
def test_aliasing_paths_are_refused_or_leave_every_input_intact(output, report, external_data, verify):
    with tempfile.TemporaryDirectory() as tmp:
        directory = Path(tmp)
        (directory / "x").mkdir()
        source = renamed_pair(directory)
        inputs = {name: (directory / name).read_bytes() for name in ("orig.onnx", "model.onnx.data")}
        out = _spell(directory, *output, 0)
        args = [source, "-o", out]
        if report is not None:
            args += ["--json", _spell(directory, *report, 1)]
        if external_data is not None:
            args.append("--external-data" if external_data else "--no-external-data")
        if not verify:
            args.append("--no-verify")
        before = snapshot(directory)
        result = invoke(*args)
        assert result.exit_code in (0, 2), result.output
        if result.exit_code == 2:
            assert snapshot(directory) == before, result.output  # refused before anything was written
        for name, data in inputs.items():
            assert (directory / name).read_bytes() == data, (args, result.output)
        for link in [*directory.glob("hard*"), *directory.glob("soft*")]:
            link.unlink()  # onnx reads no data file with other hard links
        assert_same_outputs(conv_bn(c_in=16, c_out=32, kernel=3, seed=1), bnfold.load_model(source))


def test_batch_overwrite_replaces_each_model_and_its_own_data_file_only(tmp_path):
    for name, seed in (("m.onnx", 1), ("n.onnx", 2)):
        save_model(conv_bn(c_in=16, c_out=32, kernel=3, seed=seed), tmp_path / name, external_data=True)
    result = bnfold.fold_files([tmp_path / "m.onnx", tmp_path / "n.onnx"], tmp_path, jobs=1, overwrite=True,
                               external_data=True)
    assert result.exit_code == 0, [model.error for model in result.models]
    for name, seed in (("m.onnx", 1), ("n.onnx", 2)):
        folded = bnfold.load_model(tmp_path / name)
        assert [node.op_type for node in folded.graph.node] == ["Conv"]
        assert_same_outputs(conv_bn(c_in=16, c_out=32, kernel=3, seed=seed), folded)
