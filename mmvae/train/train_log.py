"""Run logs in the workdir: JSON files written atomically, metrics.jsonl rows and TensorBoard scalars."""

import json
import os
import pathlib


class RunLog:
  """Writes metrics.jsonl and tb/ event files (only on the process that owns the logs)."""

  def __init__(self, workdir, enabled: bool = True):
    self.workdir = pathlib.Path(workdir)
    self.enabled = enabled
    self.metrics_path = self.workdir / "metrics.jsonl"
    self._writer = None
    if enabled:
      self.workdir.mkdir(parents=True, exist_ok=True)

  def write_json(self, name: str, obj) -> None:
    """Writes workdir/name via a temporary file, so a killed run never leaves half a file."""
    if not self.enabled:
      return
    tmp = self.workdir / f".{name}.tmp"
    tmp.write_text(json.dumps(obj, indent=2, sort_keys=True, default=_jsonable) + "\n")
    os.replace(tmp, self.workdir / name)

  def truncate_after(self, step: int) -> None:
    """Drops rows logged after `step` (a killed run's steps past its last checkpoint are redone on resume)."""
    if not self.enabled or not self.metrics_path.is_file():
      return
    kept = []
    for line in self.metrics_path.read_text().splitlines():
      try:
        if json.loads(line)["step"] <= step:
          kept.append(line)
      except (ValueError, KeyError):
        continue  # a line cut short by a kill
    self.write_json_lines(kept)

  def write_json_lines(self, lines) -> None:
    tmp = self.workdir / ".metrics.jsonl.tmp"
    tmp.write_text("".join(line + "\n" for line in lines))
    os.replace(tmp, self.metrics_path)

  def row(self, row: dict) -> None:
    """Appends one metrics row and mirrors its numbers to TensorBoard under split/name."""
    if not self.enabled:
      return
    with self.metrics_path.open("a") as f:
      f.write(json.dumps(row, default=_jsonable) + "\n")
    if self._writer is None:
      from tensorboardX import SummaryWriter
      self._writer = SummaryWriter(str(self.workdir / "tb"))
    split = row.get("split", "train")
    for k, v in row.items():
      if k not in ("step", "split") and isinstance(v, (int, float)):
        self._writer.add_scalar(f"{split}/{k}", v, row["step"])

  def close(self) -> None:
    if self._writer is not None:
      self._writer.close()
      self._writer = None


def _jsonable(x):
  try:
    return float(x)
  except (TypeError, ValueError):
    return str(x)
