"""The constant evaluator against ONNX's own reference evaluator, on deep chains, cycles and memory bombs."""

import subprocess
import sys
import textwrap

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper
from onnx.reference import ReferenceEvaluator

import bnfold
from bnfold.errors import InvalidModelError
from bnfold.graph import GraphIndex, ModelScope, NotConstant
from models import fixtures


def _index(nodes, initializers=(), opset=17):
    graph = helper.make_graph(nodes, "g", [], [helper.make_tensor_value_info(nodes[-1].output[0],
                                                                           TensorProto.FLOAT, None)],
                              list(initializers))
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])
    return model, GraphIndex(model.graph, model=ModelScope(model, model_bytes=0))


def _reference(model, name):
    return ReferenceEvaluator(model).run([name], {})[0]


CASES = [
    # (op, extra inputs (name -> array), attributes, data shape)
    ("Flatten", {}, {"axis": 2}, (3, 4)),  # axis == rank: [12, 1], not [1, 12]
    ("Flatten", {}, {"axis": 0}, (3, 4)),
    ("Flatten", {}, {"axis": -1}, (3, 4, 2)),
    ("Flatten", {}, {"axis": 1}, (5,)),  # rank 1, axis == rank
    ("Reshape", {"shape": np.array([0, -1], np.int64)}, {}, (3, 4, 2)),
    ("Reshape", {"shape": np.array([2, 0, 3], np.int64)}, {"allowzero": 0}, (6, 4, 1)),
    ("Squeeze", {"axes": np.array([1], np.int64)}, {}, (3, 1, 4)),
    ("Squeeze", {}, {}, (3, 1, 4, 1)),  # no axes input: every size-1 axis
    ("Unsqueeze", {"axes": np.array([0, -1], np.int64)}, {}, (3, 4)),
    ("Transpose", {}, {"perm": [1, 0, 2]}, (3, 4, 2)),
    ("Transpose", {}, {}, (3, 4, 2)),
    ("Expand", {"shape": np.array([2, 1, 4], np.int64)}, {}, (3, 1)),
    ("Cast", {}, {"to": TensorProto.FLOAT16}, (3, 4)),
    ("Cast", {}, {"to": TensorProto.INT32}, (3, 4)),
]


@pytest.mark.parametrize("op, extra, attributes, shape", CASES)
def test_each_evaluator_agrees_with_the_onnx_reference(op, extra, attributes, shape):
    data = np.random.default_rng(0).normal(0, 3, shape).astype(np.float32)
    initializers = [numpy_helper.from_array(data, "data")] + [numpy_helper.from_array(v, k) for k, v in extra.items()]
    node = helper.make_node(op, ["data", *extra], ["out"], **attributes)
    model, index = _index([node], initializers)
    expected = _reference(model, "out")
    actual = index.constant("out")
    assert actual.shape == expected.shape and actual.dtype == expected.dtype
    np.testing.assert_array_equal(actual, expected)


def test_squeeze_with_an_empty_axes_input_is_not_a_constant():
    """ONNX Runtime squeezes every size-1 axis there, the reference evaluator none: bnfold uses neither."""
    initializers = [numpy_helper.from_array(np.zeros((3, 1, 4), np.float32), "data"),
                    numpy_helper.from_array(np.zeros(0, np.int64), "axes")]
    _, index = _index([helper.make_node("Squeeze", ["data", "axes"], ["out"])], initializers)
    with pytest.raises(NotConstant, match="empty axes input"):
        index.constant("out")


def test_cast_of_values_an_integer_cannot_hold_is_not_a_constant():
    initializers = [numpy_helper.from_array(np.array([1e10, 1.0], np.float32), "data")]
    _, index = _index([helper.make_node("Cast", ["data"], ["out"], to=TensorProto.INT32)], initializers)
    with pytest.raises(NotConstant, match="outside int32"):
        index.constant("out")


