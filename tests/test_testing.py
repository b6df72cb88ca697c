"""bnfold.testing.assert_equivalent, the helper for a user's own pytest suite."""

import subprocess
import sys

import numpy as np
import pytest
from onnx import TensorProto, helper, numpy_helper

from bnfold.testing import assert_equivalent


def matmul_model(weight):
    graph = helper.make_graph(
        [helper.make_node("MatMul", ["x", "W"], ["logits"])],
        "test",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 4])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, None)],
        [numpy_helper.from_array(weight.astype(np.float32), "W")],
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)


WEIGHT = np.random.default_rng(0).standard_normal((4, 3))


def test_equivalent_models_pass_and_return_the_result():
    result = assert_equivalent(matmul_model(WEIGHT), matmul_model(WEIGHT.copy()))
    assert result.passed


def test_different_models_raise_with_the_table():
    changed = WEIGHT.copy()
    changed[1, 2] += 1e-2
    with pytest.raises(AssertionError) as raised:
        assert_equivalent(matmul_model(WEIGHT), matmul_model(changed))
    message = str(raised.value)
    assert "logits" in message and "max abs" in message
    assert message.splitlines()[-1] == "FAILED: 1 of 1 outputs differ (logits)"


def test_verify_keywords_are_passed_through():
    changed = WEIGHT.copy()
    changed[1, 2] += 1e-2
    result = assert_equivalent(matmul_model(WEIGHT), matmul_model(changed), atol=0.1, runs=2,
                               input_shapes={"x": (5, 4)})
    assert result.runs == 2 and result.outputs[0].shape == (5, 3)


def test_reachable_from_a_bare_import_of_the_package():
    """`import bnfold` alone reaches the helper (bnfold.testing is imported on first use, not by `import bnfold`),
    and importing bnfold does not import onnxruntime or torch before a verification needs them."""
    code = (
        "import sys\n"
        "import bnfold\n"
        "assert 'bnfold.testing' not in sys.modules\n"
        "helper = bnfold.testing.assert_equivalent\n"
        "heavy = sorted({'onnxruntime', 'torch'} & set(sys.modules))\n"
        "assert not heavy, heavy\n"
        "from bnfold.testing import assert_equivalent\n"
        "assert helper is assert_equivalent and callable(helper)\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
