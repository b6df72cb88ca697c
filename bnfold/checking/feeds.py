"""The inputs an end-to-end check runs on, chosen without the user where the model leaves them open.

Dynamic dims: batch (axis 0) is 1; another dim takes its size from --input-shape, else from an input that shares
its dim_param, else from a concrete size the model declares for the input in value_info, else sizes that suit an
image or sequence (TRIAL_SIZES, multiples of 32 first) are tried until the original model runs; when an output then
carries no signal (checking.evidence), the larger sizes a detector would see (EVIDENCE_SIZES) are tried too, and
the size where most outputs carry signal is used; where white noise gives none at any size, image inputs get
random blocks (TEXTURES: edges and flat regions, as images have). A declared dim of 0 or below is open, as
exporters mean it.
A bool input that
decides an If runs both ways (True and False), so both branches are checked; integer inputs are small and
non-negative (they are often indices).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Dict, Iterator, List, Mapping, Optional, Sequence, Tuple

import numpy as np

from ..inputs import DEFAULT_BATCH, InputSpec, feeds_for, named_overrides, resolve_shapes

TRIAL_SIZES = (32, 64, 128, 224, 320)
EVIDENCE_SIZES = (480, 640)

# Ops through which a bool graph input still decides an If's branch.
_CONDITION_PASS_THROUGH = ("Identity", "Not", "Cast", "Squeeze", "Reshape")


@dataclass
class ShapePlan:
    """Per input, its dims: an int where known, else the name of a group searched over TRIAL_SIZES."""

    dims: Dict[str, Tuple[object, ...]]
    groups: List[str] = field(default_factory=list)
    notes: List[str] = field(default_factory=list)

    def candidates(self, sizes: Sequence[int] = TRIAL_SIZES
                   ) -> Iterator[Tuple[Dict[str, Tuple[int, ...]], Dict[str, int]]]:
        """Concrete shapes to try, with the size each searched group got; one try when nothing is searched."""
        for size in (sizes if self.groups else (None,)):
            chosen = {group: size for group in self.groups}
            yield {name: tuple(chosen.get(d, d) if isinstance(d, str) else d for d in dims)
                   for name, dims in self.dims.items()}, chosen


def plan_shapes(model, specs: Sequence[InputSpec],
                overrides: Optional[Mapping[Optional[str], Tuple[int, ...]]]) -> ShapePlan:
    """How each input in `specs` gets a concrete shape (see the module docstring); overrides are validated."""
    overrides = named_overrides(specs, overrides)
    given = resolve_shapes([spec for spec in specs if spec.name in overrides], overrides)
    known: Dict[str, int] = {}
    for spec in specs:
        if spec.name in given:
            for dim, size in zip(spec.dims, given[spec.name]):
                if isinstance(dim, str):
                    known.setdefault(dim, size)
    hints = _declared_sizes(model)
    plan = ShapePlan(dims={name: tuple(shape) for name, shape in given.items()})
    for spec in specs:
        if spec.name in given:
            continue
        dims = []
        for axis, dim in enumerate(spec.dims):
            if isinstance(dim, int):
                dims.append(dim)
            elif isinstance(dim, str) and dim in known:
                dims.append(known[dim])
            elif axis == 0:
                dims.append(DEFAULT_BATCH)
                if isinstance(dim, str):
                    known[dim] = DEFAULT_BATCH
            elif hints.get((spec.name, axis)):
                dims.append(hints[(spec.name, axis)])
                plan.notes.append(f"{spec.name} dim {axis} ({dim or '?'}) = {hints[(spec.name, axis)]}, "
                                  "declared in value_info")
            else:
                group = dim if isinstance(dim, str) else f"{spec.name}[{axis}]"
                if group not in plan.groups:
                    plan.groups.append(group)
                dims.append(group)
        plan.dims[spec.name] = tuple(dims)
    return plan


def _declared_sizes(model) -> Dict[Tuple[str, int], int]:
    """(input name, axis) -> size, where value_info declares a concrete size for a graph input's dim."""
    inputs = {value.name for value in model.graph.input}
    sizes = {}
    for value in model.graph.value_info:
        if value.name in inputs and value.type.HasField("tensor_type"):
            for axis, dim in enumerate(value.type.tensor_type.shape.dim):
                if dim.HasField("dim_value") and dim.dim_value > 0:
                    sizes[(value.name, axis)] = dim.dim_value
    return sizes


def branch_inputs(model, specs: Sequence[InputSpec]) -> List[str]:
    """Bool graph inputs that decide an If (directly or through Identity/Not/Cast/...), in any graph."""
    from ..graph import subgraphs

    candidates = {spec.name for spec in specs if spec.dtype == np.bool_}
    if not candidates:
        return []
    derived = {name: name for name in candidates}  # tensor -> the graph input it passes through from
    found = set()

    def visit(nodes) -> None:
        for node in nodes:
            if node.op_type in _CONDITION_PASS_THROUGH and node.input and node.input[0] in derived:
                for output in node.output:
                    derived[output] = derived[node.input[0]]
            if node.op_type == "If" and node.input and node.input[0] in derived:
                found.add(derived[node.input[0]])
            for body in subgraphs(node):
                visit(body.node)

    visit(model.graph.node)
    return [spec.name for spec in specs if spec.name in found]


def make_feeds(specs: Sequence[InputSpec], shapes: Mapping[str, Tuple[int, ...]],
               provided: Mapping[str, np.ndarray], seed: int, texture: str = "noise") -> Dict[str, np.ndarray]:
    """The user's arrays where given, seeded random data of the planned shape elsewhere. texture="blocks": float
    image inputs (rank 4, both spatial dims at least 2 * BLOCK) get piecewise-constant random blocks instead of
    white noise: edges and flat regions, as images have, where a detector trained on images finds something."""
    feeds = feeds_for(specs, shapes, provided, seed)
    if texture == "blocks":
        rng = np.random.default_rng([seed, 1])
        for spec in specs:
            shape = feeds[spec.name].shape
            if spec.name not in provided and len(shape) == 4 and np.issubdtype(spec.dtype, np.floating) \
                    and min(shape[2:]) >= 2 * BLOCK:
                feeds[spec.name] = _blocks(shape, rng).astype(spec.dtype)
    return feeds


BLOCK = 8  # pixels per block of the "blocks" texture
TEXTURES = ("noise", "blocks")


def _blocks(shape: Tuple[int, ...], rng: np.random.Generator) -> np.ndarray:
    n, c, h, w = shape
    small = rng.standard_normal((n, c, -(-h // BLOCK), -(-w // BLOCK)))
    return small.repeat(BLOCK, axis=2).repeat(BLOCK, axis=3)[:, :, :h, :w]


def branch_variants(feeds: Dict[str, np.ndarray], names: Sequence[str]) -> List[Dict[str, np.ndarray]]:
    """The feeds with every If-deciding input all True, then all False (one variant when there is none)."""
    if not names:
        return [feeds]
    variants = []
    for value in (True, False):
        variant = dict(feeds)
        for name in names:
            variant[name] = np.full(feeds[name].shape, value, np.bool_)
        variants.append(variant)
    return variants
