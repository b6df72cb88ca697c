"""Folding many models in one run: inputs and directories expanded, one worker process per job, one result each.

A model that fails (cannot be read, verification fails, a bug) is recorded with its exit code and message and the
others go on. The run's exit code is the worst per-model code (3 internal > 2 usage/input/output > 1 verification
failed > 0). Workers come from a forkserver where the platform has one (spawn elsewhere), never from a plain fork
of a process that may already run ONNX Runtime threads; `jobs=1` folds in this process.
"""

from __future__ import annotations

import multiprocessing
import os
import signal
import time
from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait
from dataclasses import dataclass, field
from pathlib import Path, PurePath
from typing import Callable, List, Optional, Sequence, Tuple

from .errors import EXIT_INTERNAL, EXIT_OK, EXIT_USAGE, EXIT_VERIFY_FAILED, BnfoldError, OutputError, UsageError
from .options import VerifyOptions, as_count, as_paths
from .tables import format_table

EXIT_INTERRUPTED = 130
MODEL_SUFFIX = ".onnx"


@dataclass
class ModelResult:
    """One model of a run: its report when it was folded, else the error that stopped it."""

    source: str
    destination: Optional[str]
    exit_code: int = EXIT_OK
    error: Optional[str] = None
    report: Optional[object] = None  # a bnfold.FoldReport
    elapsed_s: float = 0.0

    @property
    def message(self) -> str:
        """The error as one line that names the model."""
        error = self.error or ""
        return error if error.startswith(self.source) else f"{self.source}: {error}"

    @property
    def verdict(self) -> str:
        """PASSED / FAILED (verification), 'not verified', 'unchanged' (nothing folded) or 'error'."""
        verification = getattr(self.report, "verification", None)
        if verification is not None:
            return "PASSED" if verification.passed else "FAILED"
        if self.exit_code not in (EXIT_OK, EXIT_VERIFY_FAILED):
            return "error"
        if self.report is not None and not self.report.changed:
            return "unchanged"
        return "not verified"

    def to_dict(self) -> dict:
        return {"source": self.source, "destination": self.destination, "exit_code": self.exit_code,
                "verdict": self.verdict, "error": self.error, "elapsed_s": round(self.elapsed_s, 6),
                "report": None if self.report is None else self.report.to_dict()}


@dataclass
class BatchResult:
    """Every model of a run, in input order."""

    models: List[ModelResult] = field(default_factory=list)
    jobs: int = 1
    elapsed_s: float = 0.0

    @property
    def exit_code(self) -> int:
        return worst_exit_code(model.exit_code for model in self.models)

    @property
    def failed(self) -> List[ModelResult]:
        return [model for model in self.models if model.exit_code != EXIT_OK]

    def to_dict(self) -> dict:
        return {"exit_code": self.exit_code, "jobs": self.jobs, "elapsed_s": round(self.elapsed_s, 6),
                "models_total": len(self.models), "models_failed": len(self.failed),
                "models": [model.to_dict() for model in self.models]}

    def table(self) -> str:
        """model | BN folded | BN kept | verification | time, then one line for the run."""
        rows = [(model.source,
                 "-" if model.report is None else str(model.report.folded_count),
                 "-" if model.report is None else str(model.report.kept_count),
                 model.verdict, f"{model.elapsed_s:.2f} s") for model in self.models]
        header = ("model", "BN folded", "BN kept", "verification", "time")
        lines = format_table(header, rows, left=1)
        failed = len(self.failed)
        lines.append(f"{len(self.models)} model{'s' if len(self.models) != 1 else ''}, {failed} failed, "
                     f"{self.jobs} job{'s' if self.jobs != 1 else ''}, {self.elapsed_s:.2f} s; exit code {self.exit_code}")
        return "\n".join(lines)


def worst_exit_code(codes) -> int:
    """130 (interrupted) above everything, then the highest code: 3 > 2 > 1 > 0."""
    codes = list(codes)
    if EXIT_INTERRUPTED in codes:
        return EXIT_INTERRUPTED
    return max(codes, default=EXIT_OK)


def default_jobs() -> int:
    """The cores this process may run on."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


def collect_models(paths: Sequence[str], exclude: Optional[Path] = None) -> List[Tuple[Path, PurePath]]:
    """(model path, path relative to its output directory) for every input: a file as its own name, a directory
    as every *.onnx below it (recursively, sorted) relative to it. Files under `exclude` (the output directory) are
    skipped. A path that does not exist stays in the list: it fails as that model's error."""
    exclude = exclude.resolve() if exclude is not None else None
    found: List[Tuple[Path, PurePath]] = []
    for text in paths:
        path = Path(text)
        if not path.is_dir():
            found.append((path, PurePath(path.name)))
            continue
        models = [model for model in sorted(path.rglob(f"*{MODEL_SUFFIX}"))
                  if model.is_file() and not _inside(model, exclude)]
        if not models:
            raise UsageError(f"{path}: no {MODEL_SUFFIX} files in this directory")
        found.extend((model, model.relative_to(path)) for model in models)
    unique = {}
    for model, relative in found:
        first = unique.setdefault(relative, model)
        if first.resolve() != model.resolve():
            raise UsageError(f"{first} and {model} would both be written as {relative}; "
                             "fold them in separate runs or give their directory instead")
    return [(model, relative) for relative, model in unique.items()]


