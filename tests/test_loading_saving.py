"""Loading and saving: typed errors for every bad input, safe external data, and writes that are atomic and crash-safe."""

from __future__ import annotations

import errno
import os
import signal
import stat
import subprocess
import sys
import textwrap
import threading
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from bnfold import atomic_write, loading, saving, tensors
from bnfold.errors import ExternalDataError, InputFileError, InvalidModelError, ModelLoadError, OutputError
from models import fixtures
from models.fixtures import conv_bn
from support import assert_same_outputs

ROOT = Path(__file__).resolve().parent.parent


def model_bytes(model: onnx.ModelProto) -> bytes:
    return model.SerializeToString()


def temporaries(directory: Path) -> list:
    """Leftover temporary files of an atomic write (hidden, .tmp suffix)."""
    return sorted(p.name for p in directory.iterdir() if p.name.endswith(".tmp"))


def big_conv_bn() -> onnx.ModelProto:
    """A Conv+BN whose weight (16 KiB) goes to the external data file."""
    return conv_bn(c_in=16, c_out=32, kernel=3, seed=1)


# --- loading bad inputs ----------------------------------------------------------------------------------------


def test_missing_path(tmp_path):
    with pytest.raises(InputFileError, match="no such file"):
        loading.load_model(tmp_path / "absent.onnx")


def test_directory(tmp_path):
    with pytest.raises(InputFileError, match="is a directory"):
        loading.load_model(tmp_path)


def test_empty_file(tmp_path):
    path = tmp_path / "empty.onnx"
    path.write_bytes(b"")
    with pytest.raises(ModelLoadError, match="empty"):
        loading.load_model(path)


@pytest.mark.parametrize("seed", range(5))
def test_random_bytes(tmp_path, seed):
    path = tmp_path / "random.onnx"
    path.write_bytes(np.random.default_rng(seed).bytes(4096))
    with pytest.raises(ModelLoadError):
        loading.load_model(path)


def test_every_truncation_is_refused():
    """Cut anywhere, a model fails to load, or (cut exactly between two top-level fields) fails the checker."""
    data = model_bytes(conv_bn())
    for cut in range(1, len(data)):
        try:
            model = loading.parse_model_bytes(data[:cut])
        except ModelLoadError:
            continue
        with pytest.raises(InvalidModelError):
            loading.check_model(model)


@pytest.mark.parametrize("message", [
    helper.make_tensor("t", TensorProto.FLOAT, [2], [1.0, 2.0]),
    helper.make_graph([], "g", [], []),
    helper.make_node("Relu", ["x"], ["y"]),
    helper.make_opsetid("", 17),
], ids=["TensorProto", "GraphProto", "NodeProto", "OperatorSetIdProto"])
def test_valid_protobuf_that_is_not_a_model(message):
    with pytest.raises(ModelLoadError, match="not an ONNX model"):
        loading.parse_model_bytes(message.SerializeToString())


def test_tensor_data_shorter_than_its_shape():
    model = conv_bn()
    weight = model.graph.initializer[0]
    weight.raw_data = weight.raw_data[:-4]
    with pytest.raises(ModelLoadError, match="tensor 'W'"):
        loading.parse_model_bytes(model_bytes(model))


def test_unknown_tensor_type():
    model = conv_bn()
    model.graph.initializer[0].data_type = 79
    with pytest.raises(ModelLoadError, match="unknown type 79"):
        loading.parse_model_bytes(model_bytes(model))


def test_name_that_is_not_utf8():
    model = conv_bn()
    model.graph.node[0].name = "CONVNAME"
    data = model_bytes(model).replace(b"CONVNAME", b"CONV\xdaAME")
    with pytest.raises(ModelLoadError, match="NodeProto.name is not valid UTF-8"):
        loading.parse_model_bytes(data)


