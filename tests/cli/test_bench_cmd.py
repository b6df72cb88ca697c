"""`bnfold bench` end to end on CPU with tiny models: table, JSON, plot, provider failures, options."""

from __future__ import annotations

import json

import numpy as np
import onnx
import onnxruntime
import pytest
from click.testing import CliRunner
from onnx import TensorProto, helper, numpy_helper

from bnfold.cli import cli

FAST = ["--warmup", "1", "--iterations", "5", "--intra-op-threads", "1"]
CUDA_AVAILABLE = "CUDAExecutionProvider" in onnxruntime.get_available_providers()


def conv_bn_relu_files(directory, channels: int = 4):
    """model.onnx (Conv -> BatchNormalization -> Relu) and folded.onnx (the BN folded by hand) in `directory`."""
    rng = np.random.default_rng(0)
    weight = rng.standard_normal((channels, 3, 3, 3)).astype(np.float32)
    gamma, beta, mean = (rng.standard_normal(channels).astype(np.float32) for _ in range(3))
    var = rng.uniform(0.5, 2.0, channels).astype(np.float32)
    scale = gamma / np.sqrt(var + 1e-5)

    def save(name, nodes, tensors):
        graph = helper.make_graph(
            nodes, name,
            [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["N", 3, 8, 8])],
            [helper.make_tensor_value_info("output", TensorProto.FLOAT, ["N", channels, 8, 8])],
            [numpy_helper.from_array(array, key) for key, array in tensors.items()],
        )
        path = directory / f"{name}.onnx"
        onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8), path)
        return str(path)

    original = save(
        "model",
        [helper.make_node("Conv", ["input", "W"], ["conv"], pads=[1, 1, 1, 1]),
         helper.make_node("BatchNormalization", ["conv", "gamma", "beta", "mean", "var"], ["bn"], epsilon=1e-5),
         helper.make_node("Relu", ["bn"], ["output"])],
        {"W": weight, "gamma": gamma, "beta": beta, "mean": mean, "var": var},
    )
    folded = save(
        "folded",
        [helper.make_node("Conv", ["input", "W", "B"], ["conv"], pads=[1, 1, 1, 1]),
         helper.make_node("Relu", ["conv"], ["output"])],
        {"W": weight * scale[:, None, None, None], "B": beta - mean * scale},
    )
    return original, folded


@pytest.fixture()
def model_files(tmp_path):
    return conv_bn_relu_files(tmp_path)


def invoke(*args):
    return CliRunner().invoke(cli, ["bench", *args])


def test_cpu_run_prints_the_table(model_files):
    result = invoke(*model_files, "--input-shape", "input:2x3x8x8", *FAST)
    assert result.exit_code == 0, result.output
    lines = result.stdout.splitlines()
    assert "intra-op threads: 1" in lines[0] and "batch 2" in lines[0] and "input:2x3x8x8" in lines[0]
    assert lines[1].split()[:3] == ["model", "provider", "opt"]
    rows = [line.split() for line in lines[2:6]]
    assert [(row[0], row[1], row[2]) for row in rows] == [
        ("model.onnx", "cpu", "disable"), ("folded.onnx", "cpu", "disable"),
        ("model.onnx", "cpu", "all"), ("folded.onnx", "cpu", "all"),
    ]
    for row in rows:
        create_s, first, mean, p50, p90, p99, low, high, throughput, ratio = map(float, row[3:])
        assert 0 < low <= p50 <= p90 <= p99 <= high and throughput > 0 and ratio > 0
    assert "benchmarking" not in result.stderr  # no progress bar when stderr is not a terminal


def test_json_file_and_opt_levels(model_files, tmp_path):
    out = tmp_path / "out.json"
    result = invoke(*model_files, "--ort-opt-level", "basic,extended", "--json", str(out), *FAST)
    assert result.exit_code == 0, result.output
    document = json.loads(out.read_text())
    assert document["schema"] == "bnfold.bench/1"
    assert document["opt_levels"] == ["basic", "extended"]
    assert document["intra_op_threads"] == 1 and document["iterations"] == 5 and document["warmup"] == 1
    assert [row["model"] for row in document["rows"]] == ["model.onnx", "folded.onnx"] * 2
    assert all(row["error"] is None and row["p50_ms"] > 0 for row in document["rows"])


def test_json_alone_prints_json_instead_of_the_table_and_quiet_prints_no_table(model_files, tmp_path):
    result = invoke(*model_files, "--ort-opt-level", "disable", "--json", *FAST)
    assert result.exit_code == 0, result.output
    document = json.loads(result.stdout)
    assert len(document["rows"]) == 2 and "p50 ms" not in result.output
    out = tmp_path / "bench.json"
    result = invoke(*model_files, "--ort-opt-level", "disable", "--json", str(out), "-q", *FAST)
    assert result.exit_code == 0 and result.output == ""
    assert len(json.loads(out.read_text())["rows"]) == 2
    result = invoke(*model_files, "--ort-opt-level", "disable", "--json", str(out), *FAST)
    assert result.exit_code == 0 and "p50 ms" in result.stdout


def test_files_with_the_same_name_are_labelled_by_their_folders(tmp_path):
    (tmp_path / "a").mkdir(), (tmp_path / "b").mkdir()
    first, _ = conv_bn_relu_files(tmp_path / "a")
    second, _ = conv_bn_relu_files(tmp_path / "b", channels=6)
    result = invoke(first, second, "--ort-opt-level", "disable", *FAST)
    assert result.exit_code == 0, result.output
    assert [line.split()[0] for line in result.stdout.splitlines()[2:4]] == ["a/model.onnx", "b/model.onnx"]
    document = json.loads(invoke(first, second, "--ort-opt-level", "disable", "--json", *FAST).stdout)
    assert document["models"] == ["a/model.onnx", "b/model.onnx"]