def _inside(path: Path, directory: Optional[Path]) -> bool:
    if directory is None:
        return False
    try:
        path.resolve().relative_to(directory)
        return True
    except ValueError:
        return False


def fold_files(
    paths,
    out_dir=None,
    *,
    jobs: Optional[int] = None,
    dry_run: bool = False,
    progress: Optional[Callable[[ModelResult, int, int], None]] = None,
    **fold_options,
) -> BatchResult:
    """Fold (and verify) each model in `paths` (files, or directories searched recursively for *.onnx) and write
    it under `out_dir`, keeping its path relative to the directory given (a file given by itself keeps its name).

    jobs: worker processes (default: the cores this process may use; 1 folds in this process). `fold_options` are
    bnfold.fold_file's keyword arguments (verify, force, overwrite, check, external_data, verify_options, skip,
    ...). `progress(result, done, total)` is called as each model finishes. One model's failure does not stop the
    others: each ModelResult carries its exit code and error; BatchResult.exit_code is the worst of them.
    """
    started = time.perf_counter()
    paths = as_paths(paths, "paths")
    if not paths:
        raise UsageError("no models given")
    jobs = default_jobs() if jobs is None else as_count(jobs, "jobs", minimum=1)
    fold_options["verify_options"] = VerifyOptions.of(fold_options.get("verify_options"))
    if out_dir is None and not dry_run:
        raise UsageError("no output directory: pass out_dir (-o DIR), or dry_run=True (--dry-run) to only report")
    out = None if out_dir is None else Path(as_paths(out_dir, "out_dir")[0])
    if out is not None and not dry_run and not out.is_dir():
        try:
            out.mkdir(parents=True)  # as `bnfold DIR -o OUT` does: the output directory is created
        except OSError as error:
            raise OutputError(f"{out}: cannot create the output directory ({error.strerror or error})") from None
    models = collect_models(paths, exclude=out)
    tasks = [(str(source), None if out is None else str(out / relative), dry_run, fold_options)
             for source, relative in models]
    results: List[Optional[ModelResult]] = [None] * len(tasks)
    jobs = min(jobs, len(tasks))

    def finished(index: int, result: ModelResult) -> None:
        results[index] = result
        if progress is not None:
            progress(result, sum(r is not None for r in results), len(tasks))

    if jobs <= 1:
        for index, task in enumerate(tasks):
            finished(index, fold_one(*task))
    else:
        _run_in_workers(tasks, jobs, finished)
    return BatchResult(models=results, jobs=jobs, elapsed_s=time.perf_counter() - started)


def _run_in_workers(tasks, jobs: int, finished) -> None:
    context = _worker_context()
    with ProcessPoolExecutor(max_workers=jobs, mp_context=context, initializer=_worker_started) as pool:
        pending = {pool.submit(fold_one, *task): index for index, task in enumerate(tasks)}
        try:
            while pending:
                done, _ = wait(pending, return_when=FIRST_COMPLETED)
                for future in done:
                    finished(pending.pop(future), future.result())
        except BaseException:
            pool.shutdown(wait=True, cancel_futures=True)
            raise


def _worker_context():
    methods = multiprocessing.get_all_start_methods()
    if "forkserver" in methods:
        context = multiprocessing.get_context("forkserver")
        context.set_forkserver_preload(["bnfold.folding"])
        return context
    return multiprocessing.get_context("spawn")


_folding_now = False
_in_worker = False


def _worker_started() -> None:
    """Ctrl-C reaches every process of the terminal's group: an idle worker ignores it, a busy one stops its model
    (temporary files removed) and reports it as interrupted; the parent prints the one line."""
    global _in_worker

    def on_interrupt(signum, frame):
        if _folding_now:
            raise KeyboardInterrupt

    _in_worker = True
    signal.signal(signal.SIGINT, on_interrupt)


def fold_one(source: str, destination: Optional[str], dry_run: bool, fold_options: dict) -> ModelResult:
    """Fold one model as bnfold.fold_file does, turning every failure into the result's exit code and message."""
    global _folding_now
    from .errors import VerificationFailed
    from .folding import fold_file

    started = time.perf_counter()
    result = ModelResult(source=source, destination=None if dry_run else destination)
    _folding_now = True
    try:
        if destination is not None and not dry_run:
            Path(destination).parent.mkdir(parents=True, exist_ok=True)
        result.report = fold_file(source, destination, dry_run=dry_run, **fold_options)
        verification = result.report.verification
        if verification is not None and not verification.passed:
            result.exit_code, result.error = EXIT_VERIFY_FAILED, "verification FAILED; written because of force"
    except VerificationFailed as failure:
        result.exit_code, result.error = failure.exit_code, str(failure)
        result.report = getattr(failure, "report", None)
    except BnfoldError as error:
        result.exit_code, result.error = error.exit_code, str(error)
    except OSError as error:  # creating the output's directory
        result.exit_code, result.error = EXIT_USAGE, f"{destination}: cannot create its directory ({error.strerror})"
    except KeyboardInterrupt:
        if not _in_worker:
            raise
        result.exit_code, result.error = EXIT_INTERRUPTED, "interrupted"
    except Exception as error:  # a bug in bnfold: reported for this model, the others go on
        result.exit_code = EXIT_INTERNAL
        result.error = f"internal error: {type(error).__name__}: {error} (please report it)"
    finally:
        _folding_now = False
    result.elapsed_s = time.perf_counter() - started
    return result
