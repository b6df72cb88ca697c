"""Every bad input of issue 8 through the `bnfold` command line.

A refused input or output gives exactly one stderr line `bnfold: error: ...`, exit code 2, no traceback, nothing
written and the input untouched. BN statistics that cannot be folded (NaN, inf, var + eps <= 0) and weights of the
wrong rank are not errors: the model is written with those BNs kept and the reason listed, exit code 0.
"""

from __future__ import annotations

import errno
import os
import resource
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx
import pytest
from click.testing import CliRunner
from onnx import TensorProto, helper, numpy_helper

import bnfold
from bnfold import saving
from bnfold.loading import load_model
from bnfold.saving import save_model
from bnfold.cli import cli
from models.fixtures import conv_bn, nonfinite_stats_bn

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture
def out_dir(tmp_path):
    """An empty directory for the output: after a refusal it must still be empty (no output, no temporary)."""
    directory = tmp_path / "out"
    directory.mkdir()
    return directory


def invoke(*args):
    return CliRunner().invoke(cli, [str(arg) for arg in args])


def assert_refused(result, out_dir: Path, inputs=(), *, match: str = "", code: int = 2) -> None:
    """One `bnfold: error:` line on stderr, the exit code, nothing in out_dir, every (path, bytes) input intact."""
    lines = result.stderr.splitlines()
    assert result.exit_code == code, result.output
    assert len(lines) == 1 and lines[0].startswith("bnfold: error: "), result.stderr
    assert match in lines[0]
    assert "Traceback" not in result.output
    assert list(out_dir.iterdir()) == []
    for path, data in inputs:
        assert path.read_bytes() == data


def write(path: Path, data: bytes) -> tuple:
    path.write_bytes(data)
    return path, data


def with_initializer(model: onnx.ModelProto, name: str, change) -> onnx.ModelProto:
    """The model with initializer `name` replaced by change(its array)."""
    for tensor in model.graph.initializer:
        if tensor.name == name:
            tensor.CopyFrom(numpy_helper.from_array(change(numpy_helper.to_array(tensor).copy()), name))
    return model


# --- inputs that are not a readable model ----------------------------------------------------------------------


def test_path_that_does_not_exist(tmp_path, out_dir):
    assert_refused(invoke(tmp_path / "absent.onnx", "-o", out_dir / "f.onnx"), out_dir, match="no such file")


def test_directory(tmp_path, out_dir):
    assert_refused(invoke(tmp_path, "-o", out_dir / "f.onnx"), out_dir, match="is a directory")


def test_empty_file(tmp_path, out_dir):
    source = write(tmp_path / "empty.onnx", b"")
    assert_refused(invoke(source[0], "-o", out_dir / "f.onnx"), out_dir, [source], match="empty")


def test_random_bytes(tmp_path, out_dir):
    source = write(tmp_path / "random.onnx", np.random.default_rng(0).bytes(10_000))
    assert_refused(invoke(source[0], "-o", out_dir / "f.onnx"), out_dir, [source], match="not an ONNX model")


@pytest.mark.parametrize("fraction", [0.01, 0.25, 0.5, 0.9, 0.999])
def test_truncated_model(tmp_path, out_dir, fraction):
    data = conv_bn().SerializeToString()
    source = write(tmp_path / "cut.onnx", data[:max(1, int(len(data) * fraction))])
    assert_refused(invoke(source[0], "-o", out_dir / "f.onnx"), out_dir, [source])


@pytest.mark.parametrize("message", [helper.make_tensor("t", TensorProto.FLOAT, [2], [1.0, 2.0]),
                                     helper.make_graph([], "g", [], [])], ids=["TensorProto", "GraphProto"])
def test_valid_protobuf_that_is_not_a_model(tmp_path, out_dir, message):
    source = write(tmp_path / "other.onnx", message.SerializeToString())
    assert_refused(invoke(source[0], "-o", out_dir / "f.onnx"), out_dir, [source], match="not an ONNX model")


def test_model_failing_the_checker(tmp_path, out_dir):
    model = conv_bn()
    model.graph.node[0].input[1] = "undefined_weight"
    source = write(tmp_path / "bad.onnx", model.SerializeToString())
    assert_refused(invoke(source[0], "-o", out_dir / "f.onnx"), out_dir, [source], match="onnx.checker")