def test_model_failing_the_checker_is_one_line():
    model = conv_bn()
    model.graph.node[0].input[1] = "nowhere"
    with pytest.raises(InvalidModelError) as caught:
        loading.check_model(model)
    assert "\n" not in str(caught.value) and "nowhere" in str(caught.value)


def test_opset_newer_than_onnx_knows(tmp_path):
    model = conv_bn()
    model.opset_import[0].version = 99
    with pytest.raises(InvalidModelError, match="opset 99"):
        loading.check_model(model)
    path = tmp_path / "new.onnx"
    onnx.save(model, path)
    with pytest.raises(InvalidModelError, match="opset 99"):
        loading.check_model(path)


def test_piecewise_parse_equals_protobufs(tmp_path):
    """The loader parses field by field from a memory map: the same model as one ParseFromString, also when the
    graph field is split in two (protobuf merges them) and an initializer carries typed data instead of raw data."""
    model = big_conv_bn()
    typed = numpy_helper.from_array(np.arange(2048, dtype=np.float32), "typed")
    typed.float_data.extend(np.frombuffer(typed.raw_data, np.float32).tolist())
    typed.ClearField("raw_data")
    model.graph.initializer.append(typed)
    extra = onnx.ModelProto()
    extra.graph.initializer.append(numpy_helper.from_array(np.ones((64, 64), np.float32), "late"))
    data = model_bytes(model) + model_bytes(extra)
    path = tmp_path / "split.onnx"
    path.write_bytes(data)
    expected = onnx.ModelProto()
    expected.ParseFromString(data)
    assert model_bytes(loading.load_model(path)) == model_bytes(expected)
    assert model_bytes(loading.load_checked_model(path)) == model_bytes(expected)


def test_external_data_moves_typed_tensor_data_and_keeps_the_tensors_fields(tmp_path):
    """A large tensor stored in typed fields (float_data) moves to the data file like raw data, with its doc
    string; the reloaded model computes the same as the original."""
    model = big_conv_bn()
    weight = model.graph.initializer[0]
    values = numpy_helper.to_array(weight)
    weight.ClearField("raw_data")
    weight.float_data.extend(values.reshape(-1).tolist())
    weight.doc_string = "typed, with a doc string"
    saving.save_model(model, tmp_path / "out.onnx", external_data=True)
    reloaded = loading.load_model(tmp_path / "out.onnx")
    moved = next(tensor for tensor in onnx.load(tmp_path / "out.onnx", load_external_data=False).graph.initializer
                 if tensor.name == weight.name)
    assert moved.data_location == onnx.TensorProto.EXTERNAL and moved.doc_string == "typed, with a doc string"
    np.testing.assert_array_equal(numpy_helper.to_array(next(
        tensor for tensor in reloaded.graph.initializer if tensor.name == weight.name)), values)
    assert_same_outputs(model, reloaded)


def test_checked_load_keeps_the_checkers_verdict(tmp_path):
    """load_checked_model shows the checker a skeleton without large weights: graph errors are still found, and a
    large tensor with too little data is refused (by the loader) as before."""
    model = big_conv_bn()
    model.graph.node[0].input[0] = "nowhere"
    path = tmp_path / "bad_graph.onnx"
    onnx.save(model, path)
    with pytest.raises(InvalidModelError, match="nowhere"):
        loading.load_checked_model(path)
    model = big_conv_bn()
    weight = model.graph.initializer[0]
    weight.raw_data = weight.raw_data[:-4]
    onnx.save(model, path)
    with pytest.raises(ModelLoadError, match="does not hold valid data"):
        loading.load_checked_model(path)


def test_save_writes_a_tensor_whose_data_defies_its_dims_exactly(tmp_path):
    """Saving predicts large tensors' sizes from dims and type; a tensor that does not match is written the exact
    way, so the file is still the model's own encoding."""
    model = big_conv_bn()
    weight = model.graph.initializer[0]
    weight.raw_data = weight.raw_data + b"\0" * 8
    saving.save_model(model, tmp_path / "m.onnx")
    assert (tmp_path / "m.onnx").read_bytes() == model_bytes(model)
    assert temporaries(tmp_path) == []


