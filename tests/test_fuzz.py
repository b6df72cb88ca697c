"""Fuzzing the loader and the fold entry points with mutated model bytes: only bnfold's typed errors may escape.

Valid small models (every rule's pattern, a Constant-fed weight, an If subgraph) are mutated by bit flips, byte
overwrites, truncations, insertions, deletions and splices with another model, then pushed through the stages a
user's input meets: loading.parse_model_bytes, loading.check_model, loading.load_model, bnfold.fold (a parsed model that never
met the checker, as the API allows) and bnfold.fold_file (load, check, fold, write; verification off: ONNX
Runtime is not what is fuzzed). Any exception other than a BnfoldError is a crash.

A run collects every distinct crash (stage, exception type, innermost bnfold frame) instead of stopping at the
first, so one failure message lists them all. Examples are derandomized, so CI is reproducible and bounded
(about 12 s). BNFOLD_EXPLORE=N runs N times as many from a random seed; BNFOLD_FUZZ_SAVE=1 also writes one input
per new crash to tests/fuzz_corpus/, which test_corpus replays on every run (tests/fuzz_corpus/README.md).
"""

from __future__ import annotations

import os
import tempfile
import traceback
import warnings
from pathlib import Path
from typing import Callable, Dict, Iterable, Tuple

import numpy as np
import onnx
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from onnx import TensorProto, helper, numpy_helper

import bnfold
from bnfold import loading
from bnfold.errors import BnfoldError
from models import fixtures

pytestmark = pytest.mark.slow  # Fuzzing: part of CI, not of the fast loop.

CORPUS = Path(__file__).resolve().parent / "fuzz_corpus"
# Open engine bugs (tests/fuzz_corpus/README.md): an `engine-*.bin` corpus entry still crashes. strict: once its bug is
# fixed the entry passes, XPASS fails the run, and the entry is renamed `fixed-*.bin` (see README).
OPEN_ENGINE_BUG = pytest.mark.xfail(strict=True, reason="open engine bug, see tests/fuzz_corpus/README.md")
EXPLORE = int(os.environ.get("BNFOLD_EXPLORE", "0"))


def tiny_conv_bn(**options) -> onnx.ModelProto:
    return fixtures.conv_bn(c_in=2, c_out=2, size=3, kernel=1, pad=0, **options)


def constant_weight_conv_bn() -> onnx.ModelProto:
    """The Conv weight comes from Constant -> Reshape nodes instead of an initializer."""
    model = tiny_conv_bn(bias=False)
    weight = numpy_helper.to_array(model.graph.initializer[0])
    del model.graph.initializer[0]
    model.graph.node.insert(0, helper.make_node("Reshape", ["w_flat", "w_shape"], ["W"]))
    model.graph.node.insert(0, helper.make_node(
        "Constant", [], ["w_shape"], value=numpy_helper.from_array(np.array(weight.shape, np.int64), "s")))
    model.graph.node.insert(0, helper.make_node(
        "Constant", [], ["w_flat"], value=numpy_helper.from_array(weight.reshape(-1), "v")))
    return model


def if_subgraph_conv_bn() -> onnx.ModelProto:
    """Conv -> BN inside the then-branch of an If: folding recurses into subgraphs."""
    inner = tiny_conv_bn()
    shape = ["N", 2, 3, 3]
    then_branch = helper.make_graph(list(inner.graph.node), "then", [],
                                    [helper.make_tensor_value_info("y", TensorProto.FLOAT, shape)],
                                    list(inner.graph.initializer))
    else_branch = helper.make_graph([helper.make_node("Identity", ["x"], ["y2"])], "else", [],
                                    [helper.make_tensor_value_info("y2", TensorProto.FLOAT, shape)])
    node = helper.make_node("If", ["cond"], ["out"], then_branch=then_branch, else_branch=else_branch)
    return fixtures.make_model([node], [helper.make_tensor_value_info("cond", TensorProto.BOOL, []),
                                        helper.make_tensor_value_info("x", TensorProto.FLOAT, shape)],
                               [helper.make_tensor_value_info("out", TensorProto.FLOAT, shape)])


SEEDS = [model.SerializeToString() for model in (
    tiny_conv_bn(),
    fixtures.conv_bn(transpose=True, c_in=2, c_out=4, group=2, size=3, kernel=1, pad=0),
    fixtures.gemm_bn(m_in=3, n_out=2, bias_shape=(2,), trans_b=1),
    fixtures.matmul_bn(k=3, n=2, add_bias=True),
    fixtures.conv_add_bn(),
    fixtures.conv_bn_bn(),
    constant_weight_conv_bn(),
    if_subgraph_conv_bn(),
)]

# --- mutation --------------------------------------------------------------------------------------------------

KINDS = ("flip", "set", "interesting", "truncate", "insert", "delete", "splice")
INTERESTING_BYTES = (0x00, 0x01, 0x02, 0x7F, 0x80, 0xFF)


def mutate(data: bytes, mutations: Iterable[Tuple[str, int]]) -> bytes:
    """Apply (kind, seed) mutations in order. The seed picks position and values uniformly: hypothesis's own
    integers favour small values, which would keep every mutation in the model's first bytes (its header)."""
    data = bytearray(data)
    for kind, seed in mutations:
        rng = np.random.default_rng(seed)
        at = int(rng.integers(len(data) + 1))
        value = int(rng.integers(256))
        if kind == "flip" and data:
            data[at % len(data)] ^= 1 << (value % 8)
        elif kind == "set" and data:
            data[at % len(data)] = value
        elif kind == "interesting" and data:
            data[at % len(data)] = INTERESTING_BYTES[value % len(INTERESTING_BYTES)]
        elif kind == "truncate":
            del data[at:]
        elif kind == "insert":
            data[at:at] = rng.bytes(1 + value % 8)
        elif kind == "delete":
            del data[at:at + 1 + value % 16]
        elif kind == "splice":
            other = SEEDS[value % len(SEEDS)]
            data = data[:at] + other[int(rng.integers(len(other) + 1)):]
    return bytes(data)


