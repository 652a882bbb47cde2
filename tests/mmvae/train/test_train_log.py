"""Run logs beyond metrics.jsonl: generated images in TensorBoard, and Weights & Biases in offline mode."""

import io
import json
import pathlib
import struct

import numpy as np
import pytest

from mmvae import config as config_lib
from mmvae import data
from mmvae.train import entry, train_log

STEPS = 4
SHOWN = 3


def _events(tb_dir: pathlib.Path):
  """Every Event proto of the TensorBoard files in tb_dir (TFRecord framing read by hand)."""
  from tensorboardX.proto import event_pb2
  for path in sorted(tb_dir.iterdir()):
    raw = path.read_bytes()
    at = 0
    while at < len(raw):
      (length,) = struct.unpack("<Q", raw[at:at + 8])
      event = event_pb2.Event()
      event.ParseFromString(raw[at + 12:at + 12 + length])
      yield event
      at += 12 + length + 4


def _tb_images(tb_dir) -> dict:
  """{(tag, step): [H, W, C] uint8} of the image summaries."""
  from PIL import Image
  out = {}
  for event in _events(tb_dir):
    for value in event.summary.value:
      if value.HasField("image"):
        out[value.tag, event.step] = np.asarray(Image.open(io.BytesIO(value.image.encoded_image_string)))
  return out


def test_image_grid_places_each_picture_with_white_between():
  rows = [np.full((2, 3, 4, 1), v, np.float32) + np.arange(2)[:, None, None, None] / 10 for v in (0.2, 0.5)]
  grid = train_log.image_grid(rows)
  assert grid.shape == (2 * 3 + 1, 2 * 4 + 1, 1)
  for i in range(2):
    for j in range(2):
      np.testing.assert_allclose(grid[i * 4:i * 4 + 3, j * 5:j * 5 + 4], rows[i][j])
  assert np.all(grid[3, :] == 1.0) and np.all(grid[:, 4] == 1.0)


@pytest.fixture(scope="module")
def imaged_run(synthetic_dataset, tmp_path_factory):
  workdir = tmp_path_factory.mktemp("imaged") / "run"
  cfg = config_lib.load("synthetic:tiny", [f"train.num_steps={STEPS}", f"train.eval_every={STEPS}",
                                           f"train.checkpoint_every={STEPS}", f"train.log_images={SHOWN}"])
  entry.train(cfg, synthetic_dataset, workdir)
  return workdir


def test_validation_logs_real_and_generated_faces_to_tensorboard(imaged_run, synthetic_dataset):
  from mmvae import inference
  from mmvae.analysis import generation
  from mmvae.train import checkpoints
  images = _tb_images(imaged_run / "tb")
  assert list(images) == [("validation/face_generated", STEPS)]
  picture = images["validation/face_generated", STEPS].astype(np.float32) / 255.0
  # The expected picture from the saved model, through analysis's generation path, and the stored faces.
  model, _, _ = checkpoints.load_run(imaged_run, which="last")
  dataset = data.Dataset(synthetic_dataset)
  specs = dataset.modalities()
  arrays = dataset.arrays("validation")
  latents = inference.encode_split(inference.model_encoder(model), arrays, specs)
  generated = generation.cross_generate(model, {k: v[:SHOWN] for k, v in latents.items()}, specs)
  s = specs["face"].model_shape[0]
  real = arrays["face"][:SHOWN, 0].astype(np.float32) / 255.0  # first stored frame, [0, 1]
  expected_rows = [real, generated["face_from_audio"], generated["face_from_face"]]  # rows in the run's order
  assert picture.shape[:2] == (3 * (s + 1) - 1, SHOWN * (s + 1) - 1)
  for i, row in enumerate(expected_rows):
    for j in range(SHOWN):
      cell = picture[i * (s + 1):i * (s + 1) + s, j * (s + 1):j * (s + 1) + s]
      np.testing.assert_allclose(cell, np.broadcast_to(np.clip(row[j], 0, 1), cell.shape), atol=1.01 / 255,
                                 err_msg=f"row {i}, example {j}")
  assert not np.allclose(expected_rows[1], expected_rows[2], atol=0.02)  # voice and face give different faces


def test_models_without_a_decoder_log_no_images(synthetic_dataset, tmp_path):
  cfg = config_lib.load("synthetic:tiny", ["model.kind=contrastive", "train.num_steps=2", "train.eval_every=2",
                                           "train.checkpoint_every=2", "loss.identity_weight=0.0"])
  entry.train(cfg, synthetic_dataset, tmp_path)
  assert not _tb_images(tmp_path / "tb")


def test_weights_and_biases_offline_run_holds_scalars_and_images(synthetic_dataset, tmp_path, monkeypatch):
  pytest.importorskip("wandb", reason="Weights & Biases is the `tracking` extra")
  monkeypatch.setenv("WANDB_SILENT", "true")
  cfg = config_lib.load("synthetic:tiny", ["train.num_steps=4", "train.eval_every=2", "train.checkpoint_every=2",
                                           "train.log_every=1", "train.wandb_project=mmvae-test",
                                           "train.wandb_mode=offline", "train.log_images=2"])
  entry.train(cfg, synthetic_dataset, tmp_path)
  runs = list((tmp_path / "wandb").glob("offline-run-*"))
  assert len(runs) == 1
  media = sorted(p.name.split("_")[2] for p in (runs[0] / "files/media/images/validation").glob("*.png"))
  assert media == ["2", "4"]  # face_generated_<step>_<hash>.png, one per validation
  # The offline record (W&B's binary log of protobuf records, synced later) holds every logged training loss
  # as the JSON text of its value, under its key.
  record = next(runs[0].glob("*.wandb")).read_bytes()
  assert b"train/loss" in record and b"validation/mrr_audio_to_face" in record
  losses = [r["loss"] for r in trainer_rows(tmp_path) if r["split"] == "train"]
  assert len(losses) == 4 and all(json.dumps(v).encode() in record for v in losses)
  bad = cfg.copy_and_resolve_references()
  bad.train.wandb_mode = "sometimes"
  with pytest.raises(ValueError, match="wandb_mode='sometimes' is unknown"):
    entry.train(bad, synthetic_dataset, tmp_path / "bad")


def trainer_rows(workdir):
  return [json.loads(line) for line in (workdir / "metrics.jsonl").read_text().splitlines()]