def test_check_model_accepts_a_path(tmp_path):
    path = tmp_path / "m.onnx"
    onnx.save(conv_bn(), path)
    loading.check_model(path, full_check=True)


def test_tensor_bytes_counts_declared_data():
    model = conv_bn(c_in=4, c_out=8, kernel=3)
    assert tensors.tensor_bytes(model) == sum(numpy_helper.to_array(t).nbytes for t in model.graph.initializer)


# --- external data ---------------------------------------------------------------------------------------------


@pytest.fixture
def external_model(tmp_path):
    """A model saved with its weight in model.onnx.data; returns the model path."""
    path = tmp_path / "model.onnx"
    saving.save_model(big_conv_bn(), path, external_data=True)
    assert (tmp_path / "model.onnx.data").stat().st_size >= 16 * 1024
    return path


def set_external(path: Path, **changes) -> None:
    """Rewrite the external_data entries of every external tensor of the model file at `path`."""
    model = onnx.load(str(path), load_external_data=False)
    for tensor in tensors.iter_tensors(model):
        if tensor.data_location == TensorProto.EXTERNAL:
            info = {entry.key: entry.value for entry in tensor.external_data}
            info.update(changes)
            del tensor.external_data[:]
            for key, value in info.items():
                entry = tensor.external_data.add()
                entry.key, entry.value = key, value
    path.write_bytes(model.SerializeToString())


def test_external_data_round_trip(external_model):
    loaded = loading.load_model(external_model)
    assert model_bytes(loaded) == model_bytes(big_conv_bn())


def test_external_data_missing(external_model):
    (external_model.parent / "model.onnx.data").unlink()
    with pytest.raises(ExternalDataError, match="missing"):
        loading.load_model(external_model)


def test_external_data_truncated(external_model):
    data = external_model.parent / "model.onnx.data"
    data.write_bytes(data.read_bytes()[:-100])
    with pytest.raises(ExternalDataError, match="truncated"):
        loading.load_model(external_model)


def test_external_data_length_disagrees_with_shape(external_model):
    set_external(external_model, length="64")
    with pytest.raises(ExternalDataError, match="does not hold valid data"):
        loading.load_model(external_model)


@pytest.mark.parametrize("location", ["../outside.data", "sub/../../outside.data", "/etc/passwd"])
def test_external_data_outside_the_model_directory_is_refused(external_model, location):
    outside = external_model.parent.parent / "outside.data"
    outside.write_bytes((external_model.parent / "model.onnx.data").read_bytes())
    set_external(external_model, location=location)
    with pytest.raises(ExternalDataError, match="leaves the model's directory|absolute"):
        loading.load_model(external_model)


def test_external_data_symlink_leaving_the_directory_is_refused(external_model, tmp_path_factory):
    elsewhere = tmp_path_factory.mktemp("elsewhere") / "weights.data"
    elsewhere.write_bytes((external_model.parent / "model.onnx.data").read_bytes())
    (external_model.parent / "link.data").symlink_to(elsewhere)
    set_external(external_model, location="link.data")
    with pytest.raises(ExternalDataError, match="leaves the model's directory"):
        loading.load_model(external_model)


@pytest.mark.parametrize("changes,match", [
    ({"offset": "lots"}, "not integers"),
    ({"offset": "-8"}, "negative"),
    ({"location": ""}, "names no file"),
    ({"location": "a\0b"}, "invalid"),
])
def test_malformed_external_data_entries(external_model, changes, match):
    set_external(external_model, **changes)
    with pytest.raises(ExternalDataError, match=match):
        loading.load_model(external_model)


# --- writing ---------------------------------------------------------------------------------------------------


