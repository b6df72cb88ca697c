"""Probe shapes for the local check: declared dims are hints; the piece's weights say what it needs."""

import numpy as np
from onnx import helper

from bnfold.checking.probes import batch_is_free, probe_attempts, probe_dims, probe_shapes, spatial_size
from bnfold.graph.pieces import Piece, PieceInput


def piece(op, weight, dims, **attributes):
    node = helper.make_node(op, ["x", "w"], ["y"], **attributes)
    return Piece("p", [PieceInput("x", np.dtype(np.float32), dims)], ["y"], [node], [node],
                 {"w": np.zeros(weight, np.float32)}, {"w": np.zeros(weight, np.float32)}, {"y": 1})


def test_minus_one_and_zero_are_unknown_and_the_weight_gives_channels():
    conv = piece("Conv", (8, 3, 3, 3), (-1, 3, 0, 0))
    assert probe_dims(conv) == {"x": (None, 3, None, None)}
    assert batch_is_free(probe_dims(conv))
    assert probe_shapes(probe_dims(conv), 6, batch=2) == {"x": (2, 3, 6, 6)}


def test_weights_override_a_contradicting_or_missing_declaration():
    assert probe_dims(piece("Conv", (8, 4, 3, 3), (1, 16, 9, 9), group=2)) == {"x": (1, 8, 9, 9)}
    assert probe_dims(piece("Conv", (8, 4, 1, 1), ())) == {"x": (None, 4, None, None)}
    assert probe_dims(piece("ConvTranspose", (5, 2, 3, 3), (-1, -1, 7, 7))) == {"x": (None, 5, 7, 7)}
    assert probe_dims(piece("Gemm", (10, 32), (-1, 0), transB=1)) == {"x": (None, 32)}
    assert probe_dims(piece("MatMul", (32, 10), (-1, -1, 0))) == {"x": (None, None, 32)}


def test_a_batchnorm_reading_an_undeclared_input_gives_its_channels():
    """BN -> Transpose -> MatMul (tokens): the BN's scale says axis 1, which the MatMul's weight does not."""
    assert probe_dims(piece("BatchNormalization", (8,), (None, None, None))) == {"x": (None, 8, None)}
    assert probe_dims(piece("BatchNormalization", (8,), (-1, 0, 0, 0))) == {"x": (None, 8, None, None)}


def test_zero_channels_from_the_weight_are_kept():
    assert probe_dims(piece("Conv", (4, 0, 3, 3), (1, 0, 8, 8))) == {"x": (1, 0, 8, 8)}


def test_spatial_size_gives_four_outputs_per_axis():
    assert spatial_size(piece("Conv", (8, 3, 3, 3), ())) == 6  # unpadded 3x3: 3 + 3
    assert spatial_size(piece("Conv", (8, 3, 3, 3), (), pads=[1, 1, 1, 1])) == 4
    assert spatial_size(piece("Conv", (8, 3, 7, 7), (), strides=[2, 2], pads=[3, 3, 3, 3])) == 7
    assert spatial_size(piece("Conv", (8, 3, 5, 5), (), dilations=[3, 3], strides=[2, 2])) == 19


def test_attempts_free_a_convs_declared_spatial_sizes_first():
    conv = piece("Conv", (8, 3, 3, 3), (1, 3, 224, 224), pads=[1, 1, 1, 1])
    assert probe_dims(conv, free_spatial=True) == {"x": (1, 3, None, None)}
    attempts = probe_attempts(conv)
    assert attempts[0] == ({"x": (1, 3, None, None)}, 4)
    assert attempts[-1] == ({"x": (1, 3, 224, 224)}, 0)  # the declaration last, for pieces that need it
    gemm = piece("Gemm", (10, 32), (4, 32), transB=1)
    assert probe_attempts(gemm) == [({"x": (4, 32)}, 0)]


def test_a_reshape_in_the_piece_tries_the_declared_sizes_first():
    conv = piece("Conv", (8, 3, 3, 3), (1, 3, 14, 14), pads=[1, 1, 1, 1])
    conv.after.append(helper.make_node("Reshape", ["y", "shape"], ["z"]))
    assert probe_attempts(conv)[0] == ({"x": (1, 3, 14, 14)}, 0)
    assert ({"x": (1, 3, None, None)}, 4) in probe_attempts(conv)