def _deep_chain_conv_bn(depth: int, cycle: bool = False) -> onnx.ModelProto:
    """conv_bn whose weight passes through `depth` Identity/Reshape nodes (or, with cycle, an Identity loop)."""
    model = fixtures.conv_bn()
    weight = next(t for t in model.graph.initializer if t.name == "W")
    shape = numpy_helper.from_array(np.array(list(weight.dims), np.int64), "W_shape")
    model.graph.initializer.append(shape)
    nodes, previous = [], "W"
    for step in range(depth):
        output = f"W_{step}"
        if cycle and step == 0:
            nodes.append(helper.make_node("Identity", [f"W_{depth - 1}"], [output]))
        elif step % 2:
            nodes.append(helper.make_node("Reshape", [previous, "W_shape"], [output]))
        else:
            nodes.append(helper.make_node("Identity", [previous], [output]))
        previous = output
    model.graph.node[0].input[1] = previous
    for node in reversed(nodes):
        model.graph.node.insert(0, node)
    return model


def test_a_weight_behind_thousands_of_nodes_folds_without_recursion():
    model = _deep_chain_conv_bn(3000)
    folded, report = bnfold.fold(model)
    assert report.folded_count == 1
    from support import assert_same_outputs

    assert_same_outputs(model, folded)


def test_a_cycle_feeding_a_weight_is_refused_by_the_evaluator_and_by_fold():
    model = _deep_chain_conv_bn(5, cycle=True)
    index = GraphIndex(model.graph, model=ModelScope(model, model_bytes=0))
    with pytest.raises(NotConstant, match="cycle"):
        index.constant("W_4")
    # fold() sorts the nodes first (bnfold.graph.order), and a cycle cannot be sorted: an invalid model.
    with pytest.raises(InvalidModelError, match="the graph has a cycle: .*Identity node"):
        bnfold.fold(model, local_check=False)


BOMB = textwrap.dedent("""
    import resource, sys
    import numpy as np
    from onnx import TensorProto, helper, numpy_helper
    import bnfold
    sys.path.insert(0, ".")
    from models import fixtures

    kind = sys.argv[1]
    model = fixtures.conv_bn()
    del model.graph.initializer[:]
    weight = numpy_helper.from_array(np.ones((8, 4, 3, 3), np.float32), "W")
    nodes = []
    if kind == "constant_of_shape":
        # four BNs' statistics, each 2**26 - 1 float64 values: 2 GiB apiece
        for role in ("scale", "bias", "mean", "var"):
            model.graph.initializer.append(numpy_helper.from_array(np.array([2**26 - 1], np.int64), f"s_{role}"))
            nodes.append(helper.make_node("ConstantOfShape", [f"s_{role}"], [f"bn_{role}"],
                                          value=numpy_helper.from_array(np.ones(1, np.float64))))
    else:
        # Expand [24000, 1] x [1, 24000]: 2.3 GB of float32 for the BN scale
        model.graph.initializer.append(numpy_helper.from_array(np.ones((24000, 1), np.float32), "column"))
        model.graph.initializer.append(numpy_helper.from_array(np.array([1, 24000], np.int64), "row"))
        nodes.append(helper.make_node("Expand", ["column", "row"], ["bn_scale"]))
        for role in ("bias", "mean", "var"):
            model.graph.initializer.append(numpy_helper.from_array(np.ones(8, np.float32), f"bn_{role}"))
    model.graph.initializer.append(weight)
    for node in reversed(nodes):
        model.graph.node.insert(0, node)
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    _, report = bnfold.fold(model, local_check=False)
    grown = (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before) / 1024
    print(report.kept[0].reason)
    print(f"grown {grown:.0f} MiB")
""")


@pytest.mark.slow  # a real process: seconds, not milliseconds
@pytest.mark.parametrize("kind", ["constant_of_shape", "expand"])
def test_memory_bombs_are_refused_before_anything_is_allocated(kind, tmp_path):
    result = subprocess.run([sys.executable, "-c", BOMB, kind], capture_output=True, text=True, timeout=120,
                            cwd=str(__import__("pathlib").Path(__file__).resolve().parents[2]))
    assert result.returncode == 0, result.stderr
    assert "beyond bnfold's budget for computed constants" in result.stdout
    grown = float(result.stdout.split("grown")[1].split()[0])
    assert grown < 300, result.stdout
