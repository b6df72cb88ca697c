"""The shared rewrite for `producer -> BatchNormalization`: the producer absorbs BN's scale and shift."""

from __future__ import annotations

from typing import Optional

from ..graph import GraphContext, Rewrite
from .base import BatchNorm, ProducerFold, exclusive_producer


def fold_after(bn: BatchNorm, ctx: GraphContext, op_type: str, producer_fold: ProducerFold) -> Optional[Rewrite]:
    """Rewrite for BN directly after an `op_type` node, or None when BN's input comes from something else."""
    node = exclusive_producer(bn, ctx, (op_type,))
    if node is None:
        return None
    edit = producer_fold(node, ctx, bn.scale, bn.shift)
    return Rewrite(
        anchor=bn.node,
        into=[node],
        output_node=node,
        updates=edit.updates,
        attributes=edit.attributes,
        inserted=edit.inserted,
        rounding_error=edit.rounding_error,
    )
