"""Files written whole or not at all: a temporary sibling (.NAME.tmp), synced, then renamed into place.

A rename is atomic on POSIX, so a process killed mid-write leaves the previous file (or none), never half of one.
The one writer for the library and data_prep (which imports low mmvae modules, never the other way round); and a
folder written whole (a report, an index), filled beside its place and swapped in (building_folder, swap_in).
"""

import contextlib
import json
import os
import pathlib
import re
import shutil

from mmvae import locks


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


# A folder written whole (a report, an index): filled beside its final place, swapped in when complete.

def building_folder(final: pathlib.Path) -> pathlib.Path:
  """A fresh, empty folder `.NAME.partial-PID@HOST` beside FINAL (leftovers of killed writers cleared first)."""
  clear_leftovers(final)
  me = locks.this_process()
  build = final.with_name(f".{final.name}.partial-{me['pid']}@{me['host']}")
  shutil.rmtree(build, ignore_errors=True)
  build.mkdir()
  return build


def swap_in(build: pathlib.Path, final: pathlib.Path, carry=None) -> None:
  """Makes the complete folder BUILD the folder FINAL: the old one is renamed away first (`carry(old, build)` may
  move some of its entries over), then removed. A kill between the renames leaves `.NAME.old-PID@HOST`, which
  clear_leftovers puts back."""
  old = None
  if final.exists():
    old = build.with_name(build.name.replace(".partial-", ".old-", 1))
    os.replace(final, old)
    if carry is not None:
      carry(old, build)
  os.replace(build, final)
  if old is not None:
    shutil.rmtree(old, ignore_errors=True)


def clear_leftovers(final: pathlib.Path) -> None:
  """Puts back a FINAL folder a killed swap left renamed away; removes killed writers' unfinished folders."""
  for path in sorted(final.parent.glob(f".{final.name}.*-*@*")):
    m = re.fullmatch(rf"\.{re.escape(final.name)}\.(partial|old)-(\d+)@(.+)", path.name)
    if not m or locks.is_running({"pid": int(m[2]), "host": m[3]}):
      continue
    if m[1] == "old" and not final.exists():
      os.replace(path, final)
    else:
      shutil.rmtree(path, ignore_errors=True)
