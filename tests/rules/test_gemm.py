import pytest

from bnfold import fold
from models import fixtures
from support import fold_and_compare, op_types


@pytest.mark.parametrize("trans_a", [0, 1])
@pytest.mark.parametrize("trans_b", [0, 1])
@pytest.mark.parametrize("bias_shape", [None, (), (1,), (5,), (1, 5)])
def test_gemm_bn_folds_every_layout_and_bias_shape(trans_a, trans_b, bias_shape):
    model = fixtures.gemm_bn(trans_a=trans_a, trans_b=trans_b, bias_shape=bias_shape)
    folded, report = fold_and_compare(model, expect_folded=1)
    assert op_types(folded) == ["Gemm"]


@pytest.mark.parametrize("alpha, beta", [(0.5, 2.0), (2.0, 0.0), (1.0, -1.5)])
@pytest.mark.parametrize("bias_shape", [None, (5,)])
def test_gemm_bn_alpha_beta(alpha, beta, bias_shape):
    folded, _ = fold_and_compare(fixtures.gemm_bn(alpha=alpha, beta=beta, bias_shape=bias_shape), expect_folded=1)
    beta_attr = [a.f for a in folded.graph.node[0].attribute if a.name == "beta"]
    assert beta_attr == [1.0]


@pytest.mark.parametrize("bias_shape", [(3, 5), (3, 1)])
def test_gemm_per_row_bias_is_refused(bias_shape):
    model = fixtures.gemm_bn(bias_shape=bias_shape)
    folded, report = fold(model)
    assert report.folded_count == 0
    assert "only a scalar, [N] or [1, N] bias" in report.kept[0].reason
    assert folded.SerializeToString() == model.SerializeToString()
