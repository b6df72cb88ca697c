"""Nodes out of topological order: sorted stably and only when needed (main graph, subgraphs, function bodies),
reported, then folded as usual; a cycle stays an error."""

import json
from pathlib import Path

import onnx
import pytest
from click.testing import CliRunner
from onnx import TensorProto, helper

import bnfold
from bnfold.cli import cli
from bnfold.errors import InvalidModelError
from bnfold.graph.order import sort_nodes, topological_order
from models import fixtures
from support import assert_same_outputs, fold_and_compare

FIXTURE = Path(__file__).resolve().parents[2] / "models" / "fixtures" / "unsorted_graph.onnx"
SORTED_NAMES = ["l0_conv", "l0", "l0_relu", "l1_conv", "l1", "l1_relu", "level", "taken", "branch"]


def node(op, inputs, outputs, name, **attributes):
    return helper.make_node(op, inputs, outputs, name=name, **attributes)


def names(nodes):
    return [n.name for n in nodes]


def test_a_sorted_graph_is_left_as_it_is():
    nodes = [node("Relu", ["x"], ["a"], "a"), node("Neg", ["a"], ["b"], "b"), node("Abs", ["x"], ["c"], "c")]
    assert topological_order(nodes) is None


def test_the_sort_is_stable_and_moves_only_what_it_must():
    # 'late' must wait for 'c'; the independent nodes keep their given relative order.
    nodes = [node("Neg", ["c"], ["late"], "late"), node("Relu", ["x"], ["a"], "a"), node("Abs", ["x"], ["c"], "c"),
             node("Sin", ["x"], ["d"], "d")]
    order = topological_order(nodes)
    assert [nodes[p].name for p in order] == ["a", "c", "late", "d"]


def test_names_from_outside_the_graph_are_available_and_subgraph_reads_count():
    # In the branch, 'outer' comes from the enclosing graph: available. In the main graph the If reads 'h' through
    # its branch, so it must follow h's producer.
    branch = helper.make_graph([node("Neg", ["h"], ["out"], "neg"), node("Add", ["out", "outer"], ["z"], "add")],
                               "then", [], [helper.make_tensor_value_info("z", TensorProto.FLOAT, None)])
    if_node = node("If", ["cond"], ["y"], "if", then_branch=branch, else_branch=branch)
    nodes = [if_node, node("Relu", ["x"], ["h"], "h")]
    assert [nodes[p].name for p in topological_order(nodes)] == ["h", "if"]
    assert topological_order(list(branch.node)) is None


def test_subgraphs_and_function_bodies_are_sorted_and_named():
    model = fixtures.unsorted_graph()
    then_branch = next(a.g for a in model.graph.node[0].attribute if a.name == "then_branch")
    then_nodes = list(then_branch.node)
    del then_branch.node[:]
    then_branch.node.extend(reversed(then_nodes))
    function_model = fixtures.function_model(weights_inside=True)
    body = list(function_model.functions[0].node)
    del function_model.functions[0].node[:]
    function_model.functions[0].node.extend(reversed(body))
    model.functions.extend(function_model.functions)
    assert sort_nodes(model) == ["main", "main/branch.then_branch", "function local.ConvBn"]
    assert names(model.graph.node) == SORTED_NAMES
    assert names(then_branch.node) == ["branch_conv", "branch_bn"]
    # Stable: whenever several nodes are ready, the one given first goes first.
    assert [list(n.output) for n in model.functions[0].node] == [
        ["fW"], ["c"], ["fbn_var"], ["fbn_mean"], ["fbn_bias"], ["fbn_scale"], ["b"]]
    assert sort_nodes(model) == []


def test_unsorted_model_folds_like_the_sorted_one_and_the_report_says_so():
    model = fixtures.unsorted_graph()
    with pytest.raises(onnx.checker.ValidationError):
        onnx.checker.check_model(model)
    before = model.SerializeToString()
    folded, report = fold_and_compare(model, expect_folded=3)  # the folded model passes the full check
    assert model.SerializeToString() == before
    assert report.sorted_graphs == ["main"]
    assert "nodes were not in topological order; sorted (main)" in report.render()
    assert report.to_dict()["sorted_graphs"] == ["main"]
    assert [n.op_type for n in folded.graph.node] == ["Conv", "Relu", "Conv", "Relu", "ReduceMean", "Greater", "If"]


def test_a_sorted_model_reports_nothing_about_order():
    _, report = bnfold.fold(fixtures.conv_bn())
    assert report.sorted_graphs == [] and "topological" not in report.render()


def test_unsorted_function_body_folds():
    model = fixtures.function_model(weights_inside=True)
    reference = onnx.ModelProto()
    reference.CopyFrom(model)
    body = list(model.functions[0].node)
    del model.functions[0].node[:]
    model.functions[0].node.extend(reversed(body))
    folded, report = bnfold.fold(model)
    onnx.checker.check_model(folded, full_check=True)
    assert report.sorted_graphs == ["function local.ConvBn"] and report.folded_count == 1
    assert_same_outputs(reference, folded)


def test_cli_sorts_checks_folds_and_writes(tmp_path):
    result = CliRunner().invoke(cli, [str(FIXTURE), "-o", str(tmp_path / "out.onnx")])
    assert result.exit_code == 0, result.output
    assert result.output.count("nodes were not in topological order; sorted (main)") == 1
    assert "PASSED" in result.output
    written = onnx.load(tmp_path / "out.onnx")
    onnx.checker.check_model(written, full_check=True)
    assert_same_outputs(onnx.load(FIXTURE), written)
    as_json = CliRunner().invoke(cli, [str(FIXTURE), "--dry-run", "--json", "--no-verify"])
    assert json.loads(as_json.output)["sorted_graphs"] == ["main"]


def test_check_command_accepts_an_unsorted_model():
    result = bnfold.check(str(FIXTURE))
    assert len(result.foldable) == 3 and not result.kept


def cyclic_model():
    model = fixtures.conv_bn()
    relu = node("Relu", ["y_loop"], ["r"], "back")
    add = node("Add", ["r", "x"], ["y_loop"], "forth")
    model.graph.node.extend([relu, add])
    return model


def test_a_cycle_is_an_error_naming_its_nodes(tmp_path):
    with pytest.raises(InvalidModelError, match="cycle: .*'back'.*'forth'|cycle: .*'forth'.*'back'"):
        bnfold.fold(cyclic_model())
    path = tmp_path / "cycle.onnx"
    onnx.save(cyclic_model(), path)
    result = CliRunner().invoke(cli, [str(path), "-o", str(tmp_path / "out.onnx")])
    assert result.exit_code == 2
    assert "the graph has a cycle: Relu node 'back' -> Add node 'forth' -> Relu node 'back'" in result.output
    assert not (tmp_path / "out.onnx").exists()


def test_an_unsorted_model_with_external_data_is_sorted_checked_and_folded(tmp_path):
    model = onnx.load(FIXTURE)
    source = tmp_path / "external.onnx"
    onnx.save(model, source, save_as_external_data=True, location="external.data", size_threshold=0)
    model = onnx.load(FIXTURE)  # saving moved the tensors' data out of the first copy
    report = bnfold.fold_file(source, tmp_path / "out.onnx")
    assert report.sorted_graphs == ["main"] and report.folded_count == 3 and report.verification.passed
    written = onnx.load(tmp_path / "out.onnx")
    onnx.checker.check_model(written, full_check=True)
    assert_same_outputs(model, written)
