"""What a fold did, as data (FoldReport) and as the text and JSON the CLI prints."""

from __future__ import annotations

import json
import re
from dataclasses import asdict, dataclass, field
from typing import Callable, Dict, List, Optional, Sequence

# A quoted name in a reason ('conv_out', or "it's" as repr writes a name with an apostrophe); an apostrophe after a
# letter (BN's) opens nothing.
_QUOTED_NAME = re.compile(r"(?<!\w)'[^']*'|(?<!\w)\"[^\"]*\"")


@dataclass
class BnDecision:
    """One BatchNormalization node: folded into `into` by `rule`, or kept for `reason`."""

    node: str
    output: str
    graph: str
    folded: bool
    rule: Optional[str] = None
    into: Optional[str] = None
    into_op: Optional[str] = None
    through: List[str] = field(default_factory=list)  # look-through ops the fold crossed
    reason: Optional[str] = None
    rounding_error: float = 0.0
    local_error: Optional[float] = None  # the local check's worst per-channel relative error
    local_check: Optional[str] = None  # why the local check did not judge this fold, when it did not
    rewritten: List[str] = field(default_factory=list)  # tensors the fold kept by name but gave new values
    standalone_possible: bool = False  # kept, but --standalone would replace it by Mul + Add
    internal_error: bool = False  # kept because a rule raised an exception on it (a bnfold bug; reason says which)

    @property
    def into_weights(self) -> bool:
        """Folded into a neighbour's weights (not just replaced by Mul + Add)."""
        return self.folded and self.rule != "standalone"

    def describe(self) -> str:
        """'bn -> 'y' into Conv conv through Add [forward]', with the local check's error when it ran."""
        through = f" through {', '.join(self.through)}" if self.through else ""
        checked = f", local error {self.local_error:.2g}" if self.local_error is not None else ""
        return f"{self.label} into {self.into_op} {self.into}{through} [{self.rule}{checked}]"

    @property
    def label(self) -> str:
        where = "" if self.graph == "main" else f" in {self.graph}"
        return f"{self.node or '(unnamed)'} -> {self.output!r}{where}"


@dataclass
class InitializerInputs:
    """A model whose initializers are nearly all graph inputs too (IR >= 4), as old PyTorch exporters wrote them
    (keep_initializers_as_inputs). ONNX calls them overridable defaults; bnfold folds them as constants unless
    keep_input_initializers, and removes from the inputs those the fold left unread."""

    initializers: int
    listed_as_inputs: int
    folded_as_constants: bool
    decided_by: str = "default"  # or "fold_input_initializers", "keep_input_initializers" (the option given)
    bn_kept: int = 0  # BNs kept because what they need is such an input
    inputs_removed: int = 0  # graph inputs the fold left unread and removed

    def describe(self) -> str:
        share = (f"{self.listed_as_inputs} of {self.initializers} initializers are also graph inputs (an old "
                 "exporter's keep_initializers_as_inputs)")
        if not self.folded_as_constants:
            return (f"{share}: kept as overridable inputs (--keep-input-initializers), {self.bn_kept} BN kept "
                    "because of it")
        removed = f"{self.inputs_removed} graph input{'' if self.inputs_removed == 1 else 's'} removed"
        if self.decided_by == "fold_input_initializers":
            return f"{share}: folded as constants (--fold-input-initializers); {removed} (the unread ones)"
        return (f"{share}: folded as constants; {removed} (the unread ones; --keep-input-initializers keeps them "
                "as overridable inputs)")

    @property
    def worth_saying(self) -> bool:
        return bool(self.bn_kept or self.inputs_removed or self.decided_by != "default")


