"""The tensor store: fold_file keeps large initializers' bytes in the source file (or, once folded, as arrays) from load
to save. What it writes must be what bnfold.fold + save_model write, byte for byte, whatever path the bytes take."""

from __future__ import annotations

import errno
import os
import tempfile
from pathlib import Path

import numpy as np
import onnx
import pytest
from hypothesis import given
from onnx import TensorProto, helper, numpy_helper

from bnfold import atomic_write, fold, fold_file, loading, parsing, saving, tensor_store
from bnfold.errors import BnfoldError
from bnfold.tensor_store import TensorStore, is_held
from bnfold.tensor_store import value as tensor_array
from models import fixtures
from support import assert_same_outputs
from test_properties import multi_node_graphs, property_settings
from test_scope_properties import scoped_models

ROOT = Path(__file__).resolve().parent.parent
MODELS = sorted((ROOT / "models" / "zoo").glob("*.onnx")) + sorted((ROOT / "models" / "fixtures").glob("*.onnx"))


def expected_bytes(source: Path, tmp_path: Path, **options) -> bytes:
    """What the in-memory path writes: bnfold.fold on a fully parsed model, then save_model."""
    model, _ = fold(loading.load_model(source), local_check=False)
    target = tmp_path / "expected.onnx"
    saving.save_model(model, target, **options)
    return target.read_bytes()


def conv_bn_gemm(seed: int = 0) -> onnx.ModelProto:
    """Conv (18 KiB weight) -> BN -> Flatten -> Gemm (a 64 KiB weight no BN touches)."""
    rng = np.random.default_rng(seed)
    weight = numpy_helper.from_array(rng.normal(size=(32, 16, 3, 3)).astype(np.float32), "w")
    weight.doc_string = "kept through the fold"
    gemm = numpy_helper.from_array(rng.normal(size=(32 * 4 * 4, 32)).astype(np.float32), "fc")
    nodes = [helper.make_node("Conv", ["x", "w"], ["c"], pads=[1, 1, 1, 1]),
             fixtures.bn_node("c", "b", "bn"),
             helper.make_node("Flatten", ["b"], ["f"]),
             helper.make_node("Gemm", ["f", "fc"], ["y"])]
    return fixtures.make_model(nodes, [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 16, 4, 4])],
                               [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 32])],
                               [weight, gemm, *fixtures.bn_parameters(32, rng, "bn")])


def save(model: onnx.ModelProto, path: Path) -> Path:
    onnx.save(model, path)
    return path


@pytest.mark.parametrize("source", MODELS, ids=[path.stem for path in MODELS])
def test_fold_file_writes_what_fold_and_save_write(source, tmp_path):
    fold_file(source, tmp_path / "folded.onnx", verify=False)
    assert (tmp_path / "folded.onnx").read_bytes() == expected_bytes(source, tmp_path)


def test_the_zoo_has_held_tensors_and_they_read_as_parsed():
    """The byte comparison above proves something only if tensors are held; and held ones read as parsed ones."""
    held_count = 0
    for source in MODELS:
        plain = {tensor.name: numpy_helper.to_array(tensor) for tensor in loading.load_model(source).graph.initializer}
        with TensorStore(source) as store:
            model = loading.load_checked_model(source, held=store)
            for tensor in model.graph.initializer:
                held_count += is_held(tensor)
                value = tensor_array(tensor)
                assert value.dtype == plain[tensor.name].dtype
                np.testing.assert_array_equal(value, plain[tensor.name])
    assert held_count >= 20


def test_verified_fold_file_writes_the_same_bytes(tmp_path):
    for source in MODELS[:6]:
        report = fold_file(source, tmp_path / "folded.onnx")
        assert report.verification is None or report.verification.passed
        assert (tmp_path / "folded.onnx").read_bytes() == expected_bytes(source, tmp_path), source.name


def test_weights_no_fold_changes_are_copied_without_being_read(tmp_path, monkeypatch):
    source = save(conv_bn_gemm(), tmp_path / "m.onnx")
    reads = []
    real_read = TensorStore.read
    monkeypatch.setattr(TensorStore, "read", lambda self, fd, offset, length, dtype:
                        reads.append(length) or real_read(self, fd, offset, length, dtype))
    fold_file(source, tmp_path / "folded.onnx", verify=False)
    assert reads and 32 * 4 * 4 * 32 * 4 not in reads  # the Conv weight was read, the Gemm weight never
    assert (tmp_path / "folded.onnx").read_bytes() == expected_bytes(source, tmp_path)
    folded = onnx.load(tmp_path / "folded.onnx")
    assert folded.graph.initializer[0].doc_string == "kept through the fold"


