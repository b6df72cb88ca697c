"""bnfold.benchmark: statistics against numpy, provider fallback detection, result schema, plot, a short CPU run."""

from __future__ import annotations

import json

import numpy as np
import onnx
import onnxruntime
import pytest
from onnx import TensorProto, helper, numpy_helper

from bnfold.benchmark import (
    JSON_SCHEMA,
    BenchResult,
    bench,
    make_runner,
    model_labels,
    plot,
    summarize,
    time_runs,
)
from bnfold.errors import UsageError
from bnfold.runtime import make_session

CUDA_AVAILABLE = "CUDAExecutionProvider" in onnxruntime.get_available_providers()
ROW_KEYS = {
    "model", "provider", "ort_provider", "active_providers", "opt_level", "session_create_s", "first_run_ms",
    "mean_ms", "p50_ms", "p90_ms", "p99_ms", "min_ms", "max_ms", "throughput_items_per_s", "ratio", "error",
    "warning",
}
FAST = dict(warmup=1, iterations=5)


def conv_bn_relu_models(channels: int = 4, seed: int = 0):
    """(original, folded): Conv -> BatchNormalization -> Relu, and the same with the BN folded by hand."""
    rng = np.random.default_rng(seed)
    weight = rng.standard_normal((channels, 3, 3, 3)).astype(np.float32)
    gamma, beta, mean = (rng.standard_normal(channels).astype(np.float32) for _ in range(3))
    var = rng.uniform(0.5, 2.0, channels).astype(np.float32)
    scale = gamma / np.sqrt(var + 1e-5)
    folded_weight = weight * scale[:, None, None, None]
    folded_bias = beta - mean * scale
    graph_input = helper.make_tensor_value_info("input", TensorProto.FLOAT, ["N", 3, 8, 8])
    graph_output = helper.make_tensor_value_info("output", TensorProto.FLOAT, ["N", channels, 8, 8])

    def model(nodes, tensors):
        initializers = [numpy_helper.from_array(array, name) for name, array in tensors.items()]
        graph = helper.make_graph(nodes, "conv_bn_relu", [graph_input], [graph_output], initializers)
        return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)

    original = model(
        [
            helper.make_node("Conv", ["input", "W"], ["conv"], pads=[1, 1, 1, 1]),
            helper.make_node("BatchNormalization", ["conv", "gamma", "beta", "mean", "var"], ["bn"], epsilon=1e-5),
            helper.make_node("Relu", ["bn"], ["output"]),
        ],
        {"W": weight, "gamma": gamma, "beta": beta, "mean": mean, "var": var},
    )
    folded = model(
        [
            helper.make_node("Conv", ["input", "W", "B"], ["conv"], pads=[1, 1, 1, 1]),
            helper.make_node("Relu", ["conv"], ["output"]),
        ],
        {"W": folded_weight, "B": folded_bias},
    )
    return original, folded


@pytest.fixture(scope="module")
def models():
    return conv_bn_relu_models()


# --- statistics ---------------------------------------------------------------------------------------------


def test_summarize_matches_numpy_on_known_timings():
    timings_s = [i / 1000 for i in range(1, 101)]  # 1..100 ms
    stats = summarize(timings_s, batch_size=8)
    ms = np.arange(1, 101, dtype=np.float64)
    assert stats.p50_ms == pytest.approx(np.percentile(ms, 50)) == pytest.approx(50.5)
    assert stats.p90_ms == pytest.approx(np.percentile(ms, 90)) == pytest.approx(90.1)
    assert stats.p99_ms == pytest.approx(np.percentile(ms, 99)) == pytest.approx(99.01)
    assert stats.mean_ms == pytest.approx(50.5)
    assert (stats.min_ms, stats.max_ms) == (pytest.approx(1.0), pytest.approx(100.0))
    assert stats.throughput == pytest.approx(8 / 0.0505)


