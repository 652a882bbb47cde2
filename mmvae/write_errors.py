"""One line for a write the file system refused: a full disk (ENOSPC, EDQUOT) or a read-only place (EROFS, EACCES).

The refusal arrives as a Python OSError with its errno, or as text from native code: TensorStore (Orbax's
checkpoints) says "... No space left on device [os_error_code='28']", and libsndfile only "System error", so
a file system with (almost) no space left also counts as full when an I/O error leaves no errno.
The writer removes what it left half-written, then raises WriteError (a ValueError: the CLI prints it as
`mmvae <command>: error: ...` and exits 2) naming the path, and for a full disk the space needed and free.
"""

import errno
import os
import pathlib
import re
import shutil

NO_SPACE = (errno.ENOSPC, errno.EDQUOT)
NOT_WRITABLE = (errno.EROFS, errno.EACCES, errno.EPERM)
FULL_BELOW = 1 << 20  # bytes: a file system with less free is full (for errors that carry no errno)
_OS_CODE = re.compile(r"os_error_code='?(\d+)")
_TEXTS = {os.strerror(code): code for code in NO_SPACE + NOT_WRITABLE}


class WriteError(ValueError):
  """A write the file system refused, as one line."""


def _chain(e: BaseException):
  """e, then its causes and contexts (each once)."""
  seen = set()
  while e is not None and id(e) not in seen:
    seen.add(id(e))
    yield e
    e = e.__cause__ or e.__context__


def _under(filename, folder) -> bool:
  path = pathlib.Path(os.path.abspath(os.fsdecode(filename)))
  folder = pathlib.Path(os.path.abspath(folder))
  return path == folder or folder in path.parents


def error_code(e: BaseException, folder=None) -> int | None:
  """The errno of a refused write behind `e` (its own, a cause's, or named in its text), or None.

  folder: where the write went; a permission error on a file elsewhere (an unreadable input) is not one.
  """
  for x in _chain(e):
    if isinstance(x, OSError) and x.errno in NO_SPACE + NOT_WRITABLE:
      if (folder is not None and x.errno in (errno.EACCES, errno.EPERM) and x.filename is not None
          and not _under(x.filename, folder)):
        return None
      return x.errno
    text = str(x)
    m = _OS_CODE.search(text)
    if m and int(m[1]) in NO_SPACE + NOT_WRITABLE:
      return int(m[1])
    for message, code in _TEXTS.items():
      if message in text:
        return code
  return None


def free_bytes(path) -> int | None:
  """Bytes free to this user on the file system holding PATH (its nearest existing folder); None where unknown."""
  path = pathlib.Path(path).absolute()
  for folder in (path, *path.parents):
    if folder.exists():
      try:
        return shutil.disk_usage(folder).free
      except OSError:
        return None
  return None


def _used(stat: os.stat_result) -> int:
  return stat.st_blocks * 512 if hasattr(stat, "st_blocks") else stat.st_size


def folder_bytes(path) -> int:
  """Bytes the files under PATH take on disk, as `du` counts them (0 when it is gone)."""
  path = pathlib.Path(path)
  if path.is_file():
    return _used(path.stat())
  total = 0
  for root, _, files in os.walk(path):
    for name in files:
      try:
        total += _used(os.lstat(os.path.join(root, name)))
      except OSError:
        continue
  return total


def refused(e: BaseException, path) -> int | None:
  """The errno when `e`, raised while writing under PATH, is a refused write (ENOSPC, EROFS, ...); else None.

  Call it before removing what the failed write left: an I/O error without an errno (libsndfile's) counts as
  a full disk only while the file system is still (nearly) full.
  """
  code = error_code(e, path)
  if code is None and isinstance(e, (OSError, RuntimeError)):
    free = free_bytes(path)
    if free is not None and free < FULL_BELOW:
      code = errno.ENOSPC
  return code


def _mb(n: int) -> str:
  return f"{n / 2**20:.1f} MB" if n >= 2**20 else f"{max(1, round(n / 2**10))} kB"


def message(code: int, path, needed: int | None = None, at_least: bool = False) -> str:
  """The one line for a write to PATH refused with `code`; needed: bytes the write needed (at_least: a lower bound).

  Call it after removing what the failed write left, so that the free space it names is what a rerun finds.
  """
  if code in NO_SPACE:
    free = free_bytes(path)
    parts = []
    if needed:
      parts.append(f"the disk filled after {_mb(needed)}" if at_least else f"needed about {_mb(needed)}")
    if free is not None:
      parts.append(f"{_mb(free)} free" + (" once those were removed" if at_least and needed else ""))
    return f"no space left on device writing {path}" + (f" ({'; '.join(parts)})" if parts else "")
  return f"cannot write {path}: {os.strerror(code)}"



def check_writable(folder) -> None:
  """WriteError naming FOLDER (an existing folder) when it cannot be written: a read-only file system, no permission.

  For writers whose own failure would not say so (Orbax waits for a folder its thread failed to create).
  """
  folder = pathlib.Path(folder)
  if os.access(folder, os.W_OK | os.X_OK):
    return
  try:
    read_only = bool(os.statvfs(folder).f_flag & os.ST_RDONLY)
  except OSError:
    read_only = False
  raise WriteError(message(errno.EROFS if read_only else errno.EACCES, folder))