@pytest.mark.parametrize("failure", ["exdev", "absent"])
def test_copy_without_copy_file_range_writes_the_same_bytes(tmp_path, monkeypatch, failure):
    source = save(conv_bn_gemm(), tmp_path / "m.onnx")
    if failure == "absent":
        monkeypatch.delattr(saving.os, "copy_file_range", raising=False)
    else:
        def refuse(*args):
            raise OSError(errno.EXDEV, os.strerror(errno.EXDEV))

        monkeypatch.setattr(saving.os, "copy_file_range", refuse)
    monkeypatch.setattr(atomic_write, "_COPY_BLOCK", 1000)  # several blocks, the last one short
    fold_file(source, tmp_path / "folded.onnx", verify=False)
    assert (tmp_path / "folded.onnx").read_bytes() == expected_bytes(source, tmp_path)


@pytest.mark.parametrize("verify", [False, True])
def test_external_data_output_holds_the_same_tensors(tmp_path, verify):
    """With verification on, the folded weights (held arrays) are read back from the data file being written
    while the end-to-end check runs: the held entry outlives the copy of the tensor that the save rewrites."""
    source = save(conv_bn_gemm(), tmp_path / "m.onnx")
    (tmp_path / "held").mkdir()
    (tmp_path / "expected").mkdir()
    report = fold_file(source, tmp_path / "held" / "folded.onnx", verify=verify, external_data=True)
    assert report.written and (report.verification is not None) == verify
    model, _ = fold(loading.load_model(source), local_check=False)
    saving.save_model(model, tmp_path / "expected" / "folded.onnx", external_data=True)
    for name in ("folded.onnx", "folded.onnx.data"):
        assert (tmp_path / "held" / name).read_bytes() == (tmp_path / "expected" / name).read_bytes()
    reloaded = loading.load_model(tmp_path / "held" / "folded.onnx")
    assert not any(is_held(tensor) for tensor in reloaded.graph.initializer)
    assert_same_outputs(conv_bn_gemm(), reloaded)


@pytest.mark.slow
@pytest.mark.parametrize("source", sorted((ROOT / "models" / "zoo").glob("*.onnx")), ids=lambda path: path.stem)
def test_every_zoo_model_folds_verified_to_external_data(source, tmp_path):
    report = fold_file(source, tmp_path / "folded.onnx", external_data=True)
    assert report.written and report.verification is not None and report.verification.passed
    assert_same_outputs(loading.load_model(source), loading.load_model(tmp_path / "folded.onnx"))


def test_overwriting_the_input_reads_the_old_file_to_the_end(tmp_path):
    source = save(conv_bn_gemm(), tmp_path / "m.onnx")
    expected = expected_bytes(source, tmp_path)
    fold_file(source, source, verify=False, overwrite=True)
    assert source.read_bytes() == expected


def test_a_refold_after_a_failed_local_check_holds_tensors_too(tmp_path, monkeypatch):
    import bnfold.rules.producers as producers

    original = fixtures.conv_bn(c_in=16, c_out=32, kernel=3, seed=1)  # an 18 KiB weight: held
    source = save(original, tmp_path / "m.onnx")
    real_fold_bias, real_hold_range = producers.fold_bias, TensorStore.hold_range
    holds = []
    monkeypatch.setattr(producers, "fold_bias", lambda *args: real_fold_bias(*args) + 0.5)  # a wrong fold
    monkeypatch.setattr(TensorStore, "hold_range", lambda self, tensor, offset, length:
                        holds.append(tensor.name) or real_hold_range(self, tensor, offset, length))
    report = fold_file(source, tmp_path / "folded.onnx")
    assert "local check failed" in report.decisions[0].reason
    assert holds.count("W") == 2  # loaded, and loaded again for the second fold: held both times
    folded = onnx.load(tmp_path / "folded.onnx")
    assert [node.op_type for node in folded.graph.node] == ["Conv", "BatchNormalization"]
    assert_same_outputs(original, folded)