def test_summarize_unsorted_and_single_timing():
    shuffled = np.random.default_rng(1).permutation([0.004, 0.001, 0.003, 0.002])
    stats = summarize(list(shuffled), batch_size=1)
    assert stats.p50_ms == pytest.approx(2.5)
    assert stats.min_ms == pytest.approx(1.0) and stats.max_ms == pytest.approx(4.0)
    single = summarize([0.002], batch_size=4)
    assert single.min_ms == single.p50_ms == single.p99_ms == single.max_ms == pytest.approx(2.0)
    assert single.throughput == pytest.approx(2000.0)


def test_summarize_rejects_no_timings():
    with pytest.raises(ValueError):
        summarize([], batch_size=1)


def test_time_runs_separates_warmup_from_timed_runs():
    durations = iter([9.0, 8.0, 1.0, 2.0, 3.0])
    first, timed = time_runs(lambda: next(durations), warmup=2, iterations=3)
    assert first == 9.0
    assert timed == [1.0, 2.0, 3.0]


def test_time_runs_without_warmup_times_the_first_run():
    durations = iter([5.0, 1.0])
    first, timed = time_runs(lambda: next(durations), warmup=0, iterations=2)
    assert first == 5.0 and timed == [5.0, 1.0]


# --- a short real run on CPU --------------------------------------------------------------------------------


def assert_ordered_positive(row):
    stats = row.stats
    assert row.session_create_s > 0 and row.first_run_ms > 0 and stats.throughput > 0
    assert 0 < stats.min_ms <= stats.p50_ms <= stats.p90_ms <= stats.p99_ms <= stats.max_ms
    assert stats.min_ms <= stats.mean_ms <= stats.max_ms


def test_bench_cpu_original_vs_folded(models):
    original, folded = models
    result = bench([("original", original), ("folded", folded)], input_shapes=["input:2x3x8x8"],
                   intra_op_threads=1, **FAST)
    assert isinstance(result, BenchResult)
    assert [(row.model, row.opt_level) for row in result.rows] == [
        ("original", "disable"), ("folded", "disable"), ("original", "all"), ("folded", "all"),
    ]
    assert not result.failures and not result.warnings
    assert result.batch_size == 2 and result.input_shapes == {"input": (2, 3, 8, 8)}
    assert result.intra_op_threads == 1
    for row in result.rows:
        assert row.active_providers[0] == "CPUExecutionProvider"
        assert_ordered_positive(row)
        assert row.ratio > 0
    assert all(row.ratio == 1.0 for row in result.rows if row.model == "original")
    table = result.table()
    assert "intra-op threads: 1" in table and "p50 ms" in table and "ratio:" in table


def test_bench_from_paths_labels_models_by_file_name(models, tmp_path):
    original, folded = models
    paths = []
    for name, model in (("model.onnx", original), ("folded.onnx", folded)):
        onnx.save(model, tmp_path / name)
        paths.append(str(tmp_path / name))
    result = bench(paths, opt_levels=["basic"], **FAST)
    assert result.models == ["model.onnx", "folded.onnx"]
    assert result.batch_size == 1  # dynamic batch defaults to 1
    assert result.intra_op_threads >= 1


def test_single_model_has_no_ratio(models):
    result = bench(models[0], opt_levels=["disable"], **FAST)
    assert result.models == ["model1"] and result.rows[0].ratio is None
    assert result.to_dict()["ratio_of"] is None


def test_same_inputs_for_every_model_from_data(models):
    original, folded = models
    data = np.ones((3, 3, 8, 8), dtype=np.float32)
    result = bench([original, folded], inputs={"input": data}, opt_levels=["disable"], **FAST)
    assert result.input_shapes == {"input": (3, 3, 8, 8)} and result.batch_size == 3