def test_opset_newer_than_onnx_knows(tmp_path, out_dir):
    model = conv_bn()
    model.opset_import[0].version = 99
    source = write(tmp_path / "future.onnx", model.SerializeToString())
    assert_refused(invoke(source[0], "-o", out_dir / "f.onnx"), out_dir, [source], match="opset 99")


# --- external data ---------------------------------------------------------------------------------------------


@pytest.fixture
def external_model(tmp_path):
    path = tmp_path / "model.onnx"
    save_model(conv_bn(c_in=16, c_out=32, seed=3), path, external_data=True)
    return path


def test_external_data_missing(external_model, out_dir):
    (external_model.parent / "model.onnx.data").unlink()
    source = (external_model, external_model.read_bytes())
    assert_refused(invoke(external_model, "-o", out_dir / "f.onnx"), out_dir, [source], match="missing")


def test_external_data_truncated(external_model, out_dir):
    data_file = external_model.parent / "model.onnx.data"
    truncated = write(data_file, data_file.read_bytes()[:-1])
    source = (external_model, external_model.read_bytes())
    assert_refused(invoke(external_model, "-o", out_dir / "f.onnx"), out_dir, [source, truncated],
                   match="truncated")


def test_external_data_path_traversal(external_model, out_dir):
    model = onnx.load(str(external_model), load_external_data=False)
    for tensor in model.graph.initializer:
        for entry in tensor.external_data:
            if entry.key == "location":
                entry.value = "../../../etc/passwd"
    source = write(external_model, model.SerializeToString())
    assert_refused(invoke(external_model, "-o", out_dir / "f.onnx"), out_dir, [source],
                   match="leaves the model's directory")


# --- outputs that cannot be written ----------------------------------------------------------------------------


@pytest.fixture
def good_model(tmp_path):
    return write(tmp_path / "model.onnx", conv_bn().SerializeToString())


def test_output_in_a_missing_directory(good_model, out_dir):
    assert_refused(invoke(good_model[0], "-o", out_dir / "missing" / "f.onnx"), out_dir, [good_model],
                   match="does not exist")


def test_output_in_a_read_only_directory(good_model, out_dir, refuse_file_creation):
    assert_refused(invoke(good_model[0], "-o", out_dir / "f.onnx", "--no-verify"), out_dir, [good_model],
                   match="Permission denied")


def test_output_equal_to_input_needs_overwrite(good_model, out_dir):
    path, data = good_model
    assert_refused(invoke(path, "-o", path), out_dir, [good_model], match="--overwrite")
    same_file_other_spelling = path.parent / "." / path.name
    assert_refused(invoke(path, "-o", same_file_other_spelling), out_dir, [good_model], match="--overwrite")
    result = invoke(path, "-o", path, "--overwrite")
    assert result.exit_code == 0, result.output
    assert [n.op_type for n in load_model(path).graph.node] == ["Conv"]


def test_disk_full_injected(good_model, out_dir, monkeypatch):
    def disk_full(fd):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(saving.os, "fsync", disk_full)
    assert_refused(invoke(good_model[0], "-o", out_dir / "f.onnx"), out_dir, [good_model], match="disk full")


@pytest.mark.slow  # a real process: seconds, not milliseconds
def test_file_size_limit_in_a_real_process(tmp_path, out_dir):
    """A real failing write: RLIMIT_FSIZE makes the kernel refuse to grow the output past 4 KiB (EFBIG)."""
    source = write(tmp_path / "big.onnx", conv_bn(c_in=16, c_out=32, seed=5).SerializeToString())

    def limit_file_size():
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        resource.setrlimit(resource.RLIMIT_FSIZE, (4096, 4096))

    child = subprocess.run([sys.executable, "-m", "bnfold", str(source[0]), "-o", str(out_dir / "f.onnx"),
                            "--no-verify"], capture_output=True, text=True, cwd=ROOT, preexec_fn=limit_file_size)
    assert child.returncode == 2, child.stderr
    assert child.stderr.splitlines() == [child.stderr.strip()] and "write failed (File too large)" in child.stderr
    assert list(out_dir.iterdir()) == [] and source[0].read_bytes() == source[1]


@pytest.fixture
def tiny_disk(tmp_path):
    """A 16 KiB tmpfs: a real full disk. Needs mount privileges (root in CI); skipped where mounting is refused."""
    mount_point = tmp_path / "tiny"
    mount_point.mkdir()
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=16k", "tmpfs", str(mount_point)],
                             capture_output=True)
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {mounted.stderr.decode().strip()}")
    yield mount_point
    subprocess.run(["umount", str(mount_point)], check=True)


