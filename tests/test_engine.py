"""The engine contains faults per fold: an exception of any kind while one candidate is matched, planned or applied
keeps that BN (or merge, or chain) with the reason "internal error in <rule>: ... (please report)", and the rest of
the model folds, verifies and is written. A fold that fails half-way through being applied leaves the graph as it
was (graph.editor journals every change)."""

import json

import numpy as np
import onnx
import pytest
from click.testing import CliRunner
from onnx import numpy_helper

import bnfold
from bnfold.cli import cli
from bnfold.graph.editor import Editor
from bnfold.rules import chain, forward, merge_branches
from models import fixtures
from support import assert_same_outputs, fold_and_compare, op_types

FAULTY = "l1"  # the BN of the second layer


def _net():
    return fixtures.growing_activations_net(depth=4, gain=1.0)


def _raise_on(monkeypatch, module, name, predicate, error=RuntimeError("planted fault")):
    original = getattr(module, name)

    def faulty(*args, **kwargs):
        if predicate(*args, **kwargs):
            raise error
        return original(*args, **kwargs)

    monkeypatch.setattr(module, name, faulty)


def _faulty_forward_plan(monkeypatch):
    """forward.plan raises on one BN (its `end` argument) and plans the others as usual."""
    _raise_on(monkeypatch, forward, "plan", lambda producer, nodes, index, end, *rest: end.name == FAULTY)


def _assert_only_the_faulty_bn_kept(report, rule="forward", error="RuntimeError: planted fault"):
    kept = {d.node: d.reason for d in report.decisions if not d.folded}
    assert kept == {FAULTY: f"internal error in {rule}: {error} (please report)"}
    assert report.folded_count == len(report.decisions) - 1
    assert [d.internal_error for d in report.decisions] == [d.node == FAULTY for d in report.decisions]
    assert report.internal_errors == [f"{FAULTY} -> '{FAULTY}_bn': {kept[FAULTY]}"]


def test_an_exception_while_planning_keeps_that_bn_and_folds_the_rest(monkeypatch):
    _faulty_forward_plan(monkeypatch)
    model = _net()
    folded, report = fold_and_compare(model)
    _assert_only_the_faulty_bn_kept(report)
    assert op_types(folded).count("BatchNormalization") == 1
    assert report.to_dict()["internal_errors"] == report.internal_errors


def test_an_exception_while_matching_keeps_that_bn(monkeypatch):
    """The walk up (matching) raises a non-bnfold exception type for one BN."""
    _raise_on(monkeypatch, chain, "walk", lambda name, index, **options: name == f"{FAULTY}_conv",
              error=KeyError("lost"))
    _, report = fold_and_compare(_net())
    # attention is the first rule in RULES and the first to walk up from a BN
    _assert_only_the_faulty_bn_kept(report, rule="attention", error="KeyError: 'lost'")


@pytest.mark.parametrize("operation", ["rename", "remove", "set_constant"])
def test_an_exception_half_way_through_applying_leaves_the_graph_as_it_was(monkeypatch, operation):
    """The forward fold of `l1` plans set_constant (weights), remove (the BN), rename (the Conv takes the BN's
    output name); whichever raises, what ran before it is undone: the Conv keeps its weight, the BN stays, the
    names are the original ones, and the later folds (which read the index) are right."""
    def touches_faulty(self, *args):
        return any(getattr(arg, "name", None) in (FAULTY, f"{FAULTY}_conv") or
                   (isinstance(arg, str) and arg == f"{FAULTY}_conv") for arg in args)

    _raise_on(monkeypatch, Editor, operation, touches_faulty)
    model = _net()
    folded, report = fold_and_compare(model)
    _assert_only_the_faulty_bn_kept(report)
    conv = next(node for node in folded.graph.node if node.name == f"{FAULTY}_conv")
    bn = next(node for node in folded.graph.node if node.name == FAULTY)
    original = {node.name: node for node in model.graph.node}
    assert conv == original[f"{FAULTY}_conv"] and bn == original[FAULTY]
    weights = {t.name: numpy_helper.to_array(t) for t in folded.graph.initializer}
    before = {t.name: numpy_helper.to_array(t) for t in model.graph.initializer}
    for name in [*conv.input[1:], *bn.input[1:]]:
        assert np.array_equal(weights[name], before[name])


