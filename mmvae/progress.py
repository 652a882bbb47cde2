"""Progress bars that suit their output: redrawn in a terminal, periodic plain lines in a log file or pipe."""

import re
import sys

import tqdm

PLAIN_INTERVAL_S = 30.0  # seconds between plain lines when the output is not a terminal
_CONTROL = re.compile(r"\r|\x1b\[[0-9;]*[A-Za-z]")  # carriage returns and the cursor moves of nested bars


class _Lines:
  """A file for tqdm that writes each redraw as one line of its own (no carriage returns, no cursor moves)."""

  def __init__(self, stream):
    self._stream = stream

  def write(self, text: str) -> None:
    for line in _CONTROL.sub("\n", text).split("\n"):
      if line.strip():
        self._stream.write(line.rstrip() + "\n")

  def flush(self) -> None:
    self._stream.flush()

  def __getattr__(self, name):  # encoding, isatty, fileno: those of the stream
    return getattr(self._stream, name)


class _PlainBar(tqdm.tqdm):
  """Draws only on its interval: a new postfix or description waits for the next line."""

  def set_postfix(self, ordered_dict=None, refresh=True, **kwargs):
    super().set_postfix(ordered_dict, refresh=False, **kwargs)

  def set_description(self, desc=None, refresh=True):
    super().set_description(desc, refresh=False)


def set_fields(progress_bar: tqdm.tqdm, **fields) -> None:
  """Sets some fields of a bar's postfix and keeps the others (tqdm's set_postfix replaces them all)."""
  kept = progress_bar.__dict__.setdefault("_mmvae_fields", {})
  kept.update(fields)
  progress_bar.set_postfix(kept)


def is_terminal(stream) -> bool:
  try:
    return stream.isatty()
  except (AttributeError, ValueError):  # no isatty, or a closed stream
    return False


def bar(iterable=None, **kwargs) -> tqdm.tqdm:
  """tqdm.tqdm(iterable, **kwargs); when its output (stderr) is not a terminal, a plain line every 30 s instead."""
  stream = kwargs.get("file") or sys.stderr
  if not is_terminal(stream):
    kwargs.pop("dynamic_ncols", None)
    kwargs.update(file=_Lines(stream), mininterval=PLAIN_INTERVAL_S, maxinterval=PLAIN_INTERVAL_S)
    return _PlainBar(iterable, **kwargs)
  return tqdm.tqdm(iterable, **kwargs)