def test_dynamic_dims_are_chosen_as_the_fold_check_chooses_them(tmp_path):
    """PP-OCR-style dynamic H and W: bench tries sizes as fold and verify do, and says what it chose."""
    import bnfold
    from models.fixtures import dynamic_detector

    path = tmp_path / "detector.onnx"
    onnx.save(dynamic_detector(), path)
    result = invoke(str(path), "--fold", "--ort-opt-level", "disable", "--json", *FAST)
    assert result.exit_code == 0, result.output
    document = json.loads(result.stdout)
    checked = bnfold.verify(str(path), str(path))
    assert document["input_shapes"] == {name: list(shape) for name, shape in checked.input_shapes.items()}
    assert document["shape_notes"] == checked.shape_notes and "dynamic dims chosen" in document["shape_notes"][-1]
    assert all(row["error"] is None for row in document["rows"])
    table = invoke(str(path), "--ort-opt-level", "disable", *FAST).stdout
    assert "inputs: dynamic dims chosen:" in table.splitlines()[1]


def test_dynamic_dim_no_size_fits_names_the_option(tmp_path):
    graph = helper.make_graph(
        [helper.make_node("Reshape", ["x", "shape"], ["y"])], "fixed_reshape",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, "W"])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 21])],
        [numpy_helper.from_array(np.array([1, 21], np.int64), "shape")])
    path = tmp_path / "fixed.onnx"
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8), path)
    result = invoke(str(path), "--ort-opt-level", "disable", *FAST)
    assert result.exit_code == 2
    assert "no size for the dynamic dim(s) W" in result.stderr and "--input-shape x:1x3xW" in result.stderr
    result = invoke(str(path), "--input-shape", "x:1x3x7", "--ort-opt-level", "disable", "--json", *FAST)
    assert result.exit_code == 0 and json.loads(result.stdout)["input_shapes"] == {"x": [1, 3, 7]}


def test_same_inputs_from_an_npz(model_files, tmp_path):
    data = tmp_path / "data.npz"
    np.savez(data, input=np.ones((3, 3, 8, 8), dtype=np.float32))
    result = invoke(*model_files, "--inputs", str(data), "--ort-opt-level", "disable", "--json", "-", *FAST)
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["input_shapes"] == {"input": [3, 3, 8, 8]}


def test_plot_writes_a_png(model_files, tmp_path):
    pytest.importorskip("matplotlib")
    target = tmp_path / "latency.png"
    result = invoke(*model_files, "--ort-opt-level", "disable", "--plot", str(target), *FAST)
    assert result.exit_code == 0, result.output
    assert target.read_bytes()[:4] == b"\x89PNG"


def test_missing_provider_fails_loudly_with_exit_2(model_files, tmp_path):
    out = tmp_path / "out.json"
    result = invoke(model_files[0], "--providers", "cpu,NoSuchExecutionProvider", "--ort-opt-level", "disable",
                    "--json", str(out), *FAST)
    assert result.exit_code == 2
    assert "bnfold: FAILED NoSuchExecutionProvider (1 row: model.onnx; opt disable)" in result.stderr
    assert "not available" in result.stderr
    assert "bnfold: error: 1 of 2 benchmark rows failed" in result.stderr and "--allow-fallback" in result.stderr
    rows = json.loads(out.read_text())["rows"]  # the rows that ran are still recorded
    assert rows[0]["error"] is None and "not available" in rows[1]["error"]


@pytest.mark.skipif(CUDA_AVAILABLE, reason="checks the CUDA-missing path")
def test_missing_cuda_exits_2_and_names_onnxruntime_gpu(model_files):
    result = invoke(model_files[0], "--providers", "cuda", "--ort-opt-level", "disable", *FAST)
    assert result.exit_code == 2
    assert "CUDAExecutionProvider" in result.stderr and "onnxruntime-gpu" in result.stderr


def test_allow_fallback_warns_and_succeeds(model_files):
    result = invoke(model_files[0], "--providers", "NoSuchExecutionProvider", "--ort-opt-level", "disable",
                    "--allow-fallback", *FAST)
    assert result.exit_code == 0, result.output
    assert "bnfold: FALLBACK NoSuchExecutionProvider (1 row: model.onnx; opt disable)" in result.stderr
    assert "ran on CPUExecutionProvider" in result.stderr


@pytest.mark.parametrize(
    "args, message",
    [
        (["--ort-opt-level", "fastest"], "optimization level"),
        (["--fold", "other.onnx"], "--fold takes exactly one MODEL"),
        (["--input-shape", "image:1x3x8x8"], "unknown input"),
    ],
)
def test_usage_errors_exit_2_with_one_line(model_files, args, message):
    result = invoke(model_files[0], *args, *FAST)
    assert result.exit_code == 2
    assert message in result.stderr and result.stderr.count("bnfold: error:") == 1


def test_missing_model_file_exits_2(tmp_path):
    result = invoke(str(tmp_path / "absent.onnx"), *FAST)
    assert result.exit_code == 2 and "no such file" in result.stderr


def test_fold_in_memory_compares_original_and_folded(model_files):
    pytest.importorskip("bnfold.folding")
    result = invoke(model_files[0], "--fold", "--ort-opt-level", "disable", "--json", "-", *FAST)
    assert result.exit_code == 0, result.output
    document = json.loads(result.stdout)
    assert document["models"] == ["model.onnx", "folded"]
    assert all(row["error"] is None for row in document["rows"])


def test_help_documents_the_cudnn_warmup():
    result = CliRunner().invoke(cli, ["bench", "--help"])
    assert result.exit_code == 0
    assert "--cudnn-conv-algo-search" in result.output and "--allow-fallback" in result.output