mutated_models = st.builds(
    mutate,
    st.sampled_from(SEEDS),
    st.lists(st.tuples(st.sampled_from(KINDS), st.integers(0, 2**32 - 1)), min_size=1, max_size=4),
)

# --- the stages an input goes through --------------------------------------------------------------------------


def stage_parse(data: bytes, directory: Path) -> None:
    loading.parse_model_bytes(data)


def stage_check(data: bytes, directory: Path) -> None:
    loading.check_model(loading.parse_model_bytes(data))


def stage_load_file(data: bytes, directory: Path) -> None:
    path = directory / "input.onnx"
    path.write_bytes(data)
    loading.load_model(path)


def stage_fold(data: bytes, directory: Path) -> None:
    bnfold.fold(loading.parse_model_bytes(data))


def stage_fold_file(data: bytes, directory: Path) -> None:
    path = directory / "input.onnx"
    path.write_bytes(data)
    bnfold.fold_file(path, directory / "folded.onnx", verify=False)


LOADER_STAGES = (stage_parse, stage_check, stage_load_file)
FOLD_STAGES = (stage_fold, stage_fold_file)

Crashes = Dict[Tuple[str, str, str], Tuple[bytes, str]]


def crash_signature(stage: Callable, error: BaseException) -> Tuple[str, str, str]:
    """(stage, exception type, innermost frame in bnfold, else the innermost frame) of a crash."""
    frames = traceback.extract_tb(error.__traceback__)
    own = [frame for frame in frames if f"{os.sep}bnfold{os.sep}" in frame.filename] or frames
    where = f"{Path(own[-1].filename).name}:{own[-1].name}"
    return stage.__name__, type(error).__name__, where


def run_stages(data: bytes, stages: Iterable[Callable], crashes: Crashes) -> None:
    """Feed `data` to every stage, recording each non-BnfoldError exception under its signature."""
    with tempfile.TemporaryDirectory() as directory, warnings.catch_warnings():
        warnings.simplefilter("ignore")  # numpy's overflow warnings on garbage values are not crashes
        for stage in stages:
            try:
                stage(data, Path(directory))
            except BnfoldError:
                pass
            except Exception as error:  # noqa: BLE001 - any other exception is what the fuzzer looks for
                signature = crash_signature(stage, error)
                crashes.setdefault(signature, (data, f"{type(error).__name__}: {error}".splitlines()[0][:200]))


def fuzz(stages, examples: int) -> Crashes:
    crashes: Crashes = {}

    @given(mutated_models)
    @settings(max_examples=examples * max(EXPLORE, 1), derandomize=not EXPLORE, database=None, deadline=None,
              suppress_health_check=list(HealthCheck))
    def one_input(data):
        run_stages(data, stages, crashes)

    one_input()
    if os.environ.get("BNFOLD_FUZZ_SAVE"):
        save_to_corpus(crashes)
    return crashes


def save_to_corpus(crashes: Crashes) -> None:
    CORPUS.mkdir(exist_ok=True)
    for (stage, error, where), (data, _) in crashes.items():
        name = f"{stage.removeprefix('stage_')}-{error}-{where.replace(':', '-')}.bin"
        if not (CORPUS / name).exists():
            (CORPUS / name).write_bytes(data)


def describe(crashes: Crashes) -> str:
    return "\n".join(f"{stage} {where}: {message} (input {data.hex()[:80]}...)"
                     for (stage, _, where), (data, message) in sorted(crashes.items()))


def test_mutations_reach_past_the_parser():
    """The fuzzer is only worth its time if many mutants still parse and get as far as folding."""
    parsed = 0
    for index in range(200):
        try:
            loading.parse_model_bytes(mutate(SEEDS[index % len(SEEDS)], [(KINDS[index % len(KINDS)], index)]))
            parsed += 1
        except BnfoldError:
            pass
    assert parsed >= 40


def test_loader_raises_only_typed_errors():
    crashes = fuzz(LOADER_STAGES, 3000)
    assert not crashes, "crashes in the loader:\n" + describe(crashes)


def test_fold_raises_only_typed_errors():
    crashes = fuzz(FOLD_STAGES, 3000)
    assert not crashes, "crashes in fold / fold_file:\n" + describe(crashes)


# --- the corpus: every crashing input found so far, replayed through every stage ---------------------------------

CORPUS_FILES = sorted(CORPUS.glob("*.bin"))

@pytest.mark.parametrize("path", [
    pytest.param(path, marks=OPEN_ENGINE_BUG) if path.name.startswith("engine-") else path for path in CORPUS_FILES
], ids=[path.stem for path in CORPUS_FILES])
def test_corpus(path):
    crashes: Crashes = {}
    run_stages(path.read_bytes(), LOADER_STAGES + FOLD_STAGES, crashes)
    assert not crashes, describe(crashes)


def test_every_loader_corpus_input_is_refused_with_a_typed_error(tmp_path):
    """What the corpus README promises of `loader-*.bin` (and keeps the replay above from passing vacuously):
    each is refused, with a BnfoldError, by parsing, checking or loading."""
    loader_files = [path for path in CORPUS_FILES if path.name.startswith("loader-")]
    assert loader_files, f"no loader-*.bin in {CORPUS}"
    for path in loader_files:
        copy = tmp_path / "model.onnx"
        copy.write_bytes(path.read_bytes())
        with pytest.raises(BnfoldError):
            loading.check_model(loading.parse_model_bytes(path.read_bytes()))
            loading.load_model(copy)
