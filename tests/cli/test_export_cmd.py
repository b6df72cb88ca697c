"""`bnfold export MODULE:CALLABLE` end to end: import of the user's code, report, JSON, exit codes."""

from __future__ import annotations

import json
import sys
import textwrap

import numpy as np
import onnx
import pytest
from click.testing import CliRunner

from bnfold.cli import cli
from bnfold.checking.run import run_model

torch = pytest.importorskip("torch")
pytestmark = [pytest.mark.torch, pytest.mark.slow]  # PyTorch exports: CI, not the fast loop

USER_MODELS = """
    import torch
    from torch import nn

    def build_net():
        net = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(),
                            nn.ConvTranspose2d(8, 4, 2, stride=2), nn.BatchNorm2d(4))
        with torch.no_grad():
            for bn in (net[1], net[4]):
                bn.running_mean.uniform_(-1, 1)
                bn.running_var.uniform_(0.5, 2)
        return net

    class TwoInputs(nn.Module):
        def __init__(self):
            super().__init__()
            self.a, self.b = nn.Linear(4, 3), nn.Linear(6, 3)

        def forward(self, x, y):
            return self.a(x) + self.b(y)

    def two_inputs():
        return TwoInputs()

    class Eigen(nn.Module):
        def forward(self, x):
            return torch.linalg.eigvals(x).real

    def unexportable():
        return Eigen()

    def fresh_net():
        return nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU())
"""


@pytest.fixture
def user_project(tmp_path, monkeypatch):
    """A directory holding the user's package `userpkg`, made the current directory, as a user would run it."""
    package = tmp_path / "userpkg"
    package.mkdir()
    (package / "__init__.py").write_text("")
    (package / "models.py").write_text(textwrap.dedent(USER_MODELS))
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(sys, "path", list(sys.path))  # the command puts the current directory on sys.path
    for name in ("userpkg", "userpkg.models"):
        monkeypatch.delitem(sys.modules, name, raising=False)
    return tmp_path


def invoke(*args):
    return CliRunner().invoke(cli, ["export", *map(str, args)])


def test_export_fold_prints_the_report_and_three_way_table(user_project):
    result = invoke("userpkg.models:build_net", "-o", "net.onnx", "--input-shape", "1x3x8x8", "--fold")
    assert result.exit_code == 0, result.output
    assert "exported Sequential with the torchscript exporter (opset 17)" in result.output
    assert "put in eval()" in result.output
    assert "BatchNorm: 2 call(s) in PyTorch, 2 BatchNormalization node(s) in the export" in result.output
    assert "BatchNormalization: 2 of 2 folded" in result.output
    for pair in ("torch vs onnx", "torch vs folded", "onnx vs folded"):
        assert pair in result.output
    assert "PASSED: 3 comparison(s)" in result.output
    model = onnx.load(user_project / "net.onnx")
    assert not any(node.op_type == "BatchNormalization" for node in model.graph.node)


def test_without_fold_the_bns_are_kept_and_torch_vs_onnx_is_checked(user_project):
    result = invoke("userpkg.models:build_net", "-o", "net.onnx", "--input-shape", "1x3x8x8")
    assert result.exit_code == 0, result.output
    assert "PASSED: 1 comparison(s)" in result.output
    model = onnx.load(user_project / "net.onnx")
    assert sum(node.op_type == "BatchNormalization" for node in model.graph.node) == 2


@pytest.mark.parametrize("exporter", ["torchscript", "dynamo"])
def test_dynamic_batch_model_runs_at_batch_1_and_7(user_project, exporter):
    result = invoke("models.zoo:audio_conv1d", "-o", "audio.onnx", "--input-shape", "2x1x512", "--dynamic-batch",
                    "--fold", "--exporter", exporter, "--json")  # --json alone: the JSON on stdout, no text
    assert result.exit_code == 0, result.output
    data = json.loads(result.output)
    assert data["passed"] and data["dynamic_batch"] and data["exporter"] == exporter
    from models.zoo import audio_conv1d

    module, model = audio_conv1d(), onnx.load(user_project / "audio.onnx")
    for batch in (1, 7):
        x = torch.randn(batch, 1, 512)
        (output,) = run_model(model, {"input": x.numpy()}).values()
        with torch.no_grad():
            np.testing.assert_allclose(output, module(x).numpy(), rtol=1e-4, atol=1e-5)


def test_named_shapes_name_several_inputs_and_output_names_apply(user_project):
    result = invoke("userpkg.models:two_inputs", "-o", "two.onnx", "--input-shape", "x:2x4", "--input-shape", "y:2x6",
                    "--output-names", "sum", "--opset", "13")
    assert result.exit_code == 0, result.output
    model = onnx.load(user_project / "two.onnx")
    assert [value.name for value in model.graph.input] == ["x", "y"]
    assert [value.name for value in model.graph.output] == ["sum"]
    assert model.opset_import[0].version == 13

    renamed = invoke("userpkg.models:two_inputs", "-o", "two.onnx", "--input-shape", "2x4", "--input-shape", "2x6",
                     "--input-names", "left,right")
    assert renamed.exit_code == 0, renamed.output
    assert [value.name for value in onnx.load(user_project / "two.onnx").graph.input] == ["left", "right"]