@dataclass
class BranchMerge:
    """One Add / Sum whose inputs are parallel branches of one tensor: merged into the Conv `into`, or kept for
    `reason` (the branches matched, but cannot be summed into one Conv exactly)."""

    node: str
    output: str
    graph: str
    branches: List[str]  # what each summed input was: "Conv 'name'", "identity through BatchNormalization 'bn'"...
    merged: bool = False
    into: Optional[str] = None
    kernel: List[int] = field(default_factory=list)  # the merged Conv's kernel and groups
    group: Optional[int] = None
    reason: Optional[str] = None
    rounding_error: float = 0.0
    local_error: Optional[float] = None
    local_check: Optional[str] = None
    internal_error: bool = False  # kept because the merge raised an exception (a bnfold bug; reason says which)

    @property
    def label(self) -> str:
        where = "" if self.graph == "main" else f" in {self.graph}"
        return f"{self.node or '(unnamed)'} -> {self.output!r}{where}"

    def describe(self) -> str:
        checked = f", local error {self.local_error:.2g}" if self.local_error is not None else ""
        kernel = "x".join(map(str, self.kernel))
        return (f"{self.label}: {' + '.join(self.branches)} into Conv {self.into} ({kernel}, group {self.group}"
                f"{checked})")


def empty_record(report: str, node: str, output: str, graph: str):
    """A record for the report list `report` ("decisions", "decomposed" or "merges") before a rule filled it in."""
    if report == "merges":
        return BranchMerge(node=node, output=output, graph=graph, branches=[])
    return BnDecision(node=node, output=output, graph=graph, folded=False)