def test_save_writes_a_loadable_file_with_the_usual_mode(tmp_path):
    path = tmp_path / "out.onnx"
    saving.save_model(conv_bn(), path)
    assert model_bytes(loading.load_model(path)) == model_bytes(conv_bn())
    umask = os.umask(0)
    os.umask(umask)
    assert stat.S_IMODE(path.stat().st_mode) == 0o666 & ~umask
    assert temporaries(tmp_path) == []


def test_replacing_a_file_keeps_its_mode(tmp_path):
    path = tmp_path / "out.onnx"
    path.write_bytes(b"old")
    path.chmod(0o640)
    saving.save_model(conv_bn(), path)
    assert stat.S_IMODE(path.stat().st_mode) == 0o640


def test_missing_output_directory(tmp_path):
    with pytest.raises(OutputError, match="does not exist"):
        saving.save_model(conv_bn(), tmp_path / "no" / "such" / "out.onnx")


def test_output_path_is_a_directory(tmp_path):
    with pytest.raises(OutputError, match="is a directory"):
        saving.save_model(conv_bn(), tmp_path)


def fail_on_call(monkeypatch, name: str, error_number: int, call: int = 1):
    """Make os.<name> raise OSError(error_number) on its `call`-th call (earlier calls work)."""
    real = getattr(os, name)
    calls = []

    def failing(*args, **kwargs):
        calls.append(args)
        if len(calls) == call:
            raise OSError(error_number, os.strerror(error_number))
        return real(*args, **kwargs)

    monkeypatch.setattr(saving.os, name, failing)


@pytest.mark.parametrize("function,error_number,message", [
    ("fsync", errno.ENOSPC, "disk full"),
    ("replace", errno.ENOSPC, "disk full"),
    ("fsync", errno.EIO, "Input/output error"),
])
def test_failed_write_leaves_the_old_file_and_no_temporary(tmp_path, monkeypatch, function, error_number, message):
    path = tmp_path / "out.onnx"
    path.write_bytes(b"previous contents")
    fail_on_call(monkeypatch, function, error_number)
    with pytest.raises(OutputError, match=message):
        saving.save_model(conv_bn(), path)
    assert path.read_bytes() == b"previous contents"
    assert temporaries(tmp_path) == []


def test_unwritable_directory(tmp_path, refuse_file_creation):
    with pytest.raises(OutputError, match="cannot write to .*Permission denied"):
        saving.save_model(conv_bn(), tmp_path / "out.onnx")
    assert list(tmp_path.iterdir()) == []


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes into read-only directories")
def test_read_only_directory(tmp_path):
    directory = tmp_path / "ro"
    directory.mkdir()
    directory.chmod(0o500)
    try:
        with pytest.raises(OutputError, match="cannot write"):
            saving.save_model(conv_bn(), directory / "out.onnx")
    finally:
        directory.chmod(0o700)


def test_failure_writing_the_model_leaves_the_old_external_data(tmp_path, monkeypatch):
    """Both files are complete on disk before either is renamed: a failed model write replaces neither."""
    path = tmp_path / "model.onnx"
    saving.save_model(conv_bn(c_in=16, c_out=32, seed=7), path, external_data=True)
    before = {name: (tmp_path / name).read_bytes() for name in ("model.onnx", "model.onnx.data")}
    fail_on_call(monkeypatch, "fsync", errno.ENOSPC, call=2)  # the data file's fsync works, the model's fails
    with pytest.raises(OutputError, match="disk full"):
        saving.save_model(big_conv_bn(), path, external_data=True)
    assert {name: (tmp_path / name).read_bytes() for name in before} == before
    assert temporaries(tmp_path) == []


def test_interrupt_during_write_removes_the_temporary(tmp_path, monkeypatch):
    path = tmp_path / "out.onnx"
    path.write_bytes(b"previous contents")

    def interrupted(fd):
        raise KeyboardInterrupt

    monkeypatch.setattr(saving.os, "fsync", interrupted)
    with pytest.raises(KeyboardInterrupt):
        saving.save_model(conv_bn(), path)
    assert path.read_bytes() == b"previous contents"
    assert temporaries(tmp_path) == []


