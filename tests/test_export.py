"""bnfold.export: PyTorch -> ONNX with every BN kept, its result object, errors, and the optional torch dependency."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import onnx
import pytest

from bnfold.errors import ExportError, MissingDependencyError, UsageError, VerificationFailed
from bnfold.checking.run import run_model

pytestmark = pytest.mark.slow  # PyTorch exports: CI, not the fast loop

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture
def torch():
    return pytest.importorskip("torch")


@pytest.fixture
def zoo(torch):
    from models import zoo

    return zoo


def run_python(code: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", textwrap.dedent(code)], cwd=ROOT, capture_output=True, text=True,
                          timeout=120)


def bnfold_export(*args, **kwargs):
    """bnfold.exporting.export, imported when a test runs (the module itself never imports torch)."""
    from bnfold.exporting import export

    return export(*args, **kwargs)


def two_input_two_output(torch):
    """Conv+BN on an image and Linear+BN1d on a feature vector: two inputs, two outputs."""
    nn = torch.nn

    class TwoInTwoOut(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv, self.bn = nn.Conv2d(3, 4, 3, padding=1), nn.BatchNorm2d(4)
            self.fc, self.bn1d = nn.Linear(5, 6), nn.BatchNorm1d(6)

        def forward(self, image, features):
            return self.bn(self.conv(image)), self.bn1d(self.fc(features))

    from models.zoo import randomize_batchnorm_statistics

    return randomize_batchnorm_statistics(TwoInTwoOut()).eval()


def unexportable(torch):
    """linalg.eigvals has no ONNX translation in either exporter."""

    class Eigen(torch.nn.Module):
        def forward(self, x):
            return torch.linalg.eigvals(x).real

    return Eigen()


@pytest.mark.torch
@pytest.mark.parametrize("exporter", ["torchscript", "dynamo"])
def test_export_keeps_every_bn_and_unpacks_to_model_and_report(torch, zoo, exporter, tmp_path):
    path = tmp_path / "net.onnx"
    model, report = bnfold_export(zoo.resnet_style(), torch.randn(2, 3, 32, 32), path, exporter=exporter)
    assert report is None
    assert sum(node.op_type == "BatchNormalization" for node in model.graph.node) == 6
    assert all(
        attribute.i == 0
        for node in model.graph.node if node.op_type == "BatchNormalization"
        for attribute in node.attribute if attribute.name == "training_mode"
    )
    assert onnx.load(path).graph.node == model.graph.node


@pytest.mark.torch
@pytest.mark.parametrize("exporter", ["torchscript", "dynamo"])
@pytest.mark.parametrize("example_batch", [1, 2])
def test_dynamic_batch_runs_at_batch_1_and_7(torch, zoo, exporter, example_batch, tmp_path):
    """Also from a batch-1 example, which torch.export alone would fix as the batch."""
    module = zoo.mobilenet_style()
    path = tmp_path / "net.onnx"
    bnfold_export(module, torch.randn(example_batch, 3, 32, 32), path, fold=True, exporter=exporter,
                  dynamic_batch=True)
    model = onnx.load(path)
    assert model.graph.input[0].type.tensor_type.shape.dim[0].dim_param == "batch"
    for batch in (1, 7):
        x = torch.randn(batch, 3, 32, 32)
        (output,) = run_model(model, {"input": x.numpy()}).values()
        with torch.no_grad():
            np.testing.assert_allclose(output, module(x).numpy(), rtol=1e-4, atol=1e-5)


@pytest.mark.torch
def test_dynamic_batch_that_the_exporter_fixed_is_refused(torch, monkeypatch, tmp_path):
    """A forward that branches on a batch of 1, traced from the batch-1 example as given: torch.export fixes the
    batch at 1 (as with timm's efficientvit_m0). bnfold says so and writes nothing."""
    import bnfold.torch_exporters

    class BatchOfOneBranch(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.bn = torch.nn.BatchNorm2d(3)

        def forward(self, x):
            return self.bn(x * 2 if x.shape[0] == 1 else x * 3)

    monkeypatch.setattr(bnfold.torch_exporters, "batch_of_two", lambda inputs, torch: inputs)
    with pytest.raises(ExportError, match=r"fixed the batch of BatchOfOneBranch's input\(s\) 'input' \[1, 3, 8, 8\]"):
        bnfold_export(BatchOfOneBranch(), torch.randn(1, 3, 8, 8), tmp_path / "net.onnx", exporter="dynamo",
                      dynamic_batch=True)
    assert list(tmp_path.iterdir()) == []


@pytest.mark.torch
def test_comparison_table_shows_what_decided_the_verdict(torch, zoo):
    """Each pair's row gives the atol its worst output needs at the rtol used, beside the atol allowed."""
    result = bnfold_export(zoo.resnet_style(), torch.randn(2, 3, 32, 32), fold=True)
    table = result.render()
    for name, comparison in result.comparisons.items():
        worst = max(comparison.outputs, key=lambda output: output.min_atol / output.atol)
        assert worst.min_atol <= worst.atol
        row = next(line for line in table.splitlines() if line.startswith(name))
        assert f"{worst.min_atol:.2e} / {worst.atol:.0e} (rtol {worst.rtol:.0e})" in row and row.endswith("ok")
    assert "max rel" not in table


@pytest.mark.torch
def test_without_dynamic_batch_the_batch_is_fixed(torch, zoo):
    model, _ = bnfold_export(zoo.mlp_bn1d(), torch.randn(4, 32))
    assert model.graph.input[0].type.tensor_type.shape.dim[0].dim_value == 4


@pytest.mark.torch
@pytest.mark.parametrize("exporter, default_opset", [("torchscript", 17), ("dynamo", 18)])
def test_opset_default_and_choice(torch, zoo, exporter, default_opset):
    def opset_of(model):
        return next(entry.version for entry in model.opset_import if entry.domain in ("", "ai.onnx"))

    result = bnfold_export(zoo.mlp_bn1d(), torch.randn(4, 32), exporter=exporter)
    assert result.opset == opset_of(result.model) == default_opset
    chosen = 19 if exporter == "dynamo" else 13
    assert opset_of(bnfold_export(zoo.mlp_bn1d(), torch.randn(4, 32), exporter=exporter, opset=chosen).model) == chosen


@pytest.mark.torch
def test_dynamo_below_opset_18_converts_or_says_why_not(torch, zoo):
    converted = bnfold_export(zoo.mlp_bn1d(), torch.randn(4, 32), exporter="dynamo", opset=17).model
    assert [entry.version for entry in converted.opset_import if entry.domain == ""] == [17]
    # onnx's converter leaves ReduceMean-18's noop_with_empty_axes on a ReduceMean-17: refused, not written.
    with pytest.raises(ExportError, match="ResNetStyle.*opset 17.*torchscript"):
        bnfold_export(zoo.resnet_style(), torch.randn(1, 3, 32, 32), exporter="dynamo", opset=17)


@pytest.mark.torch
@pytest.mark.parametrize("exporter", ["torchscript", "dynamo"])
def test_input_and_output_names_and_several_inputs(torch, exporter):
    module = two_input_two_output(torch)
    inputs = (torch.randn(2, 3, 8, 8), torch.randn(2, 5))
    result = bnfold_export(module, inputs, fold=True, exporter=exporter, input_names=["image", "features"],
                           output_names=["map", "vector"])
    assert [value.name for value in result.model.graph.input] == ["image", "features"]
    assert [value.name for value in result.model.graph.output] == ["map", "vector"]
    assert result.fold_report.folded_count == 2 and result.passed

    default = bnfold_export(module, inputs)
    assert [value.name for value in default.model.graph.input] == ["input_0", "input_1"]
    assert [value.name for value in default.model.graph.output] == ["output_0", "output_1"]


@pytest.mark.torch
def test_wrong_number_of_names_is_a_usage_error(torch, zoo):
    with pytest.raises(UsageError, match="1 input"):
        bnfold_export(zoo.mlp_bn1d(), torch.randn(4, 32), input_names=["a", "b"])
    with pytest.raises(UsageError, match="1 output"):
        bnfold_export(zoo.mlp_bn1d(), torch.randn(4, 32), output_names=["a", "b"])
    with pytest.raises(UsageError, match="unknown exporter"):
        bnfold_export(zoo.mlp_bn1d(), torch.randn(4, 32), exporter="onnxscript")


@pytest.mark.torch
def test_module_is_exported_in_eval_mode_and_its_mode_restored(torch, zoo):
    module = zoo.resnet_style().train()
    module.stem.eval()
    x = torch.randn(2, 3, 32, 32)
    result = bnfold_export(module, x)
    assert result.was_training and "eval()" in result.render()
    assert module.training and not module.stem.training and module.layer1.bn1.training
    module.eval()
    with torch.no_grad():
        np.testing.assert_allclose(
            run_model(result.model, {"input": x.numpy()})["output"], module(x).numpy(), rtol=1e-4, atol=1e-5
        )


@pytest.mark.torch
@pytest.mark.parametrize("exporter", ["torchscript", "dynamo"])
def test_a_module_that_fails_to_export_names_the_module_and_the_cause(torch, exporter, tmp_path):
    path = tmp_path / "net.onnx"
    with pytest.raises(ExportError, match=rf"the {exporter} exporter failed on Eigen: .*eig") as caught:
        bnfold_export(unexportable(torch), torch.randn(2, 4, 4), path, exporter=exporter)
    assert "\n" not in str(caught.value)
    assert not path.exists()


@pytest.mark.torch
def test_out_of_tolerance_raises_and_writes_nothing_unless_forced(torch, zoo, tmp_path):
    path = tmp_path / "net.onnx"
    with pytest.raises(VerificationFailed, match="torch vs onnx") as caught:
        bnfold_export(zoo.resnet_style(), torch.randn(2, 3, 32, 32), path, fold=True, atol=0.0, rtol=0.0)
    result = caught.value.result
    assert not result.passed and not result.written and not path.exists()
    assert "FAILED" in result.render() and "== torch vs onnx ==" in result.render()

    forced = bnfold_export(zoo.resnet_style(), torch.randn(2, 3, 32, 32), path, fold=True, atol=0.0, rtol=0.0,
                           force=True)
    assert forced.written and path.exists() and not forced.passed


@pytest.mark.torch
def test_a_batchnorm_missing_from_the_export_is_reported(torch):
    class DiscardsBatchNorm(torch.nn.Module):
        """The second BN runs in PyTorch but its result is unused, so the exporter drops it."""

        def __init__(self):
            super().__init__()
            self.conv, self.bn, self.unused = torch.nn.Conv2d(3, 4, 3), torch.nn.BatchNorm2d(4), torch.nn.BatchNorm2d(4)

        def forward(self, x):
            y = self.conv(x)
            self.unused(y)
            return self.bn(y)

    result = bnfold_export(DiscardsBatchNorm(), torch.randn(1, 3, 8, 8))
    assert (result.bn_calls, result.bn_nodes, result.bn_folded_by_exporter) == (2, 1, 1)
    assert "no node in the export" in result.render()
    assert result.to_dict()["bn_folded_by_exporter"] == 1


@pytest.mark.torch
def test_result_json_has_the_three_way_comparison(torch, zoo):
    import json

    data = json.loads(json.dumps(bnfold_export(zoo.two_branch(), torch.randn(1, 3, 16, 16), fold=True).to_dict()))
    assert data["passed"] and data["module"] == "TwoBranch" and data["exporter"] == "torchscript"
    assert set(data["comparisons"]) == {"torch vs onnx", "torch vs folded", "onnx vs folded"}
    assert data["fold"]["bn_total"] == data["bn_nodes_exported"] == data["bn_calls_in_torch"] == 4


@pytest.mark.torch
def test_load_module_factory_and_build_module_errors(torch, tmp_path, monkeypatch):
    from bnfold.exporting import build_module, load_module_factory

    (tmp_path / "user_factories.py").write_text(textwrap.dedent("""
        import torch
        NOT_CALLABLE = 3
        class Holder:
            @staticmethod
            def build():
                return torch.nn.Linear(2, 2)
        def not_a_module():
            return 42
        def raises():
            raise ValueError("bad config")
    """))
    monkeypatch.syspath_prepend(str(tmp_path))
    assert isinstance(build_module("user_factories:Holder.build"), torch.nn.Linear)
    assert callable(load_module_factory("models.zoo:resnet_style"))
    for target, error, message in [
        ("no_colon", UsageError, "MODULE:CALLABLE"),
        ("no_such_module_xyz:build", UsageError, "cannot import 'no_such_module_xyz'"),
        ("user_factories:missing", UsageError, "no attribute 'missing'"),
        ("user_factories:NOT_CALLABLE", UsageError, "not a callable"),
        ("user_factories:not_a_module", UsageError, "returned a int"),
        ("user_factories:raises", ExportError, "ValueError: bad config"),
    ]:
        with pytest.raises(error, match=message):
            build_module(target)


@pytest.mark.torch
def test_dynamo_without_onnxscript_says_how_to_install(torch, zoo, monkeypatch):
    monkeypatch.setitem(sys.modules, "onnxscript", None)
    with pytest.raises(MissingDependencyError, match=r"onnxscript: pip install 'bnfold\[torch\]'"):
        bnfold_export(zoo.mlp_bn1d(), torch.randn(4, 32), exporter="dynamo")


def test_missing_torch_gives_the_install_hint(monkeypatch):
    monkeypatch.setitem(sys.modules, "torch", None)
    from bnfold.exporting import import_torch

    with pytest.raises(MissingDependencyError, match=r"^PyTorch is not installed: pip install 'bnfold\[torch\]'$"):
        import_torch()
    with pytest.raises(MissingDependencyError):
        bnfold_export(object(), ())


def test_importing_bnfold_does_not_import_torch():
    completed = run_python("""
        import sys
        import bnfold, bnfold.folding, bnfold.cli, bnfold.exporting, bnfold.cli.export_cmd
        bnfold.fold, bnfold.verify, bnfold.export
        heavy = sorted(name for name in ("torch", "onnxscript", "onnx_ir") if name in sys.modules)
        assert not heavy, heavy
    """)
    assert completed.returncode == 0, completed.stderr


def test_bnfold_works_without_torch_and_export_says_how_to_install_it(tmp_path):
    completed = run_python(f"""
        import sys
        sys.modules["torch"] = None  # as if torch were not installed
        from click.testing import CliRunner
        from bnfold.cli import cli
        runner = CliRunner()
        assert runner.invoke(cli, ["--help"]).exit_code == 0
        assert runner.invoke(cli, ["export", "--help"]).exit_code == 0
        result = runner.invoke(cli, ["export", "models.zoo:resnet_style", "-o", r"{tmp_path / 'x.onnx'}",
                                     "--input-shape", "1x3x32x32"])
        print(result.exit_code)
        print(result.output, end="")
    """)
    assert completed.returncode == 0, completed.stderr
    exit_code, *lines = completed.stdout.splitlines()
    assert exit_code == "2"
    assert lines == ["bnfold: error: PyTorch is not installed: pip install 'bnfold[torch]'"]
    assert not (tmp_path / "x.onnx").exists()
