"""The fold engine: every scope (main graph, each If/Loop/Scan body, each function body) with types looked up in
that scope; in each, every BatchNormalization and decomposed-BN candidate in graph order, offered to the rules:

1. forward: walk up through the look-through chain to a producer and fold into it;
2. backward: walk down to the readers and fold into them;
3. standalone (opt-in): only where the walk up reached no producer and no reader can absorb it, Mul + Add.

A BN that none of these folds stays, with the first refusal's reason. Each fold is planned as an Edit before the
graph changes, so a refusal leaves it byte-identical, and applied all or nothing (graph.edits). An exception of
any kind while one candidate is matched, planned or applied keeps that BN (or sum, or chain) with the reason
"internal error in <rule>: ... (please report)"; the rest of the model folds as usual.

Every Add / Sum is offered to merge_branches: parallel branches of one tensor (RepVGG, MobileOne) become one Conv.
Branch BNs come before their sum in graph order, so they are folded into their Convs (or became Mul + Add) by then,
and a BN after the sum folds into the merged Conv when it is visited.
"""

from __future__ import annotations

from typing import Dict, List, Optional

import onnx
from onnx import helper

from .checking.folds import LocalChecker
from .graph import (DEFAULT_DOMAINS, Edit, GraphIndex, ModelScope, NotConstant, attribute, function_types,
                    is_op, node_label, scope_types)
from .graph.pieces import PieceBuilder
from .report import BnDecision, BranchMerge
from .rules import PRODUCER_RULES, backward, decomposed, forward, merge_branches, standalone
from .rules.base import Refuse, read_batchnorm
from .rules.chain import LOOK_THROUGH, walk_up
from .rules.producers import PRODUCERS

# Ops checked against their ONNX schema before any rule reads them.
VALIDATED_OPS = frozenset({"BatchNormalization", "DequantizeLinear", "CastLike", "Transpose", "Shape", "Expand",
                           "ConstantOfShape", "Constant", *LOOK_THROUGH, *PRODUCERS})


