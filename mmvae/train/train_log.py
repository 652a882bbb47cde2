"""Run logs in the workdir: JSON files written atomically, metrics.jsonl rows, TensorBoard scalars and images, and
optionally the same scalars and images in Weights & Biases (train.wandb_project; offline mode needs no network)."""

import hashlib
import json
import pathlib

import numpy as np

from mmvae import files

WANDB_MODES = ("", "online", "offline", "disabled")


class RunLog:
  """Writes metrics.jsonl, tb/ event files and W&B records (only on the process that owns the logs).

  wandb_project: a Weights & Biases project to log to as well ('' = none); the W&B run's id is derived from
  the workdir, so a resumed run continues the same W&B run; its local files go to WORKDIR/wandb/.
  wandb_mode: 'online', 'offline' (written locally, `wandb sync` later) or 'disabled'; '' = W&B's own
  default (the WANDB_MODE environment variable, else online).
  """

  def __init__(self, workdir, enabled: bool = True, wandb_project: str = "", wandb_mode: str = "",
               config: dict | None = None, name: str = ""):
    self.workdir = pathlib.Path(workdir)
    self.enabled = enabled
    self.metrics_path = self.workdir / "metrics.jsonl"
    self._writer = None
    self._wandb = None
    if wandb_mode not in WANDB_MODES:
      raise ValueError(f"config.train.wandb_mode={wandb_mode!r} is unknown; use one of {WANDB_MODES}")
    if enabled:
      self.workdir.mkdir(parents=True, exist_ok=True)
      # Imported now, its writer made at the first row: the import costs seconds (tensorboardX imports PyTorch
      # where installed), start-up work that must not land in the first logged steps' timing.
      from tensorboardX import SummaryWriter
      self._summary_writer = SummaryWriter
    # The W&B run starts with the first logged row, so a run refused at start-up (bad config, refused resume)
    # leaves none behind; a missing package is reported now.
    self._wandb_settings = None
    if enabled and wandb_project:
      try:
        import wandb  # noqa: F401
      except ImportError:
        raise ValueError("config.train.wandb_project is set but Weights & Biases is not installed: "
                         "pip install 'mmvae[tracking]' (or leave wandb_project empty)") from None
      run_id = "mmvae-" + hashlib.sha256(str(self.workdir.absolute()).encode()).hexdigest()[:12]
      self._wandb_settings = dict(project=wandb_project, dir=str(self.workdir), id=run_id, resume="allow",
                                  name=name or self.workdir.name, config=config or {}, mode=wandb_mode or None)

  def write_json(self, name: str, obj) -> None:
    """Writes workdir/name via a temporary file, so a killed run never leaves half a file."""
    if not self.enabled:
      return
    files.write_json_atomic(self.workdir / name, obj, indent=2, sort_keys=True, default=_jsonable)

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
    files.write_atomic(self.metrics_path, "".join(line + "\n" for line in lines))

  def row(self, row: dict) -> None:
    """Appends one metrics row and mirrors its numbers to TensorBoard under split/name."""
    if not self.enabled:
      return
    with self.metrics_path.open("a") as f:
      f.write(json.dumps(row, default=_jsonable) + "\n")
    split = row.get("split", "train")
    scalars = {f"{split}/{k}": v for k, v in row.items() if k not in ("step", "split") and isinstance(v, (int, float))}
    for tag, v in scalars.items():
      self._tensorboard().add_scalar(tag, v, row["step"])
    if self._wandb_run() is not None:
      self._wandb.log(scalars, step=row["step"])

  def images(self, step: int, images: dict) -> None:
    """Logs {name: [H, W, C] float image in [0, 1]} as validation/<name> to TensorBoard (and W&B)."""
    if not self.enabled or not images:
      return
    clipped = {f"validation/{name}": np.clip(image, 0.0, 1.0) for name, image in images.items()}
    for tag, image in clipped.items():
      self._tensorboard().add_image(tag, image, step, dataformats="HWC")
    if self._wandb_run() is not None:
      import wandb
      self._wandb.log({tag: wandb.Image(image) for tag, image in clipped.items()}, step=step)

  def _tensorboard(self):
    if self._writer is None:
      self._writer = self._summary_writer(str(self.workdir / "tb"))
    return self._writer

  def _wandb_run(self):
    """The W&B run (started on first use), or None without train.wandb_project."""
    if self._wandb is None and self._wandb_settings is not None:
      import wandb
      (self.workdir / "wandb").mkdir(exist_ok=True)
      self._wandb = wandb.init(**self._wandb_settings)
    return self._wandb

  def close(self) -> None:
    if self._writer is not None:
      self._writer.close()
      self._writer = None
    if self._wandb is not None:
      self._wandb.finish()
      self._wandb = None


def image_grid(rows: list, gap: int = 1) -> np.ndarray:
  """Rows of images ([n, H, W, C] each, the same n and shape) tiled into one [H', W', C] picture, white between."""
  rows = [np.asarray(r, np.float32) for r in rows]
  n, h, w, c = rows[0].shape
  grid = np.ones((len(rows) * (h + gap) - gap, n * (w + gap) - gap, c), np.float32)
  for i, row in enumerate(rows):
    for j in range(n):
      grid[i * (h + gap):i * (h + gap) + h, j * (w + gap):j * (w + gap) + w] = row[j]
  return grid


def _jsonable(x):
  try:
    return float(x)
  except (TypeError, ValueError):
    return str(x)