def test_models_with_different_inputs_are_refused(models):
    other = onnx.ModelProto()
    other.CopyFrom(models[1])
    other.graph.input[0].name = "image"
    other.graph.node[0].input[0] = "image"
    with pytest.raises(UsageError, match="same inputs"):
        bench([models[0], other], **FAST)


@pytest.mark.parametrize(
    "options, message",
    [
        (dict(opt_levels=["fastest"]), "optimization level"),
        (dict(iterations=0), "iterations"),
        (dict(cudnn_conv_algo_search="SOMETIMES"), "cuDNN"),
        (dict(providers=[]), "execution provider"),
    ],
)
def test_bad_settings_are_usage_errors(models, options, message):
    with pytest.raises(UsageError, match=message):
        bench(models[0], **{**FAST, **options})


def test_progress_is_reported_per_row_and_at_the_end(models):
    calls = []
    bench(list(models), opt_levels=["disable"], progress=lambda *args: calls.append(args), **FAST)
    assert [(done, total) for done, total, _ in calls] == [(0, 2), (1, 2), (2, 2)]
    assert calls[0][2] == "model1 cpu disable"


def test_iobinding_runner_on_cpu_memory(models):
    """The IOBinding path CUDA uses, exercised with CPU memory so it runs everywhere."""
    session = make_session(models[0], opt_level="disable")
    feeds = {"input": np.zeros((1, 3, 8, 8), dtype=np.float32)}
    run_once = make_runner(session, feeds, device="cpu")
    assert run_once() > 0 and run_once() > 0


# --- provider fallback --------------------------------------------------------------------------------------


def test_missing_provider_fails_its_rows_with_the_reason(models):
    result = bench(models[0], providers=["cpu", "NoSuchExecutionProvider"], opt_levels=["disable"], **FAST)
    ok, missing = result.rows
    assert not ok.failed and ok.stats is not None
    assert missing.failed and missing.stats is None and missing.session_create_s is None
    assert "NoSuchExecutionProvider" in missing.error and "not available" in missing.error
    assert result.failures == [missing]
    assert result.problems() == [f"FAILED NoSuchExecutionProvider (1 row: model1; opt disable): {missing.error}"]
    assert result.problems()[0] in result.table() and result.problems()[0] not in result.table(with_problems=False)


@pytest.mark.skipif(CUDA_AVAILABLE, reason="checks the CUDA-missing path")
def test_missing_cuda_is_reported_not_silently_run_on_cpu(models):
    result = bench(models[0], providers=["cuda"], opt_levels=["disable"], **FAST)
    (row,) = result.rows
    assert row.failed and "CUDAExecutionProvider" in row.error and "onnxruntime-gpu" in row.error


def test_allow_fallback_runs_on_cpu_with_a_warning(models):
    result = bench(models[0], providers=["NoSuchExecutionProvider"], opt_levels=["disable"], allow_fallback=True,
                   **FAST)
    (row,) = result.rows
    assert not row.failed and row.active_providers[0] == "CPUExecutionProvider"
    assert "ran on CPUExecutionProvider" in row.warning
    assert result.warnings == [row] and not result.failures
    assert "NoSuchExecutionProvider!" in result.table()
    assert result.problems() == [f"FALLBACK NoSuchExecutionProvider (1 row: model1; opt disable): {row.warning}"]


def test_silent_fallback_is_detected(models, monkeypatch):
    """ORT accepting a provider but not activating it (a broken CUDA install) must fail the row too."""
    import bnfold.runtime

    real_ort = bnfold.runtime.import_onnxruntime()

    class SessionWithoutThePlugin:
        def __init__(self, *args, **kwargs):
            self._session = real_ort.InferenceSession(*args, **{**kwargs, "providers": ["CPUExecutionProvider"]})

        def __getattr__(self, name):
            return getattr(self._session, name)

    class FakeOrt:
        def __getattr__(self, name):
            return getattr(real_ort, name)

        InferenceSession = SessionWithoutThePlugin

        @staticmethod
        def get_available_providers():
            return ["PluginExecutionProvider", "CPUExecutionProvider"]

    monkeypatch.setattr(bnfold.runtime, "import_onnxruntime", lambda: FakeOrt())
    result = bench(models[0], providers=["PluginExecutionProvider"], opt_levels=["disable"], **FAST)
    assert result.rows[0].failed and "fell back" in result.rows[0].error


