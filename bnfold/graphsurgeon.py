"""onnx-graphsurgeon interop: `bnfold.fold(graph)` takes a `gs.Graph` and returns a new one.

The graph goes through `gs.export_onnx` and comes back through `gs.import_onnx`. That round trip is
graphsurgeon's, not bnfold's, and it drops what a gs.Graph does not hold: the model's metadata_props and
doc_string, and the doc strings of nodes and graph inputs/outputs (onnx-graphsurgeon 0.6 keeps the graph's doc
string, producer name, IR version, opsets and local functions). To keep everything, fold the ModelProto
(`bnfold.fold(gs.export_onnx(graph))`) and import it yourself.
"""

from __future__ import annotations

from .errors import MissingDependencyError


def is_graphsurgeon_graph(value) -> bool:
    """True for an onnx_graphsurgeon Graph, checked without importing onnx_graphsurgeon."""
    cls = type(value)
    return cls.__name__ == "Graph" and cls.__module__.startswith("onnx_graphsurgeon.")


def fold_graphsurgeon(graph, fold):
    """Export `graph` to ONNX, fold it with `fold` (a ModelProto it may change -> (folded, FoldReport)), import the
    result: (new gs.Graph, FoldReport)."""
    try:
        import onnx_graphsurgeon as gs
    except ImportError:  # pragma: no cover - a gs.Graph exists, so the package does too
        raise MissingDependencyError("onnx-graphsurgeon is not installed: pip install 'bnfold[graphsurgeon]'") from None
    folded, report = fold(gs.export_onnx(graph))
    return gs.import_onnx(folded), report
