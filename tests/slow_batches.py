"""Training input streams with a hook on each batch, keeping the pipeline's checkpointed state.

`tapped(fn)` replaces `data.Batches` (monkeypatch it in): the trainer's stream then hands out fn(i, batch) for
its i-th batch (counting from 0 in this process), while `get_state`/`set_state`/`close` still reach the real
grain pipeline. SLOW_BATCHES: source lines a child process runs first so that every training batch arrives
0.3 s late: a kill then lands mid-run.
"""

import pathlib

from mmvae import data


class Tapped:
  """A data.Batches whose i-th batch goes through fn(i, batch)."""

  def __init__(self, inner, fn):
    self.inner, self.fn, self.i = inner, fn, 0

  def __iter__(self):
    return self

  def __next__(self):
    batch = self.fn(self.i, next(self.inner))
    self.i += 1
    return batch

  def __getattr__(self, name):  # get_state, set_state, start_prefetch, close, step
    return getattr(self.inner, name)


def tapped(fn, real=None):
  """A stand-in for data.Batches whose streams pass each batch through fn(i, batch)."""
  real = real or data.Batches
  return lambda *args, **kwargs: Tapped(real(*args, **kwargs), fn)


SLOW_BATCHES = ("import sys, time\n"
                f"sys.path.insert(0, {str(pathlib.Path(__file__).parent)!r})\n"
                "from mmvae import data\n"
                "from slow_batches import tapped\n"
                "data.Batches = tapped(lambda i, b: time.sleep(0.3) or b)\n")
