"""Property test: random models whose scopes reuse tensor names with different ranks: the main graph and a
model-local function both name their BN input 't'; both If branches and the Loop body name theirs 'u' (ONNX
Runtime refuses a subgraph that redefines an outer name, not siblings that share one). Every fold must keep each
scope's outputs, whatever branch runs."""

from __future__ import annotations

import os

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from onnx import TensorProto, helper, numpy_helper

import bnfold
from models.fixtures import bn_parameters, make_model
from support import run

pytestmark = pytest.mark.slow  # random graphs: part of CI, not of the fast loop

EXPLORE = int(os.environ.get("BNFOLD_EXPLORE", "0"))
SETTINGS = settings(max_examples=60 * max(EXPLORE, 1), derandomize=not EXPLORE, database=None, deadline=None,
                    suppress_health_check=[HealthCheck.too_slow])
SHAPES = {2: ["N", 4], 3: ["N", 4, 4]}  # rank 3: BN's axis 1 is not MatMul's last axis, yet both have size 4


def block(rng, source: str, output: str, rank: int, kind: str, constant_nodes: bool, middle: str):
    """source -> [MatMul(W[4, 4]) | Relu] -> middle -> BN(4) -> output; parameters as Constant nodes or
    initializers."""
    weight = numpy_helper.from_array(rng.normal(size=(4, 4)).astype(np.float32), f"{output}_W")
    params = bn_parameters(4, rng, f"{output}_bn")
    first = (helper.make_node("MatMul", [source, weight.name], [middle]) if kind == "matmul"
             else helper.make_node("Relu", [source], [middle]))
    names = [p.name for p in params]
    nodes = [first, helper.make_node("BatchNormalization", [middle, *names], [output])]
    constants = [weight, *params] if kind == "matmul" else params
    if constant_nodes:
        return [helper.make_node("Constant", [], [c.name], value=c) for c in constants] + nodes, []
    return nodes, constants


@st.composite
def scoped_models(draw):
    seed = draw(st.integers(0, 2**16))
    rng = np.random.default_rng(seed)
    ranks = {scope: draw(st.sampled_from([2, 3])) for scope in ("main", "then", "else", "loop", "function")}
    kinds = {scope: draw(st.sampled_from(["matmul", "relu"])) for scope in ranks}
    main_nodes, initializers = block(rng, "x_main", "y_main", ranks["main"], kinds["main"], False, "t")
    branches = {}
    for scope in ("then", "else"):
        nodes, _ = block(rng, f"x_{scope}", f"o_{scope}", ranks[scope], kinds[scope], True, "u")
        branches[scope] = helper.make_graph(nodes, scope, [], [helper.make_tensor_value_info(
            f"o_{scope}", TensorProto.FLOAT, None)])
    # Loop body (trip count 1): reads the outer x_loop, writes its own 't'.
    loop_nodes, _ = block(rng, "x_loop", "o_loop", ranks["loop"], kinds["loop"], True, "u")
    loop_nodes.append(helper.make_node("Identity", ["cond_in"], ["cond_out"]))
    body = helper.make_graph(loop_nodes, "body",
                             [helper.make_tensor_value_info("i", TensorProto.INT64, []),
                              helper.make_tensor_value_info("cond_in", TensorProto.BOOL, [])],
                             [helper.make_tensor_value_info("cond_out", TensorProto.BOOL, []),
                              helper.make_tensor_value_info("o_loop", TensorProto.FLOAT, None)])
    function_nodes, _ = block(rng, "a", "b", ranks["function"], kinds["function"], True, "t")
    function = helper.make_function("local", "Block", ["a"], ["b"], function_nodes, [helper.make_opsetid("", 17)])
    initializers += [numpy_helper.from_array(np.array(1, np.int64), "trips"),
                     numpy_helper.from_array(np.array(True), "go")]
    nodes = main_nodes + [
        helper.make_node("If", ["c"], ["y_if"], then_branch=branches["then"], else_branch=branches["else"]),
        helper.make_node("Loop", ["trips", "go"], ["y_loop"], body=body),
        helper.make_node("Block", ["x_function"], ["y_function"], domain="local"),
    ]
    inputs = [helper.make_tensor_value_info("c", TensorProto.BOOL, [])]
    inputs += [helper.make_tensor_value_info(f"x_{scope}", TensorProto.FLOAT, SHAPES[ranks[scope]]) for scope in ranks]
    outputs = [helper.make_tensor_value_info(name, TensorProto.FLOAT, None)
               for name in ("y_main", "y_if", "y_loop", "y_function")]
    model = make_model(nodes, inputs, outputs, initializers)
    model.opset_import.append(helper.make_opsetid("local", 1))
    model.functions.append(function)
    if draw(st.booleans()):  # the main graph declares its own 't', which no other scope may take
        model.graph.value_info.append(helper.make_tensor_value_info("t", TensorProto.FLOAT,
                                                                    SHAPES[ranks["main"]]))
    return model, ranks, seed


@SETTINGS
@given(scoped_models())
def test_folds_in_every_scope_keep_each_scopes_outputs(case):
    model, ranks, seed = case
    folded, report = bnfold.fold(model)
    rng = np.random.default_rng(seed)
    feeds = {f"x_{scope}": rng.normal(size=[2 if d == "N" else d for d in SHAPES[rank]]).astype(np.float32)
             for scope, rank in ranks.items()}
    for condition in (True, False):  # both If branches, whatever an input would pick
        feeds["c"] = np.array(condition)
        expected, actual = run(model, feeds), run(folded, feeds)
        for name, value in expected.items():
            np.testing.assert_allclose(actual[name], value, rtol=1e-4, atol=1e-4 * max(1, np.abs(value).max()),
                                       err_msg=f"{name}\n{report.render(verbose=True)}")
    for decision in report.decisions:
        assert decision.folded or decision.reason, decision