@dataclass
class FoldReport:
    decisions: List[BnDecision] = field(default_factory=list)  # one per BatchNormalization node
    decomposed: List[BnDecision] = field(default_factory=list)  # Mul/Add chains recognised as a BN
    merges: List[BranchMerge] = field(default_factory=list)  # Add / Sum of parallel branches (rules.merge_branches)
    local_check: Optional[dict] = None  # what the local check covered (bnfold.checking.folds)
    ops_before: Dict[str, int] = field(default_factory=dict)
    ops_after: Dict[str, int] = field(default_factory=dict)
    initializer_bytes_before: int = 0
    initializer_bytes_after: int = 0
    elapsed_s: float = 0.0  # the whole call: fold_file's load, fold, checks and write; fold()'s fold alone
    fold_s: float = 0.0  # the fold itself, its local check included
    verify_s: Optional[float] = None  # the end-to-end check, when it ran
    source: Optional[str] = None
    destination: Optional[str] = None
    written: bool = False
    verification: Optional[object] = None  # a bnfold.VerifyResult when the fold was verified
    verification_skipped: Optional[str] = None  # why the end-to-end check could not run, when it could not
    initializer_inputs: Optional[InitializerInputs] = None  # set when nearly all initializers are graph inputs
    removed_inputs: List[str] = field(default_factory=list)  # initializer inputs the fold left unread, removed
    sorted_graphs: List[str] = field(default_factory=list)  # graphs whose nodes had to be sorted topologically

    @property
    def folded(self) -> List[BnDecision]:
        return [d for d in self.decisions if d.folded]

    @property
    def into_weights(self) -> List[BnDecision]:
        return [d for d in self.decisions if d.into_weights]

    @property
    def standalone(self) -> List[BnDecision]:
        return [d for d in self.decisions if d.folded and not d.into_weights]

    @property
    def kept(self) -> List[BnDecision]:
        return [d for d in self.decisions if not d.folded]

    @property
    def folded_count(self) -> int:
        return len(self.folded)

    @property
    def kept_count(self) -> int:
        return len(self.kept)

    @property
    def merged(self) -> List[BranchMerge]:
        return [m for m in self.merges if m.merged]

    @property
    def changed(self) -> bool:
        """Anything folded or merged: a BN, a decomposed BN (Mul/Add chain) or parallel branches."""
        return self.folded_count > 0 or bool(self.merged) or any(d.folded for d in self.decomposed)

    @property
    def internal_errors(self) -> List[str]:
        """'label: reason' of every BN, chain and merge kept because a rule raised an exception on it."""
        return [f"{record.label}: {record.reason}" for record in [*self.decisions, *self.decomposed, *self.merges]
                if record.internal_error]

    def internal_error_warning(self) -> Optional[str]:
        """One line for the CLI's stderr when some fold hit an internal error (None when none did)."""
        errors = self.internal_errors
        if not errors:
            return None
        more = f" (and {len(errors) - 1} more, listed in the report)" if len(errors) > 1 else ""
        return f"{len(errors)} fold(s) kept after an internal error: {errors[0]}{more}"

    @property
    def max_rounding_error(self) -> float:
        return max((d.rounding_error for d in self.decisions), default=0.0)

    def to_dict(self) -> dict:
        data = {
            "source": self.source,
            "destination": self.destination,
            "written": self.written,
            "elapsed_s": round(self.elapsed_s, 6),
            "fold_s": round(self.fold_s, 6),
            "verify_s": None if self.verify_s is None else round(self.verify_s, 6),
            "bn_total": len(self.decisions),
            "bn_folded": self.folded_count,
            "bn_into_weights": len(self.into_weights),
            "bn_standalone": len(self.standalone),
            "bn_kept": self.kept_count,
            "decomposed_total": len(self.decomposed),
            "decomposed_folded": sum(d.folded for d in self.decomposed),
            "merges_total": len(self.merges),
            "merges_done": len(self.merged),
            "max_rounding_error": self.max_rounding_error,
            "ops_before": dict(sorted(self.ops_before.items())),
            "ops_after": dict(sorted(self.ops_after.items())),
            "initializer_bytes_before": self.initializer_bytes_before,
            "initializer_bytes_after": self.initializer_bytes_after,
            "decisions": [asdict(d) for d in self.decisions],
            "decomposed": [asdict(d) for d in self.decomposed],
            "merges": [asdict(m) for m in self.merges],
            "local_check": self.local_check,
            "initializer_inputs": asdict(self.initializer_inputs) if self.initializer_inputs else None,
            "removed_inputs": list(self.removed_inputs),
            "sorted_graphs": list(self.sorted_graphs),
            "internal_errors": self.internal_errors,
        }
        if self.verification is not None:
            data["verification"] = self.verification.to_dict()
        if self.verification_skipped:
            data["verification_skipped"] = self.verification_skipped
        return data

    def to_json(self, indent: int = 2) -> str:
        return json.dumps(self.to_dict(), indent=indent)

    def render(self, verbose: bool = False) -> str:
        """A compact before/after table, the kept BNs with reasons (and the folded ones when verbose)."""
        lines = []
        if self.source:
            target = self.destination if self.written else "(not written)"
            lines.append(f"{self.source} -> {target}")
        ops = sorted(set(self.ops_before) | set(self.ops_after))
        width = max([len("initializer size"), *map(len, ops)])
        lines.append(f"{'':{width}}  {'before':>10}  {'after':>10}")
        for op in ops:
            before, after = self.ops_before.get(op, 0), self.ops_after.get(op, 0)
            marker = "" if before == after else f"  ({after - before:+d})"
            lines.append(f"{op:{width}}  {before:>10}  {after:>10}{marker}")
        lines.append(f"{'initializer size':{width}}  {size_text(self.initializer_bytes_before):>10}  "
                     f"{size_text(self.initializer_bytes_after):>10}")
        total = len(self.decisions)
        lines.append(f"BatchNormalization: {self.folded_count} of {total} folded ({len(self.into_weights)} into "
                     f"weights, {len(self.standalone)} as Mul + Add), {self.kept_count} kept  ({self._times()})")
        if not self.changed:
            lines.append("unchanged: nothing was folded or merged" + ("; the model written has the input's graph"
                                                                      if self.written else ""))
        lines.extend(self.model_lines())
        for decision in self.folded if verbose else ():
            lines.append(f"  folded {decision.describe()}")
        lines.extend(kept_lines(self.kept, "BN", verbose))
        if self.decomposed:
            done = [d for d in self.decomposed if d.folded]
            lines.append(f"decomposed BN (Mul/Add chains after a producer): {len(done)} of {len(self.decomposed)} "
                         "folded into weights")
            for decision in (done if verbose else ()):
                lines.append(f"  folded {decision.describe()}")
            lines.extend(kept_lines([d for d in self.decomposed if not d.folded], "chain", verbose))
        if self.merges:
            lines.append(f"parallel branches (RepVGG-style Add / Sum of one input): {len(self.merged)} of "
                         f"{len(self.merges)} merged into one Conv")
            for merge in (self.merged if verbose else ()):
                lines.append(f"  merged {merge.describe()}")
            lines.extend(kept_lines([m for m in self.merges if not m.merged], "Add / Sum", verbose))
        if self.local_check and self.local_check.get("ran") and (self.local_check["checked"] or
                                                                  self.local_check["skipped"]):
            worst = self.local_check.get("worst_error")
            methods = self.local_check.get("methods") or {}
            how = ", ".join(f"{count} in {method}" for method, count in sorted(methods.items())) or "ONNX Runtime"
            lines.append(f"local check: {self.local_check['checked']} fold(s) run on their own ({how})"
                         + (f", worst per-channel error {worst:.2g}" if worst is not None else ""))
            if self.local_check.get("skipped"):
                lines[-1] += f"; {self.local_check['skipped']} skipped (ONNX Runtime cannot run the original piece)"
        elif self.local_check and not self.local_check.get("ran"):
            lines.append(f"local check: not run ({self.local_check.get('why')})")
        if self.max_rounding_error:
            lines.append(f"largest weight change from rounding to the weight dtype: {self.max_rounding_error:.3g}")
        if self.verification_skipped:
            lines.append(self.verification_skipped)
        return "\n".join(lines)

    def _times(self) -> str:
        """'fold 0.21 s', with the end-to-end check's time apart when it ran: a verified fold is mostly checking."""
        fold = f"fold {self.fold_s:.2f} s"
        return fold if self.verify_s is None else f"{fold}, end-to-end check {self.verify_s:.2f} s"

    def model_lines(self) -> List[str]:
        """What the model itself made bnfold do or leave: said once, not per BN."""
        lines = []
        if self.sorted_graphs:
            where = ", ".join(self.sorted_graphs[:3]) + (f" and {len(self.sorted_graphs) - 3} more"
                                                         if len(self.sorted_graphs) > 3 else "")
            lines.append(f"nodes were not in topological order; sorted ({where})")
        info = self.initializer_inputs
        if info is not None and info.worth_saying:
            lines.append(info.describe())
        elif info is None and self.removed_inputs:
            lines.append(f"graph inputs removed: {len(self.removed_inputs)} (initializers listed as inputs that "
                         "the fold left unread; the other inputs are unchanged)")
        return lines


