"""Worker processes for batch runs: each model is folded in a fresh Python process (`python -c` importing bnfold,
never the caller's script, so a plain script without an `if __name__ == "__main__":` guard can call fold_files),
one model at a time, tasks and results pickled over its stdin and stdout.

What a process pool would turn into a failure of the whole run stays one model's failure here: a worker that dies
(the OOM killer's SIGKILL, a crash) gives its model "worker killed by signal 9 (SIGKILL)", a worker past the
per-model timeout is killed and its model timed out; a fresh worker takes the next model. The temporary files a
killed worker was writing are removed (their names carry its pid: see bnfold.saving).

Workers run in a session of their own, so Ctrl-C at the terminal reaches only the parent: it kills the workers,
removes their temporary files and reports the interrupt once; no worker prints a traceback.
"""

from __future__ import annotations

import json
import os
import pickle
import queue
import signal
import struct
import subprocess
import sys
import threading
import time
from collections import deque
from typing import Callable, Deque, List, Optional, Sequence, Tuple

from .errors import EXIT_INTERNAL

# The worker's command: the parent's import path, then serve().
_BOOT = ("import json, os, sys; sys.path[:] = json.loads(os.environ.pop('BNFOLD_WORKER_PATH')); "
         "from bnfold.workers import serve; serve()")
_HEADER = struct.Struct(">Q")
# How long a worker told to stop (its stdin closed) may take before it is killed.
_STOP_WAIT_S = 5.0


def _send(stream, message) -> None:
    payload = pickle.dumps(message, protocol=pickle.HIGHEST_PROTOCOL)
    stream.write(_HEADER.pack(len(payload)) + payload)
    stream.flush()


def _receive(stream):
    """The next message, or None at the end of the stream (the other side closed it or died)."""
    header = stream.read(_HEADER.size)
    if len(header) < _HEADER.size:
        return None
    (length,) = _HEADER.unpack(header)
    payload = stream.read(length)
    if len(payload) < length:
        return None
    return pickle.loads(payload)


def serve() -> None:
    """A worker's life: run each (job, arguments) read from stdin, write each result to stdout, end at end of input.
    The job is a module-level function, pickled by reference: the worker imports it by name."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is the parent's to handle
    results = os.fdopen(os.dup(1), "wb")
    os.dup2(2, 1)  # anything printed goes to stderr, never into the results
    tasks = sys.stdin.buffer
    while True:
        task = _receive(tasks)
        if task is None:
            break
        job, arguments = task
        _send(results, job(*arguments))
    results.close()


class _Worker:
    """One worker process, and a thread that hands its messages (None when it ends) to the pool's queue."""

    def __init__(self, events: "queue.Queue", job: Callable):
        self.job = job
        env = dict(os.environ, BNFOLD_WORKER_PATH=json.dumps(sys.path))
        apart = {"start_new_session": True} if os.name == "posix" else \
            {"creationflags": getattr(subprocess, "CREATE_NEW_PROCESS_GROUP", 0)}
        self.process = subprocess.Popen([sys.executable, "-c", _BOOT], stdin=subprocess.PIPE,
                                        stdout=subprocess.PIPE, env=env, **apart)
        self.task: Optional[int] = None
        self.started = 0.0
        self.retired = False
        threading.Thread(target=self._read, args=(events,), daemon=True).start()

    def _read(self, events: "queue.Queue") -> None:
        while True:
            try:
                message = _receive(self.process.stdout)
            except (OSError, ValueError, EOFError, pickle.UnpicklingError):
                message = None
            events.put((self, message))
            if message is None:
                return

    def give(self, index: int, task: tuple) -> bool:
        """Send a task; False when the worker is gone already (its end is reported through the queue)."""
        self.task, self.started = index, time.monotonic()
        try:
            _send(self.process.stdin, (self.job, task))
            return True
        except (OSError, ValueError):
            return False

    def kill(self) -> int:
        self.retired = True
        try:
            self.process.kill()
        except OSError:
            pass
        return self.process.wait()

    def stop(self) -> None:
        """End of input: the worker finishes and exits; killed if it does not."""
        self.retired = True
        try:
            self.process.stdin.close()
        except OSError:
            pass
        try:
            self.process.wait(_STOP_WAIT_S)
        except subprocess.TimeoutExpired:
            self.kill()


def died(code: int) -> str:
    """Why a worker ended without a result, in words."""
    if code < 0:
        try:
            name = f" ({signal.Signals(-code).name})"
        except ValueError:
            name = ""
        return f"worker killed by signal {-code}{name} (out of memory?); the other models went on"
    return f"worker exited with code {code} before finishing; the other models went on"


def run_tasks(job: Callable, tasks: Sequence[tuple], jobs: int, timeout: Optional[float],
              finished: Callable[[int, object], None], failed: Callable[[int, int, str, float], None],
              cleanup: Callable[[int, int], None]) -> None:
    """Run job(*task) (a module-level function) for each task in `jobs` workers. finished(index, result) for each result;
    failed(index, exit code, message, seconds) for a model whose worker died or ran past `timeout` seconds;
    cleanup(index, pid) after a worker was killed while it folded task `index`."""
    events: "queue.Queue" = queue.Queue()
    pending: Deque[Tuple[int, tuple]] = deque(enumerate(tasks))
    workers: List[_Worker] = []
    busy: List[_Worker] = []

    def start() -> _Worker:
        worker = _Worker(events, job)
        workers.append(worker)
        return worker

    def retire(worker: _Worker, code: int, message: str) -> None:
        busy.remove(worker)
        index = worker.task
        worker.task = None
        cleanup(index, worker.process.pid)
        failed(index, code, message, time.monotonic() - worker.started)
        if pending:
            idle.append(start())

    idle: List[_Worker] = []
    try:
        idle += [start() for _ in range(min(jobs, len(tasks)))]
        while pending or busy:
            while idle and pending:
                worker = idle.pop()
                busy.append(worker)
                worker.give(*pending.popleft())
            wait = None
            if timeout is not None:
                wait = max(0.0, min(worker.started for worker in busy) + timeout - time.monotonic())
            try:
                worker, message = events.get(timeout=wait)
            except queue.Empty:
                now = time.monotonic()
                for worker in [w for w in busy if now - w.started >= timeout]:
                    worker.kill()
                    retire(worker, EXIT_INTERNAL, f"timed out after {timeout:g} s; its worker was stopped")
                continue
            if worker.retired:
                continue  # the end of a worker already dealt with
            if message is None:
                code = worker.kill()
                if worker in busy:
                    retire(worker, EXIT_INTERNAL, died(code))
                else:  # killed while it waited for work
                    idle.remove(worker)
                    if pending:
                        idle.append(start())
                continue
            busy.remove(worker)
            index, worker.task = worker.task, None
            finished(index, message)
            idle.append(worker)
    except BaseException:  # Ctrl-C, or an error in a callback: no worker outlives the run
        for worker in workers:
            if not worker.retired:
                worker.kill()
        for worker in busy:
            cleanup(worker.task, worker.process.pid)
        raise
    finally:
        for worker in workers:
            if not worker.retired:
                worker.stop()