def test_model_above_the_protobuf_limit_needs_external_data(tmp_path, monkeypatch):
    monkeypatch.setattr(tensors, "PROTOBUF_LIMIT", 5000)  # the 18 KiB weight is above, the rest below
    with pytest.raises(OutputError, match="2 GiB limit.*--external-data"):
        saving.save_model(big_conv_bn(), tmp_path / "out.onnx", external_data=False)
    saving.save_model(big_conv_bn(), tmp_path / "out.onnx")  # default: external data above the limit
    assert (tmp_path / "out.onnx.data").exists()
    assert model_bytes(loading.load_model(tmp_path / "out.onnx")) == model_bytes(big_conv_bn())


# --- crash safety ----------------------------------------------------------------------------------------------

# A writer that, asked `<point> <fill>` on stdin, forks a child to save the version filled with <fill> over the
# model; the child stops at <point> of the write and says `stalled <pid>`, to be SIGKILLed there. The writer
# imports bnfold once (it is single-threaded, so forking it is safe) and reports how each child ended.
KILLED_WRITER = textwrap.dedent("""
    import os
    import sys
    import time
    import numpy as np
    from onnx import TensorProto, helper, numpy_helper
    from bnfold import atomic_write
    from bnfold.saving import save_model

    path, external = sys.argv[1], sys.argv[2] == "1"

    def version(fill):
        payload = numpy_helper.from_array(np.full(1_000_000, fill, np.float32), "payload")
        graph = helper.make_graph([helper.make_node("Identity", ["payload"], ["y"])], "g", [],
                                  [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1_000_000])], [payload])
        return helper.make_model(graph)

    def stall_at(module, name, number, first=lambda real, *args: None, counted=lambda *args: True):
        real, calls = getattr(module, name), [0]

        def stalled(*args):
            calls[0] += counted(*args)
            if calls[0] == number:
                first(real, *args)
                print("stalled", os.getpid(), flush=True)
                time.sleep(60)
                os._exit(1)
            return real(*args)

        setattr(module, name, stalled)

    POINTS = {
        # half of the first large block of the first file written
        "writing": lambda: stall_at(atomic_write, "_write_all", 1, lambda real, fd, data: real(fd, data[:len(data) // 2]),
                                    lambda fd, data: len(data) >= 1 << 20),
        "first-file-written": lambda: stall_at(os, "fsync", 1),  # not yet fsynced
        "all-files-fsynced": lambda: stall_at(os, "replace", 1),  # none renamed
        "between-renames": lambda: stall_at(os, "replace", 2),  # data file renamed, model not
        "renamed": lambda: stall_at(atomic_write, "_fsync_dir", 1),  # directory not yet fsynced
    }

    print("ready", flush=True)
    for line in sys.stdin:
        point, fill = line.split()
        pid = os.fork()
        if pid == 0:
            POINTS[point]()
            save_model(version(float(fill)), path, external_data=external)
            print("finished", flush=True)
            os._exit(0)
        _, status = os.waitpid(pid, 0)
        print("signal", os.WTERMSIG(status) if os.WIFSIGNALED(status) else None, flush=True)
""")
# Where each kill lands, and the version the target must then load as (None: either, complete).
KILL_POINTS = [("writing", "old"), ("first-file-written", "old"), ("all-files-fsynced", "old"),
               ("between-renames", None), ("renamed", "new")]