# --- JSON and plot ------------------------------------------------------------------------------------------


def test_to_dict_schema(models):
    result = bench(list(models), providers=["cpu", "NoSuchExecutionProvider"], opt_levels=["disable"], **FAST)
    document = json.loads(json.dumps(result.to_dict()))
    assert document["schema"] == JSON_SCHEMA
    assert document["models"] == ["model1", "model2"]
    assert document["providers"] == ["cpu", "NoSuchExecutionProvider"]
    assert document["opt_levels"] == ["disable"]
    assert document["input_shapes"] == {"input": [1, 3, 8, 8]}
    assert document["ratio_of"] == "p50_ms"
    for key in ("onnxruntime_version", "warmup", "iterations", "intra_op_threads", "batch_size", "seed",
                "cudnn_conv_algo_search"):
        assert key in document
    assert len(document["rows"]) == 4
    for row in document["rows"]:
        assert set(row) == ROW_KEYS
    ok = [row for row in document["rows"] if row["error"] is None]
    assert [row["ort_provider"] for row in ok] == ["CPUExecutionProvider"] * 2
    assert all(row["p50_ms"] > 0 and row["throughput_items_per_s"] > 0 for row in ok)
    failed = [row for row in document["rows"] if row["error"]]
    assert len(failed) == 2 and all(row["p50_ms"] is None and row["ratio"] is None for row in failed)


def test_plot_writes_a_png(models, tmp_path):
    pytest.importorskip("matplotlib")
    result = bench(list(models), providers=["cpu", "NoSuchExecutionProvider"], **FAST)
    target = tmp_path / "latency.png"
    plot(result, target)
    assert target.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_plot_without_matplotlib_names_the_extra(models, tmp_path, monkeypatch):
    import sys

    from bnfold.errors import MissingDependencyError

    monkeypatch.setitem(sys.modules, "matplotlib.figure", None)
    result = bench(models[0], opt_levels=["disable"], **FAST)
    with pytest.raises(MissingDependencyError, match=r"bnfold\[plot\]"):
        result.plot(tmp_path / "latency.png")


# --- CUDA ---------------------------------------------------------------------------------------------------


@pytest.mark.cuda
@pytest.mark.skipif(not CUDA_AVAILABLE, reason="needs the CUDA execution provider (pip install onnxruntime-gpu)")
def test_cuda_run_uses_iobinding_and_reports_cuda_active(models):
    result = bench(list(models), providers=["cuda"], opt_levels=["disable"], cudnn_conv_algo_search="HEURISTIC",
                   **FAST)
    for row in result.rows:
        assert not row.failed and row.active_providers[0] == "CUDAExecutionProvider"
        assert_ordered_positive(row)


def test_model_labels_are_the_shortest_distinguishing_path_ends():
    assert model_labels(["a/x.onnx", "b/x.onnx", "y.onnx"]) == ["a/x.onnx", "b/x.onnx", "y.onnx"]
    assert model_labels(["m/a/x.onnx", "n/a/x.onnx"]) == ["m/a/x.onnx", "n/a/x.onnx"]
    assert model_labels(["x.onnx", "d/x.onnx"]) == ["x.onnx", "d/x.onnx"]
    assert model_labels(["./d/x.onnx", "d/x.onnx"]) == ["x.onnx", "x.onnx#2"]  # the same file twice
    assert model_labels(["/abs/p/x.onnx", "/abs/q/x.onnx", "/abs/q/z.onnx"]) == ["p/x.onnx", "q/x.onnx", "z.onnx"]