def test_a_fault_in_the_only_fold_leaves_the_model_byte_identical(monkeypatch):
    _raise_on(monkeypatch, Editor, "rename", lambda self, old, new: True)
    model = fixtures.conv_bn()
    folded, report = bnfold.fold(model)
    assert report.folded_count == 0 and "internal error in forward" in report.decisions[0].reason
    assert folded.SerializeToString() == model.SerializeToString()


def test_an_exception_in_a_branch_merge_keeps_the_sum(monkeypatch):
    _raise_on(monkeypatch, merge_branches, "plan", lambda branches, index: True, error=ValueError("bad merge"))
    model = fixtures.repvgg_block()
    folded, report = fold_and_compare(model)
    assert report.merges and not any(merge.merged for merge in report.merges)
    assert {merge.reason for merge in report.merges} == {
        "internal error in merge_branches: ValueError: bad merge (please report)"}
    assert report.folded_count == 2  # the branch BNs still fold into their Convs


def test_the_command_line_writes_the_verified_rest_and_warns_once(monkeypatch, tmp_path):
    _faulty_forward_plan(monkeypatch)
    model = _net()
    onnx.save(model, tmp_path / "in.onnx")
    result = CliRunner().invoke(
        cli, [str(tmp_path / "in.onnx"), "-o", str(tmp_path / "out.onnx"), "--json", str(tmp_path / "r.json")])
    assert result.exit_code == 0, result.output + result.stderr
    warnings = [line for line in result.stderr.splitlines() if line]
    assert warnings == [f"bnfold: warning: 1 fold(s) kept after an internal error: {FAULTY} -> '{FAULTY}_bn': "
                        "internal error in forward: RuntimeError: planted fault (please report)"]
    data = json.loads((tmp_path / "r.json").read_text())
    assert data["verification"]["passed"] and data["bn_folded"] == 3 and len(data["internal_errors"]) == 1
    folded = onnx.load(tmp_path / "out.onnx")
    assert op_types(folded).count("BatchNormalization") == 1
    assert_same_outputs(model, folded)


def test_an_edit_that_would_leave_a_reader_of_a_removed_tensor_is_undone(monkeypatch):
    """The guard behind the branch-merge Shape fix: with the rewiring disabled, the merge would leave the Shape
    node reading a removed tensor; instead it is undone and kept with an internal error, and the model is valid."""
    monkeypatch.setattr(merge_branches, "_rewire_shape_readers", lambda *args: None)
    model = fixtures.repvgg_block()
    model.graph.node.append(onnx.helper.make_node("Shape", ["block_b1_conv"], ["shape"], name="shape_of_b1"))
    model.graph.output.append(onnx.helper.make_tensor_value_info("shape", onnx.TensorProto.INT64, [4]))
    folded, report = fold_and_compare(model)
    reasons = [merge.reason for merge in report.merges if not merge.merged]
    assert reasons and reasons[0].startswith("internal error in merge_branches: RuntimeError: the edit removes")
    assert "shape_of_b1" in reasons[0]


def test_an_exception_while_matching_a_sum_is_reported_as_the_merge_it_was(monkeypatch):
    """The merge rule raises before it made its record: the sum is listed among the merges with the reason."""
    _raise_on(monkeypatch, merge_branches, "candidate_branches", lambda node, index: node.name == "block_add0",
              error=IndexError("no branch"))
    model = fixtures.repvgg_block()
    folded, report = fold_and_compare(model)
    failed = [merge for merge in report.merges if merge.internal_error]
    assert [(merge.node, merge.reason) for merge in failed] == [
        ("block_add0", "internal error in merge_branches: IndexError: no branch (please report)")]
    assert not any(decision.internal_error for decision in report.decomposed)