def reason_kind(reason: Optional[str]) -> str:
    """A reason with the names it quotes blanked: the same hint about different tensors and nodes reads the same."""
    return _QUOTED_NAME.sub("'…'", reason or "")


def kept_lines(items: Sequence, noun: str, verbose: bool, prefix: str = "  kept   ",
               reason: Callable[[object], Optional[str]] = lambda item: item.reason) -> List[str]:
    """One 'label: reason' line per kept item. Unless verbose, a reason several items share (up to the names it
    quotes) is said once, where its first item stands, with the count and that item as the example; every
    distinct reason keeps its own line."""
    if verbose:
        return [f"{prefix}{item.label}: {reason(item)}" for item in items]
    groups: Dict[str, list] = {}
    for item in items:
        groups.setdefault(reason_kind(reason(item)), []).append(item)
    lines = []
    for group in groups.values():
        if len(group) == 1:
            lines.append(f"{prefix}{group[0].label}: {reason(group[0])}")
        else:
            first = group[0]
            lines.append(f"{prefix}{len(group)} {noun} for the same reason (-v lists each), e.g. {first.label}: "
                         f"{reason(first)}")
    return lines


def size_text(count: int) -> str:
    """1023 B, 1.4 KiB, 80.4 MiB: a byte count as the report prints it."""
    if count < 1024:
        return f"{count} B"
    for unit in ("KiB", "MiB", "GiB"):
        count /= 1024
        if count < 1024 or unit == "GiB":
            return f"{count:.1f} {unit}"