def test_full_disk(tmp_path, tiny_disk):
    source = write(tmp_path / "big.onnx", conv_bn(c_in=16, c_out=32, seed=6).SerializeToString())
    assert len(source[1]) > 16 * 1024
    assert_refused(invoke(source[0], "-o", tiny_disk / "f.onnx", "--no-verify"), tiny_disk, [source],
                   match="write failed (disk full); nothing was written")


@pytest.mark.parametrize("name,data", [
    ("random.onnx", np.random.default_rng(1).bytes(3000)),
    ("cut.onnx", conv_bn().SerializeToString()[:300]),
])
@pytest.mark.slow  # a real process: seconds, not milliseconds
def test_no_traceback_from_a_real_process(tmp_path, out_dir, name, data):
    source = write(tmp_path / name, data)
    child = subprocess.run([sys.executable, "-m", "bnfold", str(source[0]), "-o", str(out_dir / "f.onnx")],
                           capture_output=True, text=True, cwd=ROOT)
    assert child.returncode == 2
    assert child.stderr.count("\n") == 1 and child.stderr.startswith("bnfold: error: ")
    assert "Traceback" not in child.stderr + child.stdout
    assert list(out_dir.iterdir()) == [] and source[0].read_bytes() == source[1]


def test_internal_error_is_one_line_with_exit_code_3(good_model, out_dir, monkeypatch):
    def bug(*args, **kwargs):
        raise RuntimeError("simulated bug")

    monkeypatch.setattr("bnfold.folding.fold_model", bug)
    result = invoke(good_model[0], "-o", out_dir / "f.onnx")
    assert result.exit_code == 3
    assert result.stderr.splitlines() == ["bnfold: internal error: RuntimeError: simulated bug "
                                          "(please report it; BNFOLD_DEBUG=1 shows the traceback)"]
    assert list(out_dir.iterdir()) == [] and good_model[0].read_bytes() == good_model[1]


def test_help_documents_the_exit_codes():
    text = invoke("--help").output
    for line in ("0    success", "1    a check failed", "2    bad usage", "3    internal error", "130  interrupted"):
        assert line in text


# --- models that load but cannot be (fully) folded: exit 0, the BN kept with its reason -------------------------


@pytest.mark.parametrize("model,reason", [
    (nonfinite_stats_bn(), "var contains NaN or inf"),
    (with_initializer(conv_bn(), "bn_mean", lambda mean: np.where(np.arange(mean.size) == 2, np.inf, mean)),
     "mean contains NaN or inf"),
    (with_initializer(conv_bn(), "bn_var", lambda var: np.where(np.arange(var.size) == 1, -4.0, var)),
     "var + epsilon <= 0"),
    (with_initializer(conv_bn(), "bn_var", lambda var: np.where(np.arange(var.size) == 1, -1e-5, var)),
     "var + epsilon <= 0"),
    (with_initializer(conv_bn(), "W", lambda weight: weight.reshape(weight.shape[0], -1)),
     "Conv weight has rank 2"),
], ids=["nan-var", "inf-mean", "negative-var", "var-plus-eps-zero", "weight-of-wrong-rank"])
def test_unfoldable_bn_is_kept_with_its_reason(tmp_path, model, reason):
    source = write(tmp_path / "model.onnx", model.SerializeToString())
    output = tmp_path / "folded.onnx"
    result = invoke(source[0], "-o", output)
    assert result.exit_code == 0, result.output
    assert result.stderr == ""
    assert "kept" in result.stdout and reason in result.stdout
    assert "BatchNormalization" in [n.op_type for n in load_model(output).graph.node]
    assert source[0].read_bytes() == source[1]


# --- custom domains: fold what can be folded, leave the rest ---------------------------------------------------


def custom_op_after_conv_bn(declare_domain: bool = True) -> onnx.ModelProto:
    """Conv -> BN -> com.example.Scramble: the custom node is neither onnx's nor ONNX Runtime's."""
    model = conv_bn()
    model.graph.node.append(helper.make_node("Scramble", ["y"], ["z"], domain="com.example", name="scramble"))
    shape = [d.dim_param or d.dim_value for d in model.graph.output[0].type.tensor_type.shape.dim]
    model.graph.output.append(helper.make_tensor_value_info("z", TensorProto.FLOAT, shape))
    if declare_domain:
        model.opset_import.append(helper.make_opsetid("com.example", 1))
    return model