class Engine:
    """Folds one model in place and records a decision for every BN and decomposed-BN candidate."""

    def __init__(self, model: onnx.ModelProto, options, excluded: Optional[Dict[tuple, str]] = None,
                 model_bytes: Optional[int] = None):
        self.model = model
        self.options = options
        self.excluded = excluded or {}  # (scope path, output) -> why that fold is not made (it failed its check)
        self.checker = LocalChecker(model) if options.local_check else None
        if model_bytes is None:
            from .tensors import tensor_bytes

            model_bytes = tensor_bytes(model)
        self.scope = ModelScope(model, model_bytes=model_bytes, fold_input_initializers=options.fold_input_initializers)
        self.types = scope_types(model)
        skipped = set(options.skip)
        self.producers = tuple(op for op, name in PRODUCER_RULES.items() if name not in skipped)
        self.skipped = skipped
        self.decisions: List[BnDecision] = []
        self.decomposed: List[BnDecision] = []
        self.merges: List[BranchMerge] = []
        self.rule = ""  # the rule at work, named by an internal error

    def run(self) -> None:
        self.fold_graph(self.model.graph, None, "main", key=())
        for function in self.model.functions:
            self.fold_function(function)
        if self.checker is not None:
            self.checker.flush()

    @property
    def local_failures(self) -> Dict[tuple, str]:
        return self.checker.failures if self.checker is not None else {}

    @property
    def local_summary(self) -> Optional[dict]:
        return self.checker.summary() if self.checker is not None else None

    def fold_function(self, function: onnx.FunctionProto) -> None:
        """Fold inside a model-local function body, which every call site shares: only BNs whose weights and
        parameters are constants of the body fold (--inline-functions folds the others per call site)."""
        body = helper.make_graph(list(function.node), function.name,
                                 [helper.make_value_info(name, onnx.TypeProto()) for name in function.input],
                                 [helper.make_value_info(name, onnx.TypeProto()) for name in function.output])
        self.fold_graph(body, None, f"function {function.domain}.{function.name}", key=None,
                        function_types=function_types(function))
        del function.node[:]
        function.node.extend(body.node)

    def fold_graph(self, graph: onnx.GraphProto, parent: Optional[GraphIndex], path: str, key,
                   function_types=None) -> None:
        types = function_types if key is None else self.types.get(key)
        index = GraphIndex(graph, model=self.scope, path=path, parent=parent, types=types,
                           function=key is None, validated_ops=VALIDATED_OPS)
        for position, node in enumerate(index.nodes):
            if not index.is_removed(node) and node.domain in DEFAULT_DOMAINS:
                if node.op_type == "BatchNormalization":
                    decision = self._decision(node, index)
                    self.decisions.append(decision)
                    self._contained(decision, lambda: self.fold_batchnorm(node, index, decision))
                else:
                    merged = (node.op_type in merge_branches.SUMS and "merge_branches" not in self.skipped
                              and self._contained(None, lambda: self.merge_branches(node, index), node, index))
                    if not merged and "decomposed" not in self.skipped and node.op_type in ("Add", "Sub", "Mul",
                                                                                            "Div"):
                        self._contained(None, lambda: self.fold_decomposed(node, index), node, index)
            for attr in node.attribute:
                bodies = [attr.g] if attr.type == onnx.AttributeProto.GRAPH else list(attr.graphs)
                for number, body in enumerate(bodies):
                    suffix = f"[{number}]" if len(bodies) > 1 else ""
                    self.fold_graph(body, index, f"{path}/{node_label(node)}.{attr.name}{suffix}",
                                    key=None if key is None else key + (position, attr.name, number),
                                    function_types=function_types)
        index.editor.finish()

    def _contained(self, record, work, node=None, index=None):
        """Run one candidate's work; an exception it raises keeps that candidate, with the internal-error reason.
        `record` is its decision (or merge); None when `work` makes its own: then the last one it made, or (when
        the exception came before any) a new one for `node`, takes the reason."""
        self.rule = "forward"
        made = len(self.merges), len(self.decomposed)
        try:
            return work()
        except Exception as error:  # noqa: BLE001 - one fold never sinks the run
            reason = f"internal error in {self.rule}: {type(error).__name__}: {error} (please report)"
            if record is None:
                record = self._failed_record(node, index, made)
            if isinstance(record, BranchMerge):
                record.merged = False
            else:
                record.folded = False
            record.reason, record.internal_error = reason, True
            return False

    def _failed_record(self, node, index, made):
        """The merge or decomposed decision the failed work made, or a new one for `node`."""
        if len(self.merges) > made[0]:
            return self.merges[-1]
        if len(self.decomposed) > made[1]:
            return self.decomposed[-1]
        if self.rule == "merge_branches":
            merge = BranchMerge(node=node_label(node), output=node.output[0], graph=index.path, branches=[])
            self.merges.append(merge)
            return merge
        decision = self._decision(node, index)
        self.decomposed.append(decision)
        return decision

    def _decision(self, node: onnx.NodeProto, index: GraphIndex) -> BnDecision:
        return BnDecision(node=node.name, output=node.output[0] if node.output else "", graph=index.path,
                          folded=False)

    def _apply(self, decision: BnDecision, edit: Edit, rule: str, index: GraphIndex) -> None:
        self.rule = rule
        builder = PieceBuilder(decision.label, edit, index, edit.output_axes) if self.checker is not None else None
        # What keeps its name but not its values: the chain's kept views, and a forward fold's producers.
        changed = (*edit.through, *(edit.into if rule in ("forward", "decomposed") else ()))
        rewritten = [name for node in changed for name in node.output if name and name != decision.output]
        piece = index.editor.apply(edit, then=builder.after if builder is not None else None)
        decision.rewritten = rewritten
        if piece is not None:
            self.checker.add(piece, decision, (index.path, decision.output))
        decision.folded, decision.reason, decision.rule = True, None, rule
        decision.into = ", ".join(node_label(node) for node in edit.into)
        decision.into_op = "+".join(node.op_type for node in edit.into)
        decision.through = [node.op_type for node in edit.through]
        decision.rounding_error = edit.rounding_error

    def fold_batchnorm(self, node: onnx.NodeProto, index: GraphIndex, decision: BnDecision) -> BnDecision:
        if (index.path, decision.output) in self.excluded:
            decision.reason = self.excluded[(index.path, decision.output)]
            return decision
        try:
            bn = read_batchnorm(node, index)
        except Refuse as why:
            decision.reason = str(why)
            return decision
        reasons = []
        producer, nodes, stop = walk_up(bn.input, index)
        if is_op(producer, ("Concat",)) and "forward" not in self.skipped:
            concat_reasons: List[str] = []  # a Concat that cannot absorb the BN is no producer: it may fold otherwise
            edit = self._try(lambda: forward.plan_concat(producer, nodes, index, bn, self.producers), concat_reasons,
                             "forward")
            if edit is not None:
                self._apply(decision, edit, "forward", index)
                return decision
            stop += f" ({concat_reasons[0]})"
        if not is_op(producer, PRODUCERS):
            producer = None
        if producer is not None:
            if producer.op_type not in self.producers or "forward" in self.skipped:
                which = "forward" if "forward" in self.skipped else PRODUCER_RULES[producer.op_type]
                reasons.append(f"{producer.op_type} node {node_label(producer)!r} could absorb it, but rule "
                               f"{which!r} is skipped")
            else:
                edit = self._try(lambda: forward.plan(producer, nodes, index, node, bn.scale, bn.shift),
                                 reasons, "forward")
                if edit is not None:
                    self._apply(decision, edit, "forward", index)
                    return decision
        if "backward" not in self.skipped:
            edit = self._try(lambda: backward.plan(bn, index, self.producers), reasons, "backward")
            if edit is not None:
                self._apply(decision, edit, "backward", index)
                return decision
        if producer is None:
            if "standalone" in self.skipped:
                reasons.append(f"input {stop}; nothing to fold it into, and rule 'standalone' is skipped")
            else:
                edit = self._try(lambda: standalone.plan(bn, index), reasons, "standalone")
                if edit is not None and self.options.standalone:
                    self._apply(decision, edit, "standalone", index)
                    return decision
                if edit is not None:
                    decision.standalone_possible = True
                    reasons.insert(0, f"input {stop}; nothing to fold it into (--standalone would make it Mul + Add, "
                                      "which ONNX Runtime runs 1.1-1.5x slower than BatchNormalization)")
        decision.reason = reasons[0] if reasons else f"input {stop}; nothing to fold it into"
        return decision

    def _try(self, plan, reasons: List[str], rule: str) -> Optional[Edit]:
        self.rule = rule
        try:
            return plan()
        except (Refuse, NotConstant) as why:
            reasons.append(f"{why} [{rule}]")
            return None

    def merge_branches(self, node: onnx.NodeProto, index: GraphIndex) -> bool:
        """Merge the parallel branches an Add / Sum sums into one Conv; whether it did. A sum of anything else
        (a residual connection, a bias) is no candidate and is not reported."""
        self.rule = merge_branches.NAME
        try:
            branches = merge_branches.candidate(node, index)
        except (Refuse, NotConstant):
            return False
        if branches is None:
            return False
        merge = BranchMerge(node=node_label(node), output=node.output[0], graph=index.path,
                            branches=branches.describe())
        self.merges.append(merge)
        if (index.path, merge.output) in self.excluded:
            merge.reason = self.excluded[(index.path, merge.output)]
            return False
        try:
            edit = merge_branches.plan(branches, index)
        except (Refuse, NotConstant) as why:
            merge.reason = str(why)
            return False
        into = edit.into[0]
        builder = PieceBuilder(merge.label, edit, index, edit.output_axes) if self.checker is not None else None
        piece = index.editor.apply(edit, then=builder.after if builder is not None else None)
        if piece is not None:
            self.checker.add(piece, merge, (index.path, merge.output))
        merge.merged, merge.into, merge.rounding_error = True, node_label(into), edit.rounding_error
        merge.kernel, merge.group = list(attribute(into, "kernel_shape")), int(attribute(into, "group"))
        self._absorbed_batchnorms(branches, index, merge)
        return True

    def _absorbed_batchnorms(self, branches, index: GraphIndex, merge: BranchMerge) -> None:
        """A BN no rule could fold (an identity BN of a tensor other nodes read) that a merge absorbed is folded."""
        merged = {(index.path, step.output[0]) for branch in branches.branches for step in branch.steps
                  if step.op_type == "BatchNormalization"}
        for decision in self.decisions:
            if not decision.folded and (decision.graph, decision.output) in merged:
                decision.folded, decision.reason, decision.rule = True, None, "merge_branches"
                decision.into, decision.into_op = merge.into, "Conv"
                decision.local_error = merge.local_error

    def fold_decomposed(self, node: onnx.NodeProto, index: GraphIndex) -> None:
        self.rule = decomposed.NAME
        try:
            found = decomposed.candidate(node, index)
        except (Refuse, NotConstant):
            return
        if found is None:
            return
        producer, nodes = found
        decision = self._decision(node, index)
        decision.node = node_label(nodes[0])
        reasons: List[str] = []
        if (index.path, decision.output) in self.excluded:
            reasons.append(self.excluded[(index.path, decision.output)])
        elif producer.op_type not in self.producers:
            reasons.append(f"rule {PRODUCER_RULES[producer.op_type]!r} is skipped")
        else:
            edit = self._try(lambda: forward.plan(producer, nodes, index, nodes[-1], None, None), reasons,
                             "decomposed")
            if edit is not None:
                self._apply(decision, edit, "decomposed", index)
        decision.reason = None if decision.folded else reasons[0]
        self.decomposed.append(decision)

