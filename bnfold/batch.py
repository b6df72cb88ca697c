"""Folding many models in one run: inputs and directories expanded, one worker process per job, one result each.

A model that fails (cannot be read, verification fails, a bug) is recorded with its exit code and message and the
others go on. The run's exit code is the worst per-model code (3 internal > 2 usage/input/output > 1 verification
failed > 0). Workers are fresh Python processes (bnfold.workers): a worker killed (out of memory) or past the
timeout fails its own model only, and the caller's script is never re-imported; `jobs=1` without a timeout folds in
this process. Every file the run would write is checked against every file it reads, and against the others,
before anything is written (bnfold.file_identity).
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass, field
from pathlib import Path, PurePath
from typing import Callable, List, Optional, Sequence, Tuple

from . import interrupts
from .errors import EXIT_INTERNAL, EXIT_OK, EXIT_USAGE, EXIT_VERIFY_FAILED, BnfoldError, OutputError, UsageError
from .options import FoldFileOptions, as_count, as_paths
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
    timeout: Optional[float] = None,
    also_writes: Sequence[Tuple[str, str]] = (),
    **fold_options,
) -> BatchResult:
    """Fold (and verify) each model in `paths` (files, or directories searched recursively for *.onnx) and write
    it under `out_dir`, keeping its path relative to the directory given (a file given by itself keeps its name).

    jobs: worker processes (default: the cores this process may use; 1 folds in this process). `fold_options` are
    bnfold.fold_file's keyword arguments (verify, force, overwrite, check, external_data, verify_options, skip,
    ..., or options=bnfold.options.FoldFileOptions), checked once before any model is read. `progress(result,
    done, total)` is called as each model finishes. One model's failure does not stop the others: each
    ModelResult carries its exit code and error; BatchResult.exit_code is the worst of them. A model whose worker
    is killed (the OOM killer) or runs past `timeout` seconds fails with exit code 3 and says so; a fresh worker
    takes the next model. Safe to call from a script without an `if __name__ == "__main__":` guard.
    also_writes: (path, what) of files the caller will write after the run (a report), checked with the outputs.
    No output may replace a model or external data file of the run, or another output (OutputError, nothing
    written), except a model's own file with overwrite=True.
    """
    started = time.perf_counter()
    paths = as_paths(paths, "paths")
    if not paths:
        raise UsageError("no models given")
    jobs = default_jobs() if jobs is None else as_count(jobs, "jobs", minimum=1)
    if timeout is not None and (isinstance(timeout, bool) or not isinstance(timeout, (int, float))
                                or not timeout > 0):
        raise UsageError(f"timeout: expected a positive number of seconds, got {timeout!r}")
    options = FoldFileOptions.of(fold_options.pop("options", None), {**fold_options, "dry_run": dry_run})
    dry_run = options.file.dry_run
    if out_dir is None and not dry_run:
        raise UsageError("no output directory: pass out_dir (-o DIR), or dry_run=True (--dry-run) to only report")
    out = None if out_dir is None else Path(as_paths(out_dir, "out_dir")[0])
    if out is not None and not dry_run and not out.is_dir():
        try:
            out.mkdir(parents=True)  # as `bnfold DIR -o OUT` does: the output directory is created
        except OSError as error:
            raise OutputError(f"{out}: cannot create the output directory ({error.strerror or error})") from None
    models = collect_models(paths, exclude=out)
    tasks = [(str(source), None if out is None else str(out / relative), options) for source, relative in models]
    _refuse_overlaps(tasks, options, also_writes)
    results: List[Optional[ModelResult]] = [None] * len(tasks)
    jobs = min(jobs, len(tasks))

    def finished(index: int, result: ModelResult) -> None:
        results[index] = result
        if progress is not None:
            progress(result, sum(r is not None for r in results), len(tasks))

    if jobs <= 1 and timeout is None:
        for index, task in enumerate(tasks):
            finished(index, fold_one(*task))
    else:
        _run_in_workers(tasks, jobs, timeout, finished)
    return BatchResult(models=results, jobs=jobs, elapsed_s=time.perf_counter() - started)


# Models whose files add up to this much may be saved with external data even when not asked (see save_model).
_MAY_EXTERNALIZE_BYTES = 1 << 30


def _refuse_overlaps(tasks, options: FoldFileOptions, also_writes) -> None:
    """The run's outputs (models, data files, the caller's report) against each other and its inputs."""
    from .file_identity import identity, model_files, refuse_overlaps_with_models
    from .saving import data_file_path

    external_data = options.file.external_data
    writes = []
    for source, destination, _ in tasks:
        if destination is None or options.file.dry_run:
            continue
        writes.append((destination, f"the output of {source}"))
        if external_data or (external_data is None and _size(source) >= _MAY_EXTERNALIZE_BYTES):
            writes.append((data_file_path(destination), f"the external data file of {source}'s output"))
    writes += list(also_writes)
    sources = [source for source, *_ in tasks]
    own = []  # --overwrite: a model's output may replace the model itself, and its data file that model's data
    for source, destination, _ in tasks:
        if options.file.overwrite and destination is not None and identity(destination) == identity(source):
            own.append((destination, source))
            own += [(data_file_path(destination), data) for data, _ in model_files(source)[1:]]
    refuse_overlaps_with_models(sources, writes, replaceable=own)


def _size(path: str) -> int:
    try:
        return os.stat(path).st_size
    except OSError:
        return 0


def _run_in_workers(tasks, jobs: int, timeout: Optional[float], finished) -> None:
    from .saving import remove_temporaries
    from .workers import run_tasks

    def failed(index: int, code: int, message: str, elapsed_s: float) -> None:
        source, destination, options = tasks[index]
        result = ModelResult(source=source, destination=None if options.file.dry_run else destination,
                             exit_code=code, error=message, elapsed_s=elapsed_s)
        finished(index, result)

    def cleanup(index: int, pid: int) -> None:
        destination = tasks[index][1]
        if destination is not None:
            remove_temporaries(destination, pid)

    run_tasks(fold_one, tasks, jobs, timeout, finished, failed, cleanup)


def fold_one(source: str, destination: Optional[str], options: FoldFileOptions) -> ModelResult:
    """Fold one model as bnfold.fold_file does, turning every failure into the result's exit code and message."""
    from .errors import VerificationFailed
    from .folding import fold_file

    dry_run = options.file.dry_run
    started = time.perf_counter()
    result = ModelResult(source=source, destination=None if dry_run else destination)
    try:
        if destination is not None and not dry_run:
            Path(destination).parent.mkdir(parents=True, exist_ok=True)
        result.report = fold_file(source, destination, options=options)
        verification = result.report.verification
        if verification is not None and not verification.passed:
            result.exit_code, result.error = EXIT_VERIFY_FAILED, "verification FAILED; written because of force"
    except Exception as error:  # this model's result; the others go on
        if interrupts.received():  # an error a library made of the Ctrl-C on its way up: the run stops
            raise interrupts.Interrupted() from None
        result.exit_code, result.error = _failure(error, destination)
        if isinstance(error, VerificationFailed):
            result.report = getattr(error, "report", None)
    result.elapsed_s = time.perf_counter() - started
    return result


def _failure(error: Exception, destination: Optional[str]) -> Tuple[int, str]:
    """(exit code, message) of a model that failed."""
    if isinstance(error, BnfoldError):
        return error.exit_code, str(error)
    if isinstance(error, OSError):  # creating the output's directory
        return EXIT_USAGE, f"{destination}: cannot create its directory ({error.strerror})"
    return EXIT_INTERNAL, f"internal error: {type(error).__name__}: {error} (please report it)"  # a bug in bnfold
