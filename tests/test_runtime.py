"""ONNX Runtime sessions: sources, optimization levels, providers."""

import numpy as np
import onnx
import pytest

from bnfold import tensors
from bnfold.errors import ProviderError, UsageError
from bnfold.runtime import make_session, run
from models import fixtures


def test_a_model_past_the_protobuf_limit_runs_through_a_temporary_external_data_file(monkeypatch):
    """The 2 GiB limit is lowered so a small model stands in for a huge one (a real one does not fit CI)."""
    model = fixtures.conv_bn()
    x = np.ones((1, 4, 9, 9), np.float32)
    expected = run(make_session(model), {"x": x})["y"]
    monkeypatch.setattr(tensors, "PROTOBUF_LIMIT", 1024)
    assert tensors.exceeds_protobuf_limit(model)
    np.testing.assert_array_equal(run(make_session(model), {"x": x})["y"], expected)


def test_unknown_optimization_level_and_missing_provider_are_typed_errors():
    with pytest.raises(UsageError, match="unknown ORT optimization level"):
        make_session(fixtures.conv_bn(), opt_level="max")
    with pytest.raises(ProviderError, match="not available"):
        make_session(fixtures.conv_bn(), providers=["NoSuchExecutionProvider"])


def test_large_initializers_reach_onnx_runtime_as_arrays_not_serialized(monkeypatch):
    """A ModelProto's large weights are handed to the session as arrays beside a weightless serialization: the same
    outputs as from the whole model's bytes, an initializer that is also an input stays in the model (the user may
    feed it), and the model itself is not changed."""
    from bnfold import runtime

    model = fixtures.conv_bn(c_in=16, c_out=32, seed=3)  # a 32x16x3x3 float32 weight: 18 KiB
    monkeypatch.setattr(runtime, "HANDED_OVER_BYTES", 1024)
    before = model.SerializeToString()
    x = np.random.default_rng(0).normal(size=(1, 16, 9, 9)).astype(np.float32)
    expected = run(make_session(before), {"x": x})["y"]
    import onnxruntime as ort

    handed = {}
    real_add = ort.SessionOptions.add_external_initializers

    def recording_add(options, names, values):
        handed.update(zip(names, [value.shape() for value in values]))
        real_add(options, names, values)

    monkeypatch.setattr(ort.SessionOptions, "add_external_initializers", recording_add)
    session = make_session(model)
    assert handed == {"W": [32, 16, 3, 3]}
    np.testing.assert_array_equal(run(session, {"x": x})["y"], expected)
    assert model.SerializeToString() == before
    handed.clear()

    class Options:
        def add_external_initializers(self, names, values):
            handed.update(zip(names, values))

    as_input = fixtures.initializer_as_input()
    runtime._weightless(as_input, Options(), ort)
    inputs = {value.name for value in as_input.graph.input}
    assert not set(handed) & inputs


@pytest.mark.parametrize("ort_version", ["1.32.0", "1.20.1"], ids=["reads-the-file", "older-ort-takes-arrays"])
def test_held_weights_reach_onnx_runtime_from_their_file(tmp_path, monkeypatch, ort_version):
    """Unchanged held weights (ranges of the source file) are external data ORT reads from that file itself; a
    weight a fold replaced goes as an array. ORT before 1.21 cannot be told the file's folder: all go as arrays.
    Either way the outputs are those of the fully loaded model."""
    import onnxruntime as ort
    from onnx import numpy_helper

    from bnfold import loading, runtime
    from bnfold.tensor_store import TensorStore, is_held

    model = fixtures.conv_bn(c_in=16, c_out=32, seed=3)
    source = tmp_path / "m.onnx"
    source.write_bytes(model.SerializeToString())
    x = np.random.default_rng(0).normal(size=(1, 16, 9, 9)).astype(np.float32)
    expected = run(make_session(str(source)), {"x": x})["y"]
    monkeypatch.setattr(ort, "__version__", ort_version)
    monkeypatch.chdir(tmp_path / "..")  # ORT must find the file by the folder it is told, not the working one
    with TensorStore(source) as store:
        held = loading.load_model(source, held=store)
        weight = next(tensor for tensor in held.graph.initializer if is_held(tensor))
        options = ort.SessionOptions()
        serialized, arrays = runtime._weightless(held, options, ort)
        stub = next(tensor for tensor in onnx.load_from_string(serialized).graph.initializer if tensor.name == weight.name)
        location = {entry.key: entry.value for entry in stub.external_data}["location"]
        assert (location == "m.onnx") == (ort_version == "1.32.0")
        assert (len(arrays) == 0) == (ort_version == "1.32.0")
        np.testing.assert_array_equal(run(make_session(held), {"x": x})["y"], expected)
        doubled = numpy_helper.to_array(model.graph.initializer[0]) * 2  # a fold's new weight: an array
        store.replace(weight, doubled)
        serialized, arrays = runtime._weightless(held, ort.SessionOptions(), ort)
        assert [array.shape for array in arrays] == [doubled.shape]
        assert not np.array_equal(run(make_session(held), {"x": x})["y"], expected)


def test_the_sessions_of_one_check_share_the_weights_of_one_file(tmp_path):
    """Two models whose weights are the same bytes of one file get one OrtValue per weight (mapped from the file, or
    one copy where misaligned), used by ORT in place; both sessions compute what the fully loaded model does."""
    import onnxruntime as ort

    from bnfold import loading, runtime
    from bnfold.tensor_store import TensorStore, is_held

    model = fixtures.conv_bn(c_in=16, c_out=32, seed=3)
    source = tmp_path / "m.onnx"
    source.write_bytes(model.SerializeToString())
    x = np.random.default_rng(0).normal(size=(1, 16, 9, 9)).astype(np.float32)
    expected = run(make_session(str(source)), {"x": x})["y"]
    shared = runtime.SharedWeights()
    with TensorStore(source) as first, TensorStore(source) as second:
        models = [loading.load_model(source, held=first), loading.load_model(source, held=second)]
        weights = [next(tensor for tensor in m.graph.initializer if is_held(tensor)) for m in models]
        assert shared.value_for(weights[0], ort) is shared.value_for(weights[1], ort)
        for held in models:
            np.testing.assert_array_equal(run(make_session(held, arena=False, shared=shared), {"x": x})["y"],
                                          expected)
    assert shared.value_for(fixtures.conv_bn().graph.initializer[0], ort) is None  # not held: not shared