def test_custom_domain_folds_with_no_verify(tmp_path):
    """onnx.checker accepts a declared custom domain; the Conv+BN folds and the custom node stays as it was."""
    source = write(tmp_path / "custom.onnx", custom_op_after_conv_bn().SerializeToString())
    output = tmp_path / "folded.onnx"
    result = invoke(source[0], "-o", output, "--no-verify")
    assert result.exit_code == 0, result.output
    folded = load_model(output)
    assert [(n.domain, n.op_type) for n in folded.graph.node] == [("", "Conv"), ("com.example", "Scramble")]
    assert source[0].read_bytes() == source[1]


def test_custom_domain_cannot_be_verified(tmp_path, out_dir):
    """Verification runs the model in ONNX Runtime, which does not know the op: a refusal naming it, not a crash."""
    source = write(tmp_path / "custom.onnx", custom_op_after_conv_bn().SerializeToString())
    assert_refused(invoke(source[0], "-o", out_dir / "f.onnx"), out_dir, [source], match="Scramble")


def test_undeclared_custom_domain_needs_no_check(tmp_path, out_dir):
    source = write(tmp_path / "custom.onnx", custom_op_after_conv_bn(declare_domain=False).SerializeToString())
    assert_refused(invoke(source[0], "-o", out_dir / "f.onnx", "--no-verify"), out_dir, [source],
                   match="com.example")
    result = invoke(source[0], "-o", out_dir / "f.onnx", "--no-verify", "--no-check")
    assert result.exit_code == 0, result.output
    assert [n.op_type for n in load_model(out_dir / "f.onnx").graph.node] == ["Conv", "Scramble"]


# --- where -o points: symlinks are followed, special files refused, `-` refused, `dir/` is a directory -----------


def test_output_symlink_is_followed_and_stays_a_link(good_model, tmp_path):
    target = tmp_path / "real" / "model.folded.onnx"
    target.parent.mkdir()
    target.write_bytes(b"old")
    link = tmp_path / "link.onnx"
    link.symlink_to(target)
    result = invoke(good_model[0], "-o", link, "--no-verify")
    assert result.exit_code == 0, result.output
    assert link.is_symlink() and os.readlink(link) == str(target)
    assert [n.op_type for n in load_model(target).graph.node] == ["Conv"]
    assert sorted(p.name for p in target.parent.iterdir()) == ["model.folded.onnx"]  # no temporary left


def test_output_fifo_is_refused_and_kept(good_model, tmp_path, out_dir):
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    link = out_dir / "to_fifo.onnx"
    link.symlink_to(fifo)
    for target in (fifo, link):
        result = invoke(good_model[0], "-o", target, "--no-verify")
        assert result.exit_code == 2, result.output
        assert result.stderr.splitlines() == [result.stderr.strip()] and "is a FIFO, not a regular file" in result.stderr
    assert stat_kind(fifo) == "fifo" and link.is_symlink()
    assert list(out_dir.iterdir()) == [link] and good_model[0].read_bytes() == good_model[1]


def stat_kind(path: Path) -> str:
    import stat as stat_module

    return "fifo" if stat_module.S_ISFIFO(os.stat(path).st_mode) else "other"


def test_output_character_device_is_refused_through_a_symlink(good_model, out_dir):
    """`-o /dev/null` must leave /dev/null a character device; reached through a link in tmp_path, never replaced."""
    link = out_dir / "null.onnx"
    link.symlink_to("/dev/null")
    result = invoke(good_model[0], "-o", link, "--no-verify")
    assert result.exit_code == 2 and "is a character device" in result.stderr, result.output
    assert Path("/dev/null").is_char_device() and link.is_symlink() and list(out_dir.iterdir()) == [link]


