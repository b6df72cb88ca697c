from bnfold import fold
from models import fixtures
from support import fold_and_compare, op_types


def test_matmul_bn_keeps_matmul_and_adds_the_shift():
    folded, report = fold_and_compare(fixtures.matmul_bn(), expect_folded=1)
    assert op_types(folded) == ["MatMul", "Add"]
    assert report.decisions[0].rule == "forward"


def test_matmul_add_bn_folds_into_weight_and_bias():
    folded, report = fold_and_compare(fixtures.matmul_bn(add_bias=True), expect_folded=1)
    assert op_types(folded) == ["MatMul", "Add"]
    assert report.decisions[0].rule == "forward"


def test_matmul_on_rank3_input_is_refused_with_the_axis_reason():
    model = fixtures.matmul_bn(x_rank=3)
    folded, report = fold(model)
    assert report.folded_count == 0
    assert "BN normalizes axis 1, but the MatMul output's channels arrive on axis 2" in report.kept[0].reason
    assert folded.SerializeToString() == model.SerializeToString()
