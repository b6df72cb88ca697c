"""Ops the float64 local check gives onnx.reference in place of its own, where onnx.reference (1.23) does not compute
what ONNX Runtime and the fold mean: BatchNormalization-9 with a momentum attribute runs in training mode there,
and a grouped ConvTranspose fails or adds its bias to the wrong channels; and the magnitude model's mean of
independent probes. All plain numpy."""

from __future__ import annotations

import string
from itertools import product

import numpy as np
from onnx.reference.op_run import OpRun


DOMAIN = "bnfold.magnitude"  # the magnitude model's own ops


class BatchNormalization(OpRun):
    """Inference mode, as a fold reads every BN: y = (x - mean) * scale / sqrt(var + eps) + bias."""

    op_domain = ""

    def _run(self, x, scale, bias, mean, var, epsilon=None, **_):
        shape = (-1,) + (1,) * (x.ndim - 2)
        eps = 1e-5 if epsilon is None else epsilon
        y = (x - mean.reshape(shape)) * (scale.reshape(shape) / np.sqrt(var.reshape(shape) + eps))
        return ((y + bias.reshape(shape)).astype(x.dtype),)


class ConvTranspose(OpRun):
    """N-d ConvTranspose with groups, strides, dilations, explicit pads and output_padding. auto_pad and
    output_shape are refused (the piece then runs in ONNX Runtime)."""

    op_domain = ""

    def _run(self, X, W, B=None, auto_pad=None, dilations=None, group=None, kernel_shape=None,  # noqa: N803
             output_padding=None, output_shape=None, pads=None, strides=None):
        if output_shape or auto_pad not in (None, "NOTSET", b"NOTSET"):
            raise NotImplementedError("ConvTranspose with auto_pad or output_shape")
        nd = X.ndim - 2
        kernel = W.shape[2:]
        dilations = list(dilations or [1] * nd)
        strides = list(strides or [1] * nd)
        pads = list(pads or [0] * (2 * nd))
        output_padding = list(output_padding or [0] * nd)
        group = int(group or 1)
        n, channels = X.shape[:2]
        per_group = W.shape[1]
        spatial = X.shape[2:]
        full = [(spatial[i] - 1) * strides[i] + (kernel[i] - 1) * dilations[i] + 1 + output_padding[i]
                for i in range(nd)]
        letters = string.ascii_letters[: 2 * nd]
        space, taps = letters[:nd], letters[nd:]
        # contributions[n, g, m, *input positions, *kernel taps] = sum over the group's input channels
        contributions = np.einsum(f"NGC{space},GCM{taps}->NGM{space}{taps}",
                                  X.reshape(n, group, channels // group, *spatial),
                                  W.reshape(group, channels // group, per_group, *kernel))
        out = np.zeros((n, group, per_group, *full), dtype=np.result_type(X, W))
        for tap in product(*(range(k) for k in kernel)):
            where = tuple(slice(tap[i] * dilations[i], tap[i] * dilations[i] + (spatial[i] - 1) * strides[i] + 1,
                                strides[i]) for i in range(nd))
            out[(slice(None), slice(None), slice(None)) + where] += contributions[(Ellipsis,) + tap]
        out = out.reshape(n, group * per_group, *full)
        out = out[(slice(None), slice(None)) + tuple(slice(pads[i], full[i] - pads[i + nd]) for i in range(nd))]
        if B is not None:
            out = out + B.reshape((1, -1) + (1,) * nd)
        return (np.ascontiguousarray(out).astype(X.dtype),)


class GlobalAveragePoolOfIndependent(OpRun):
    """The magnitude model's GlobalAveragePool of independent probes: the mean of n independent values has the
    variance of their mean over n."""

    op_domain = DOMAIN

    def _run(self, x):
        axes = tuple(range(2, x.ndim))
        count = int(np.prod(x.shape[2:])) if x.ndim > 2 else 1
        return (x.mean(axis=axes, keepdims=True) / max(count, 1),)


OPS = [BatchNormalization, ConvTranspose, GlobalAveragePoolOfIndependent]