def test_output_dash_is_refused(good_model, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    result = invoke(good_model[0], "-o", "-", "--no-verify")
    assert result.exit_code == 2 and "does not write models to stdout" in result.stderr, result.output
    assert not (tmp_path / "-").exists()


def test_output_trailing_slash_names_a_directory_created_if_missing(good_model, out_dir, tmp_path):
    (tmp_path / "file").write_bytes(b"")
    assert_refused(invoke(good_model[0], "-o", f"{tmp_path / 'file'}/", "--no-verify"), out_dir, [good_model],
                   match="not a directory")
    result = invoke(good_model[0], "-o", f"{tmp_path / 'missing' / 'deeper'}/", "--no-verify")
    assert result.exit_code == 0, result.output
    assert [n.op_type for n in load_model(tmp_path / "missing" / "deeper" / "model.onnx").graph.node] == ["Conv"]
    result = invoke(good_model[0], "-o", f"{out_dir}/", "--no-verify")
    assert result.exit_code == 0, result.output
    assert [p.name for p in out_dir.iterdir()] == ["model.onnx"]
    assert [n.op_type for n in load_model(out_dir / "model.onnx").graph.node] == ["Conv"]


def test_external_data_file_that_is_a_fifo_is_refused(tmp_path, out_dir):
    os.mkfifo(out_dir / "f.onnx.data")
    with pytest.raises(bnfold.OutputError, match="is a FIFO"):
        save_model(conv_bn(c_in=16, c_out=32), out_dir / "f.onnx", external_data=True)
    assert [p.name for p in out_dir.iterdir()] == ["f.onnx.data"]


def test_save_model_api_refuses_the_same_paths(tmp_path):
    model = conv_bn()
    for path, message in (("-", "stdout"), (f"{tmp_path}/", "is a directory"), (tmp_path, "is a directory"),
                          (f"{tmp_path}/nowhere/", "does not exist")):
        with pytest.raises(bnfold.OutputError, match=message):
            save_model(model, path)
    with pytest.raises(bnfold.UsageError, match="model: expected an onnx.ModelProto") as raised:
        save_model("x", tmp_path / "x.onnx")
    assert isinstance(raised.value, TypeError) and raised.value.parameter == "model"
    assert list(tmp_path.iterdir()) == []


# --- seeds and user input data ---------------------------------------------------------------------------------


@pytest.mark.parametrize("command", [["fold", "{model}", "-o", "{out}"], ["verify", "{model}", "{model}"],
                                     ["bench", "{model}"]])
def test_negative_seed_is_a_usage_error(good_model, out_dir, command):
    args = [word.format(model=good_model[0], out=out_dir / "f.onnx") for word in command]
    result = invoke(*args, "--seed", "-1")
    assert result.exit_code == 2 and "--seed" in result.stderr and "-1" in result.stderr, result.output
    assert "Traceback" not in result.output and list(out_dir.iterdir()) == []


def test_negative_seed_in_the_api_is_a_usage_error(good_model):
    with pytest.raises(bnfold.UsageError, match="seed must be a non-negative integer"):
        bnfold.verify(good_model[0], good_model[0], seed=-1)


def input_data_cases(tmp_path):
    strings = tmp_path / "strings.npz"
    np.savez(strings, x=np.array([["a", "b"]]))
    objects = tmp_path / "objects.npy"
    np.save(objects, np.array([{"a": 1}], dtype=object), allow_pickle=True)
    objects_npz = tmp_path / "objects.npz"
    np.savez(objects_npz, x=np.array([None, 1], dtype=object))
    corrupt = tmp_path / "corrupt.npz"
    data = (tmp_path / "ok.npz")
    np.savez(data, x=np.zeros((1, 4, 9, 9), np.float32))
    corrupt.write_bytes(data.read_bytes()[:200])
    garbage = tmp_path / "garbage.npy"
    garbage.write_bytes(b"\x93NUMPY\x01\x00garbage")
    return [(strings, "dtype <U1"), (f"x:{objects}", "pickled data"), (objects_npz, "pickled data"),
            (corrupt, "not a readable"), (garbage, "not a readable")]


def test_unusable_input_data_is_exit_2_with_the_reason(good_model, tmp_path, out_dir):
    for data, reason in input_data_cases(tmp_path):
        assert_refused(invoke(good_model[0], "-o", out_dir / "f.onnx", "--inputs", data), out_dir, [good_model],
                       match=reason)
        result = invoke("verify", good_model[0], good_model[0], "--inputs", data)
        assert result.exit_code == 2 and reason in result.stderr, result.output


def test_unusable_input_data_in_the_api(good_model, tmp_path):
    for data, reason in input_data_cases(tmp_path):
        with pytest.raises(bnfold.InputFileError, match=reason):
            bnfold.verify(good_model[0], good_model[0], input_files=[str(data)])