@pytest.mark.parametrize("missing", ["preadv", "pread"])
def test_reads_without_preadv_or_pread(tmp_path, monkeypatch, missing):
    """Platforms without os.preadv (macOS before Python 3.12) or os.pread (Windows) read through os.read."""
    source = save(conv_bn_gemm(), tmp_path / "m.onnx")
    monkeypatch.delattr(tensor_store.os, "preadv", raising=False)
    if missing == "pread":
        monkeypatch.delattr(tensor_store.os, "pread", raising=False)
    monkeypatch.delattr(saving.os, "copy_file_range", raising=False)
    fold_file(source, tmp_path / "folded.onnx", verify=False)
    assert (tmp_path / "folded.onnx").read_bytes() == expected_bytes(source, tmp_path)


def test_a_held_tensor_does_not_outlive_its_fold(tmp_path):
    source = save(conv_bn_gemm(), tmp_path / "m.onnx")
    with TensorStore(source) as store:
        model = loading.load_model(source, held=store)
        tensor = next(tensor for tensor in model.graph.initializer if is_held(tensor))
        assert tensor_array(tensor).shape == tuple(tensor.dims)
    with pytest.raises(BnfoldError, match="held data that is gone"):
        tensor_array(tensor)


def test_unknown_fields_are_kept_and_held_weights_written_in_full(tmp_path):
    model = conv_bn_gemm()
    data = model.SerializeToString() + b"\xf8\x3e\x07"  # field 999, varint 7: a field this onnx does not know
    source = tmp_path / "m.onnx"
    source.write_bytes(data)
    fold_file(source, tmp_path / "folded.onnx", verify=False)
    written = (tmp_path / "folded.onnx").read_bytes()
    assert written == expected_bytes(source, tmp_path)
    assert written.endswith(b"\xf8\x3e\x07")


def test_scalars_and_empty_tensors_held_by_a_fold_are_written_whole(tmp_path):
    source = save(conv_bn_gemm(), tmp_path / "m.onnx")
    with TensorStore(source) as store:
        model = loading.load_model(source, held=store)
        tensors = [tensor for tensor in model.graph.initializer if is_held(tensor)][:2]
        store.replace(tensors[0], np.array(2.5, np.float32))
        store.replace(tensors[1], np.zeros((0, 3), np.int64))
        saving.save_model(model, tmp_path / "out.onnx")
        for tensor in tensors:
            np.testing.assert_array_equal(numpy_helper.to_array(tensor_store.in_proto(tensor)), tensor_array(tensor))
    written = {tensor.name: numpy_helper.to_array(tensor) for tensor in onnx.load(tmp_path / "out.onnx").graph.initializer}
    assert written[tensors[0].name].shape == () and written[tensors[0].name] == np.float32(2.5)
    assert written[tensors[1].name].shape == (0, 3) and written[tensors[1].name].dtype == np.int64


def test_loading_without_a_store_holds_nothing():
    model = loading.load_model(MODELS[0])
    assert not any(is_held(tensor) for tensor in model.graph.initializer)
    assert tensor_store.HELD_LOCATION.startswith("#")  # onnx.checker looks for no file at such a location


# --- random graphs: every main-graph initializer held ----------------------------------------------------------


def _held_fold_matches(model: onnx.ModelProto, directory: Path, *, verify: bool, check: bool = True) -> None:
    """fold_file with every main-graph initializer held (however small) writes what fold + save_model write."""
    source = directory / "m.onnx"
    onnx.save(model, source)
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(parsing, "_MEASURED_BYTES", 0)
        holds = []
        real_hold_range = TensorStore.hold_range
        patch.setattr(TensorStore, "hold_range", lambda self, tensor, offset, length:
                      holds.append(tensor.name) or real_hold_range(self, tensor, offset, length))
        fold_file(source, directory / "held.onnx", verify=verify, check=check)
    assert holds
    assert (directory / "held.onnx").read_bytes() == expected_bytes(source, directory)


@pytest.mark.slow
@given(multi_node_graphs())
@property_settings(150)
def test_random_graphs_fold_the_same_held(model):
    with tempfile.TemporaryDirectory() as directory:
        _held_fold_matches(model, Path(directory), verify=False)


@pytest.mark.slow
@given(multi_node_graphs())
@property_settings(15)
def test_random_graphs_verify_and_fold_the_same_held(model):
    with tempfile.TemporaryDirectory() as directory:
        _held_fold_matches(model, Path(directory), verify=True)