@pytest.mark.parametrize("external", [False, True], ids=["single-file", "external-data"])
def test_kill_during_write_leaves_old_or_new_file(tmp_path, external):
    """SIGKILL a process at each stage of rewriting the model: the target always loads completely as one version,
    the old one until the model file is renamed into place."""
    path = tmp_path / "model.onnx"
    env = {**os.environ, "PYTHONPATH": f"{ROOT}{os.pathsep}{os.environ.get('PYTHONPATH', '')}"}
    writer = subprocess.Popen([sys.executable, "-c", KILLED_WRITER, str(path), str(int(external))],
                              stdin=subprocess.PIPE, stdout=subprocess.PIPE, env=env)
    try:
        assert writer.stdout.readline() == b"ready\n"
        payload = numpy_helper.from_array(np.full(1_000_000, 1.0, np.float32), "payload")
        graph = helper.make_graph([helper.make_node("Identity", ["payload"], ["y"])], "g", [],
                                  [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1_000_000])], [payload])
        saving.save_model(helper.make_model(graph), path, external_data=external)
        old = 1.0
        for point, expected in KILL_POINTS:
            if point == "between-renames" and not external:
                continue  # one file, one rename
            new = 3.0 - old
            writer.stdin.write(f"{point} {new}\n".encode())
            writer.stdin.flush()
            said, pid = writer.stdout.readline().split()
            assert said == b"stalled", f"the write finished without reaching {point}"
            os.kill(int(pid), signal.SIGKILL)
            assert writer.stdout.readline() == f"signal {int(signal.SIGKILL)}\n".encode()
            leftovers = temporaries(tmp_path)
            assert bool(leftovers) == (expected == "old" or point == "between-renames"), (point, leftovers)
            payload = numpy_helper.to_array(loading.load_model(path).graph.initializer[0])
            assert payload.shape == (1_000_000,)
            assert payload[0] in (1.0, 2.0) and np.all(payload == payload[0]), point
            if expected is not None:
                assert payload[0] == {"old": old, "new": new}[expected], point
            old = float(payload[0])
            for name in leftovers:  # a killed process cannot clean up; the next run's writes do not depend on it
                (tmp_path / name).unlink()
    finally:
        writer.kill()
        writer.communicate()


def test_saved_bytes_are_exactly_protobufs_serialization(tmp_path):
    """save_model streams the graph piece by piece; the file must still be SerializeToString() byte for byte."""
    for model in (fixtures.conv_bn_bn(), fixtures.function_model(weights_inside=True), fixtures.densenet_block(),
                  fixtures.initializer_as_input(ir_version=3)):
        model.doc_string = "doc"
        saving.save_model(model, tmp_path / "m.onnx")
        assert (tmp_path / "m.onnx").read_bytes() == model.SerializeToString()


# --- saving in the background -----------------------------------------------------------------------------------


def test_pending_save_commits_what_save_model_writes(tmp_path):
    model = big_conv_bn()
    saving.save_model(model, tmp_path / "expected.onnx")
    pending = saving.PendingSave(model, tmp_path / "out.onnx")
    pending.start()
    model.graph.output[0].name = "changed after the start"  # the messages were serialized when it started
    pending.commit()
    assert (tmp_path / "out.onnx").read_bytes() == (tmp_path / "expected.onnx").read_bytes()
    assert temporaries(tmp_path) == []


def test_pending_save_discarded_leaves_the_old_file_and_no_temporary(tmp_path, monkeypatch):
    path = tmp_path / "out.onnx"
    path.write_bytes(b"previous contents")
    started, release = threading.Event(), threading.Event()
    real_write_all = atomic_write._write_all

    def slow_write_all(fd, data):  # hold the writer mid-file until discard() has been called
        started.set()
        release.wait(5)
        real_write_all(fd, data)

    monkeypatch.setattr(atomic_write, "_write_all", slow_write_all)
    pending = saving.PendingSave(big_conv_bn(), path)
    pending.start()
    assert started.wait(5)
    assert temporaries(tmp_path)  # under way
    threading.Timer(0.2, release.set).start()  # discard() asks the writer to stop, then waits for it
    pending.discard()
    assert path.read_bytes() == b"previous contents"
    assert temporaries(tmp_path) == []


