"""Worker processes (grain's readers, prep's pools) that never outlive the process that started them.

A worker started with `spawn` is not stopped when its parent is killed (kill -9, the OOM killer): it would
keep its memory for minutes, and with it multiprocessing's resource tracker. `exit_with_parent` runs first in
each worker: a thread ends the worker as soon as its parent is gone. Ctrl-C reaches every process of the
terminal's process group; workers ignore it, and the parent stops them once it has saved or cleaned up.
"""

import contextlib
import os
import signal
import threading
import time
from multiprocessing import resource_tracker

POLL_S = 0.5  # how often a worker looks at its parent


def exit_with_parent(parent_pid: int, *_worker_index) -> None:
  """Worker initializer: ignore SIGINT, and exit as soon as process `parent_pid` is no longer this one's parent.

  A thread polling the parent pid, not prctl(PR_SET_PDEATHSIG): that signal fires when the parent *thread*
  that started the worker ends, and grain starts its workers from short-lived threads.
  """
  signal.signal(signal.SIGINT, signal.SIG_IGN)  # a Ctrl-C held back by `starting` is dropped here
  signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGINT})

  def watch():
    while os.getppid() == parent_pid:
      time.sleep(POLL_S)
    os._exit(1)  # the parent is gone: nobody reads what this worker makes

  threading.Thread(target=watch, name="mmvae-exit-with-parent", daemon=True).start()


@contextlib.contextmanager
def starting():
  """Start worker processes inside this block: a Ctrl-C that arrives while a worker is still starting, before
  `exit_with_parent` has run in it, would otherwise end that worker with a KeyboardInterrupt traceback from
  inside multiprocessing's bootstrap. SIGINT is blocked in the calling thread for the block, and a spawned
  process starts with its parent's signal mask (as multiprocessing's own resource tracker is started); the
  parent receives a Ctrl-C held back this way as the block ends, and the workers drop theirs."""
  if threading.current_thread() is not threading.main_thread():
    yield
    return
  # Started first: starting multiprocessing's resource tracker unblocks SIGINT in the thread that starts it. It
  # starts with quiet_tracker's filter: after a Ctrl-C it unlinks the semaphores of a pool that was terminated
  # mid-task, and would add a two-line 'leaked semaphore objects' warning after the line that says what was kept.
  quiet_tracker()
  resource_tracker.ensure_running()
  before = signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT})
  try:
    yield
  finally:
    signal.pthread_sigmask(signal.SIG_SETMASK, before)


TRACKER_LEAK_FILTER = "ignore:resource_tracker:UserWarning"


def quiet_tracker() -> None:
  """Keeps multiprocessing's resource tracker from warning about 'leaked shared_memory objects' at exit.

  When a run stops on Ctrl-C, a batch a worker had placed in shared memory may never be read; the tracker (a
  process of its own, started with this environment) unlinks it at exit as it should, but also prints a warning
  the user can do nothing about, after the one line that says where the run was saved. Call before the first
  worker starts.
  """
  current = os.environ.get("PYTHONWARNINGS", "")
  if TRACKER_LEAK_FILTER not in current.split(","):
    os.environ["PYTHONWARNINGS"] = ",".join(x for x in (current, TRACKER_LEAK_FILTER) if x)

