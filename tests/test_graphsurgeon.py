"""bnfold.fold on an onnx-graphsurgeon Graph returns a Graph whose model computes what the original did."""

from __future__ import annotations

import pytest

import bnfold
from models.fixtures import conv_bn_bn, multi_consumer_conv
from support import assert_same_outputs

gs = pytest.importorskip("onnx_graphsurgeon", reason="onnx-graphsurgeon is not installed (pip install 'bnfold[graphsurgeon]')")


def test_graph_in_graph_out():
    model = conv_bn_bn()
    graph = gs.import_onnx(model)
    folded, report = bnfold.fold(graph, skip="standalone")
    assert isinstance(folded, gs.Graph) and folded is not graph
    assert report.folded_count == 2 and [node.op for node in folded.nodes] == ["Conv"]
    assert [node.op for node in graph.nodes] == ["Conv", "BatchNormalization", "BatchNormalization"]
    assert_same_outputs(model, gs.export_onnx(folded))


def test_kept_bn_survives_the_round_trip():
    model = multi_consumer_conv()
    folded, report = bnfold.fold(gs.import_onnx(model))
    assert report.kept_count == 1 and "BatchNormalization" in [node.op for node in folded.nodes]
    assert_same_outputs(model, gs.export_onnx(folded))


def test_what_the_round_trip_loses_is_what_the_docs_say():
    model = conv_bn_bn()
    model.doc_string = "model doc"
    model.graph.doc_string = "graph doc"
    model.metadata_props.add(key="k", value="v")
    folded, _ = bnfold.fold(gs.import_onnx(model))
    exported = gs.export_onnx(folded)
    assert exported.doc_string == "" and len(exported.metadata_props) == 0
    assert exported.graph.doc_string == "graph doc" and exported.opset_import == model.opset_import