def test_pending_save_reports_a_write_error_on_commit(tmp_path):
    pending = saving.PendingSave(conv_bn(), tmp_path / "missing" / "out.onnx")
    pending.start()
    with pytest.raises(OutputError, match="does not exist"):
        pending.commit()
    assert not (tmp_path / "missing").exists()


def test_pending_save_falls_back_to_exact_serialization(tmp_path):
    """A tensor whose raw data defies its dims is found out by the writer thread; commit writes it the exact way."""
    model = big_conv_bn()
    weight = model.graph.initializer[0]
    weight.raw_data = weight.raw_data + b"\0\0\0\0"  # one float more than its dims hold
    pending = saving.PendingSave(model, tmp_path / "out.onnx")
    pending.start()
    pending.commit()
    assert (tmp_path / "out.onnx").read_bytes() == model.SerializeToString()


def test_fold_file_interrupted_during_its_check_leaves_the_old_output(tmp_path, monkeypatch):
    """fold_file writes the output while the end-to-end check runs; Ctrl-C there keeps the old file, no temporary."""
    import bnfold
    import bnfold.checking.end_to_end as end_to_end

    source = tmp_path / "m.onnx"
    onnx.save(big_conv_bn(), source)
    path = tmp_path / "out.onnx"
    path.write_bytes(b"previous contents")

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(end_to_end, "verify", interrupted)
    with pytest.raises(KeyboardInterrupt):
        bnfold.fold_file(source, path)
    assert path.read_bytes() == b"previous contents"
    assert temporaries(tmp_path) == []


def test_fold_file_interrupted_as_its_writer_thread_starts_leaves_no_temporary(tmp_path, monkeypatch):
    """Ctrl-C the moment the background writer has started, before the call that started it returns: the writer is
    still discarded (it was a thread writing a temporary file that nobody removed: seen once in a full-suite run)."""
    import bnfold

    source = tmp_path / "m.onnx"
    onnx.save(big_conv_bn(), source)
    path = tmp_path / "out.onnx"
    path.write_bytes(b"previous contents")
    real_start = threading.Thread.start

    def start_then_interrupt(thread):
        real_start(thread)
        if thread.name == "bnfold-save":
            raise KeyboardInterrupt

    monkeypatch.setattr(threading.Thread, "start", start_then_interrupt)
    with pytest.raises(KeyboardInterrupt):
        bnfold.fold_file(source, path)
    assert path.read_bytes() == b"previous contents"
    assert temporaries(tmp_path) == []


def test_pending_save_says_where_held_arrays_landed_and_they_read_back_from_there(tmp_path):
    """A background save lets the folded weights' arrays go once it has written them: they are read back
    from the output (renamed or not) at the offsets the writer reports."""
    import numpy as np

    from bnfold.tensor_store import TensorStore, is_held, store_of
    from bnfold.tensor_store import value as tensor_array

    source = tmp_path / "m.onnx"
    onnx.save(big_conv_bn(), source)
    with TensorStore(source) as store:
        model = loading.load_model(source, held=store)
        weight = next(tensor for tensor in model.graph.initializer if is_held(tensor))
        new = np.arange(tensor_array(weight).size, dtype=np.float32).reshape(tensor_array(weight).shape)
        store.replace(weight, new)
        pending = saving.PendingSave(model, tmp_path / "out.onnx")
        pending.start()
        pending.commit()
        (((owner, _), path, offset),) = pending.placed
        assert owner is store and path != str(tmp_path / "out.onnx")  # the temporary name, renamed since
        assert (tmp_path / "out.onnx").read_bytes()[offset:offset + new.nbytes] == new.tobytes()
        assert store_of(weight).file_range(weight)[1:] == (offset, new.nbytes)
        np.testing.assert_array_equal(tensor_array(weight), new)  # read through the descriptor, after the rename
