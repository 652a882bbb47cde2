"""Who owns a folder: a lock file naming a process (pid, host, start time), and whether it still runs.

Used for the one-trainer-per-workdir lock and to tell a killed preparation's leftovers from a
running one. A lock whose process is gone (killed, crashed) is stale and taken over; the start
time guards against a new process that happens to reuse the pid.
"""

import datetime
import json
import os
import pathlib
import socket


def _start_ticks(pid: int):
  """The process's start time in clock ticks since boot (Linux /proc), or None where unknown."""
  try:
    stat = pathlib.Path(f"/proc/{pid}/stat").read_text()
  except OSError:
    return None
  # Field 22; the command name (field 2) may hold spaces and parentheses, so count from the last ')'.
  return int(stat[stat.rindex(")") + 2:].split()[19])


def this_process() -> dict:
  """pid, host and start time of the calling process."""
  return {"pid": os.getpid(), "host": socket.gethostname(), "start_ticks": _start_ticks(os.getpid()),
          "started": datetime.datetime.now().astimezone().isoformat(timespec="seconds")}


def is_running(owner: dict) -> bool:
  """Whether the process an owner record names still runs (assumed so when it ran on another host)."""
  if owner.get("host") != socket.gethostname():
    return True  # no way to look at another machine's processes: never take its lock over
  pid = int(owner.get("pid", -1))
  if pid <= 0:
    return False
  try:
    os.kill(pid, 0)
  except ProcessLookupError:
    return False
  except PermissionError:
    pass  # it exists, owned by another user
  ticks = owner.get("start_ticks")
  return ticks is None or _start_ticks(pid) in (None, ticks)


class Lock:
  """An exclusive lock file FOLDER/.lock held by this process; a stale one (its process gone) is replaced."""

  def __init__(self, folder):
    self.path = pathlib.Path(folder) / ".lock"
    self.held = False

  def owner(self) -> dict | None:
    try:
      return json.loads(self.path.read_text())
    except (OSError, ValueError):
      return None

  def acquire(self) -> "Lock":
    """Takes the lock or raises ValueError naming the process that holds it."""
    me = this_process()
    # Written in full to a private file, then linked into place: link() fails if the lock exists, so the
    # lock file is never seen half-written.
    tmp = self.path.with_name(f".lock.{me['pid']}.tmp")
    tmp.write_text(json.dumps(me) + "\n")
    try:
      for _ in range(2):
        try:
          os.link(tmp, self.path)
          self.held = True
          return self
        except FileExistsError:
          owner = self.owner()
          if owner is not None and is_running(owner):
            where = "" if owner.get("host") == me["host"] else f" on {owner.get('host')}"
            raise ValueError(
                f"{self.path.parent} is in use by process {owner.get('pid')}{where} (started "
                f"{owner.get('started')}); wait for it to finish or stop it (if that process is gone, "
                f"delete {self.path})") from None
          self.path.unlink(missing_ok=True)  # stale: its process was killed
      raise ValueError(f"could not lock {self.path.parent}: another process keeps taking it")
    finally:
      tmp.unlink(missing_ok=True)

  def release(self) -> None:
    if self.held:
      owner = self.owner()
      if owner is not None and owner.get("pid") == os.getpid():
        self.path.unlink(missing_ok=True)
      self.held = False

  def __enter__(self):
    return self.acquire()

  def __exit__(self, *exc):
    self.release()
