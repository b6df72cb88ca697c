import pytest

from models import fixtures
from support import fold_and_compare, op_types


@pytest.mark.parametrize("c_in, c_out, group", [(4, 8, 1), (4, 8, 2), (8, 8, 8), (4, 8, 4), (6, 9, 3)])
@pytest.mark.parametrize("bias", [True, False])
def test_grouped_conv_transpose_bn_folds_exactly(c_in, c_out, group, bias):
    model = fixtures.conv_bn(transpose=True, c_in=c_in, c_out=c_out, group=group, bias=bias, stride=2, pad=1)
    folded, report = fold_and_compare(model, expect_folded=1)
    assert op_types(folded) == ["ConvTranspose"]
    assert report.decisions[0].rule == "forward"


@pytest.mark.parametrize("rank", [1, 3])
def test_conv_transpose_bn_other_ranks(rank):
    fold_and_compare(fixtures.conv_bn(transpose=True, rank=rank, group=2, size=4), expect_folded=1)
