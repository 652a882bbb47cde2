"""Files written whole or not at all: a temporary sibling (.NAME.tmp), synced, then renamed into place.

A rename is atomic on POSIX, so a process killed mid-write leaves the previous file (or none), never half of one.
The one writer for the library and data_prep (which imports low mmvae modules, never the other way round).
"""

import contextlib
import json
import os
import pathlib


@contextlib.contextmanager
def atomic(path):
  """A binary file open for writing whose contents replace PATH when the block ends; on an error none is left."""
  path = pathlib.Path(path)
  tmp = path.with_name(f".{path.name}.tmp")
  try:
    with open(tmp, "wb") as f:
      yield f
      f.flush()
      os.fsync(f.fileno())
    os.replace(tmp, path)
  except BaseException:
    tmp.unlink(missing_ok=True)
    raise


def write_atomic(path, data: str | bytes) -> None:
  """Writes `data` (text as UTF-8) to PATH whole or not at all."""
  with atomic(path) as f:
    f.write(data.encode("utf-8") if isinstance(data, str) else data)


def write_json_atomic(path, obj, indent: int | None = None, sort_keys: bool = False, default=None) -> None:
  """Writes `obj` as JSON ending in a newline (json.dumps' indent, sort_keys, default) with `write_atomic`."""
  write_atomic(path, json.dumps(obj, indent=indent, sort_keys=sort_keys, default=default) + "\n")