def test_out_of_tolerance_exits_1_shows_the_failing_pair_and_writes_nothing(user_project):
    result = invoke("userpkg.models:build_net", "-o", "net.onnx", "--input-shape", "1x3x8x8", "--fold",
                    "--atol", "0", "--rtol", "0")
    assert result.exit_code == 1, result.output
    assert "FAILED" in result.output and "== torch vs" in result.output
    assert "nothing written" in result.output
    assert not (user_project / "net.onnx").exists()


def test_a_module_that_fails_to_export_is_named(user_project):
    result = invoke("userpkg.models:unexportable", "-o", "bad.onnx", "--input-shape", "2x4x4")
    assert result.exit_code == 2
    assert result.output.startswith("bnfold: error: the torchscript exporter failed on Eigen: ")
    assert result.output.count("\n") == 1
    assert not (user_project / "bad.onnx").exists()


@pytest.mark.parametrize("args, message", [
    (["userpkg.models:nothing", "--input-shape", "1x3"], "no attribute 'nothing'"),
    (["userpkg.models", "--input-shape", "1x3"], "MODULE:CALLABLE"),
    (["userpkg.models:two_inputs", "--input-shape", "x:2x4", "--input-shape", "2x6"], "name every input"),
    (["userpkg.models:two_inputs", "--input-shape", "2x4"], "forward"),
])
def test_usage_errors_exit_2_with_one_line(user_project, args, message):
    result = invoke(*args, "-o", "out.onnx")
    assert result.exit_code == 2, result.output
    assert message in result.output and result.output.count("\n") == 1


def test_help_says_user_code_is_imported_and_eval_mode(user_project):
    result = invoke("--help")
    assert result.exit_code == 0
    text = " ".join(result.output.split())
    assert "this runs your own code" in text and "put in eval()" in text


def test_fresh_statistics_are_said_to_prove_little_and_randomize_bn_proves_the_path(user_project):
    result = invoke("userpkg.models:fresh_net", "-o", "fresh.onnx", "--input-shape", "1x3x8x8", "--fold")
    assert result.exit_code == 0, result.output
    text = " ".join(result.output.split())
    assert "every BatchNorm holds a fresh module's statistics (mean 0, var 1)" in text
    assert "prove little" in text and "--randomize-bn" in text

    result = invoke("userpkg.models:fresh_net", "-o", "random.onnx", "--input-shape", "1x3x8x8", "--randomize-bn",
                    "--seed", "3", "--json", "random.json")
    assert result.exit_code == 0, result.output
    assert "prove little" not in result.output and "randomized (seed 3)" in result.output
    data = json.loads((user_project / "random.json").read_text())
    assert data["bn_randomized"] and data["bn_randomized_seed"] == 3 and data["bn_initial_statistics"] == 0
    model = onnx.load(user_project / "random.onnx")
    bn = next(node for node in model.graph.node if node.op_type == "BatchNormalization")
    values = {t.name: onnx.numpy_helper.to_array(t) for t in model.graph.initializer}
    mean, var = values[bn.input[3]], values[bn.input[4]]
    assert np.all(mean != 0) and np.all((var >= 0.5) & (var <= 2.0)) and len(set(var.tolist())) == 8
    again = invoke("userpkg.models:fresh_net", "-o", "again.onnx", "--input-shape", "1x3x8x8", "--randomize-bn",
                   "--seed", "3", "-q")
    assert again.exit_code == 0 and again.output == ""
    again_model = onnx.load(user_project / "again.onnx")
    values_again = {t.name: onnx.numpy_helper.to_array(t) for t in again_model.graph.initializer}
    np.testing.assert_array_equal(values_again[bn.input[4]], var)  # seeded: the same statistics


def test_randomize_bn_leaves_the_callers_module_alone():
    from bnfold.exporting import export

    net = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 1), torch.nn.BatchNorm2d(4))
    state = {key: value.clone() for key, value in net.state_dict().items()}
    result = export(net, torch.randn(1, 3, 4, 4), randomize_bn=True, randomize_seed=1, fold=True)
    assert result.passed and result.bn_randomized_seed == 1 and result.bn_modules == 1
    for key, value in net.state_dict().items():
        assert torch.equal(value, state[key]), key


def test_an_output_that_is_the_modules_own_source_is_refused(user_project):
    before = (user_project / "userpkg" / "models.py").read_bytes()
    result = invoke("userpkg.models:build_net", "-o", "userpkg/../userpkg/models.py", "--input-shape", "1x3x8x8")
    assert result.exit_code == 2 and "the module's source" in result.output, result.output
    assert (user_project / "userpkg" / "models.py").read_bytes() == before