@pytest.mark.slow
@given(scoped_models())
@property_settings(40)
def test_random_scoped_models_fold_the_same_held(case):
    with tempfile.TemporaryDirectory() as directory:
        # Their untyped outputs fail onnx.checker, which bnfold.fold does not run.
        _held_fold_matches(case[0], Path(directory), verify=False, check=False)


# --- the store's boundary ---------------------------------------------------------------------------------------

PACKAGE = ROOT / "bnfold"
# What any module may use: a tensor's value, a new value for it, and questions that need no store.
FOR_EVERYONE = {"value", "replace", "same_value", "is_external", "in_proto"}
# The layers that put tensors in a store, write them from it, and hand them to ONNX Runtime.
STORE_LAYERS = {"tensor_store", "parsing", "reading", "loading", "serializing", "atomic_write", "external_placement",
                "saving", "runtime"}


def _store_uses(path: Path):
    """(names taken from bnfold.tensor_store, whether numpy_helper.to_array is called, whether the held marker is
    spelled, whether a tensor's raw_data is read) for one module."""
    import ast

    tree = ast.parse(path.read_text(), str(path))
    names, to_array, marker, raw = set(), False, False, False
    module_alias = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom):
            if (node.module or "").endswith("tensor_store"):
                names.update(alias.name for alias in node.names)
            for alias in node.names:
                if alias.name == "tensor_store":
                    module_alias.add(alias.asname or alias.name)
                if alias.name == "to_array":
                    to_array = True
        elif isinstance(node, ast.Attribute):
            if node.attr == "to_array":
                to_array = True
            if node.attr == "raw_data":
                raw = True
            if isinstance(node.value, ast.Name) and node.value.id in module_alias:
                names.add(node.attr)
        elif isinstance(node, ast.Constant) and isinstance(node.value, str) and "bnfold-held" in node.value:
            marker = True
    return names, to_array, marker, raw


def test_tensor_bytes_are_read_in_one_module_and_the_store_known_only_to_its_layers():
    """Code that folds or checks reads a tensor with tensor_store.value and rewrites it with replace, whoever holds
    it: a new module calling numpy_helper.to_array, or asking a store for more, fails here (a held weight would be
    misread)."""
    modules = sorted(PACKAGE.rglob("*.py"))
    assert len(modules) > 50
    problems = []
    for path in modules:
        name = path.stem
        names, to_array, marker, raw = _store_uses(path)
        if to_array and name != "tensor_store":
            problems.append(f"{path.relative_to(ROOT)} calls numpy_helper.to_array (use tensor_store.value)")
        if marker and name != "tensor_store":
            problems.append(f"{path.relative_to(ROOT)} spells the held marker")
        if raw and name not in STORE_LAYERS:
            problems.append(f"{path.relative_to(ROOT)} reads raw_data (use tensor_store.value)")
        beyond = sorted(names - FOR_EVERYONE)
        if beyond and (name not in STORE_LAYERS or path.parent != PACKAGE):
            problems.append(f"{path.relative_to(ROOT)} uses the store itself: {beyond}")
    assert problems == []


def test_the_boundary_check_sees_each_kind_of_use(tmp_path):
    (tmp_path / "a.py").write_text("from onnx import numpy_helper\nx = numpy_helper.to_array(t)\n")
    (tmp_path / "b.py").write_text("from .. import tensor_store\ns = tensor_store.store_of(t)\n")
    (tmp_path / "c.py").write_text("from ..tensor_store import value, TensorStore\nl = '#bnfold-held'\nr = t.raw_data\n")
    assert _store_uses(tmp_path / "a.py") == (set(), True, False, False)
    assert _store_uses(tmp_path / "b.py") == ({"store_of"}, False, False, False)
    assert _store_uses(tmp_path / "c.py") == ({"value", "TensorStore"}, False, True, True)


def test_value_and_replace_work_on_any_tensor(tmp_path):
    """The same two calls read and rewrite a tensor in its proto and a held one, keeping its other fields."""
    source = save(conv_bn_gemm(), tmp_path / "m.onnx")
    plain = numpy_helper.from_array(np.arange(6, dtype=np.float32).reshape(2, 3), "p")
    plain.doc_string = "kept"
    with TensorStore(source) as store:
        model = loading.load_model(source, held=store)
        held_tensor = next(tensor for tensor in model.graph.initializer if is_held(tensor))
        for tensor in (plain, held_tensor):
            new = np.full((4, 1), 3.5, np.float32)
            tensor_store.replace(tensor, new)
            np.testing.assert_array_equal(tensor_store.value(tensor), new)
            assert tuple(tensor.dims) == (4, 1)
            whole = tensor_store.in_proto(tensor)
            assert not is_held(whole) and whole.name == tensor.name
            np.testing.assert_array_equal(numpy_helper.to_array(whole), new)
        assert plain.doc_string == "kept" and held_tensor.doc_string == "kept through the fold"
        assert is_held(held_tensor) and not is_held(plain)
        assert tensor_store.same_value(plain, held_tensor)
        tensor_store.replace(held_tensor, np.array(["a"], dtype=object))  # not holdable: back into the proto
        assert not is_held(held_tensor) and tensor_store.value(held_tensor).tolist() == ["a"]


def test_same_value_of_the_same_file_range_reads_nothing(tmp_path, monkeypatch):
    """The end-to-end check asks whether each weight of the original is the folded model's: the same bytes of the
    same file (two stores, opened by two paths) are the same value without reading either."""
    source = save(conv_bn_gemm(), tmp_path / "m.onnx")
    (tmp_path / "link.onnx").symlink_to(source)
    with TensorStore(source) as first, TensorStore(tmp_path / "link.onnx") as second:
        a = loading.load_model(source, held=first)
        b = loading.load_model(tmp_path / "link.onnx", held=second)
        pairs = [(x, y) for x, y in zip(a.graph.initializer, b.graph.initializer) if is_held(x)]
        assert len(pairs) == 2 and all(is_held(y) for _, y in pairs)
        monkeypatch.setattr(TensorStore, "read", lambda *args: pytest.fail("read a file range to compare it"))
        assert all(tensor_store.same_value(x, y) for x, y in pairs)
        assert not tensor_store.same_value(pairs[0][0], pairs[1][1])  # another range (and shape)
        monkeypatch.undo()
        second.replace(pairs[0][1], tensor_array(pairs[0][1]) + 1)  # a fold rewrote it: compared by value
        assert not tensor_store.same_value(*pairs[0])
        second.replace(pairs[0][1], tensor_array(pairs[0][0]).copy())
        assert tensor_store.same_value(*pairs[0])


@pytest.mark.parametrize("first, second, same", [
    ([1.0, np.nan, 2.0], [1.0, np.nan, 2.0], True),
    ([0.0, 1.0], [-0.0, 1.0], True),  # different bits, equal values
    ([1.0, 2.0], [1.0, 2.5], False),
    ([[1.0, 2.0]], [[1.0], [2.0]], False),
])
def test_same_value_compares_values_not_bits(first, second, same):
    a = numpy_helper.from_array(np.array(first, np.float32), "a")
    b = numpy_helper.from_array(np.array(second, np.float32), "b")
    b.ClearField("raw_data")
    b.float_data.extend(np.array(second, np.float32).reshape(-1).tolist())  # typed fields: compared as values
    assert tensor_store.same_value(a, b) is same


def test_a_file_range_maps_as_a_read_only_view_when_aligned(tmp_path):
    source = save(conv_bn_gemm(), tmp_path / "m.onnx")
    with TensorStore(source) as store:
        model = loading.load_model(source, held=store)
        held_tensors = [tensor for tensor in model.graph.initializer if is_held(tensor)]
        for tensor in held_tensors:
            view = store.mapped(tensor)
            offset = store.file_range(tensor)[1]
            if offset % 4:
                assert view is None  # misaligned for float32: the caller reads a copy instead
                continue
            np.testing.assert_array_equal(view, tensor_array(tensor))
            assert not view.flags.writeable and view.shape == tuple(tensor.dims)
        store.replace(held_tensors[0], np.ones((2, 2), np.float32))
        assert store.mapped(held_tensors[0]) is None  # held as an array


def test_a_misaligned_range_is_not_mapped(tmp_path):
    """A weight whose bytes start at an odd offset of the file (protobuf does not align raw data)."""
    seen = set()
    for pad in range(4):
        model = conv_bn_gemm()
        model.doc_string = "x" * pad  # moves every later byte of the file
        source = save(model, tmp_path / f"m{pad}.onnx")
        with TensorStore(source) as store:
            loaded = loading.load_model(source, held=store)
            for tensor in (t for t in loaded.graph.initializer if is_held(t)):
                misaligned = bool(store.file_range(tensor)[1] % 4)
                seen.add(misaligned)
                assert (store.mapped(tensor) is None) == misaligned
    assert seen == {False, True}
