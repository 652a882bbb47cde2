"""Multi-modal digits: five modalities of the same digit, class-imbalanced training split, deterministic by seed."""

import collections
import gzip
import math
import re

import numpy as np
import pytest

from data_prep import mmdigits, prepare
from mmvae import cli, data
from mmvae import config as config_lib

SIN_TILT = math.sin(math.radians(15))


def raw_mnist(mnist_dir):
  """The IDX files read with plain NumPy (16- and 8-byte headers)."""
  images = np.frombuffer(gzip.open(mnist_dir / "t10k-images-idx3-ubyte.gz").read()[16:], np.uint8)
  labels = np.frombuffer(gzip.open(mnist_dir / "t10k-labels-idx1-ubyte.gz").read()[8:], np.uint8)
  return images.reshape(-1, 28, 28), labels


@pytest.fixture(scope="module")
def prepared(subset, shared_data, tmp_path_factory):
  out = tmp_path_factory.mktemp("mmdigits") / "data"
  manifest = prepare.prepare_mmdigits(subset, shared_data / "mnist-t10k", out, config="mcvs", seed=0, workers=1)
  return manifest, data.Dataset(out)


def _slab_normals(clouds):
  """[N, 3] the direction of least spread of each [P, 3] cloud (the extruded digit's thickness)."""
  normals = []
  for cloud in np.asarray(clouds, np.float64):
    centred = cloud - cloud.mean(0)
    normals.append(np.linalg.eigh(centred.T @ centred)[1][:, 0])
  return np.array(normals)


def test_prepared_dataset_declares_and_stores_five_modalities(prepared):
  manifest, ds = prepared
  assert [(m["name"], m["kind"], m["shape"], m["dtype"]) for m in manifest["modalities"]] == [
      ("audio", "spectrogram", [40], "float32"), ("image", "image", [1, 28, 28, 1], "uint8"),
      ("text", "tokens", [8], "int32"), ("video", "video", [8, 28, 28, 1], "uint8"),
      ("pointcloud", "points", [256, 3], "float32")]
  assert manifest["corpus"] == "mmdigits" and manifest["relevance"] == "same digit"
  assert manifest["data_config"]["video_frames"] == 8 and manifest["data_config"]["points"] == 256
  assert {m.name: m.kind for m in ds.modalities().values()} == {
      "audio": "spectrogram", "image": "image", "text": "tokens", "video": "video", "pointcloud": "points"}
  ds.check_config(config_lib.load("mcvs"))
  # The `video` modality takes the place of the per-example video text field, so no pairing may group by it.
  with pytest.raises(ValueError, match="pairing='video' groups examples by their 'video' field"):
    ds.check_config(config_lib.load("mcvs", ["data.pairing=video"]))
  with pytest.raises(ValueError, match="data.video_frames=8"):
    ds.check_config(config_lib.load("mcvs", ["data.video_frames=4"]))
  for split in ("train", "validation", "test"):
    arr = ds.arrays(split)
    n = len(arr["id"])
    assert arr["video"].dtype == np.uint8 and arr["video"].shape == (n, 8, 28, 28, 1)
    assert arr["pointcloud"].dtype == np.float32 and arr["pointcloud"].shape == (n, 256, 3)
    # x, y in [-1, 1] and z in [-0.25, 0.25] before the turn, which keeps every point's distance from 0.
    assert np.linalg.norm(arr["pointcloud"], axis=-1).max() <= math.sqrt(2 + 0.25**2) + 1e-6


def test_videos_show_another_mnist_digit_of_the_right_class_moving(prepared, shared_data):
  _, ds = prepared
  images, labels = raw_mnist(shared_data / "mnist-t10k")
  means = np.stack([images[labels == d].reshape(-1, 784).mean(0) for d in range(10)])
  arr = {k: np.concatenate([ds.arrays(s)[k] for s in ("train", "validation", "test")])
         for k in ("video", "image", "label")}
  correct, own, others = [], [], []
  for video, image, label in zip(arr["video"], arr["image"], arr["label"]):
    first = video[0, :, :, 0].astype(np.float64)
    assert np.abs(first - image[0, :, :, 0]).mean() > 2  # another MNIST image, not the image modality's
    assert np.abs(video[-1].astype(int) - video[0]).sum() > 0  # it moves
    # Nearest class mean by correlation: MNIST's own labels say which digit the frame shows.
    r = np.array([np.corrcoef(first.ravel(), m)[0, 1] for m in means])
    correct.append(r.argmax() == label)
    own.append(r[label])
    others.append(np.delete(r, label).mean())
  assert np.mean(correct) > 0.35  # chance: 0.1 (the full corpus gives 0.55 for frame 0 of moved, turned digits)
  assert np.mean(own) > np.mean(others) + 0.05


def test_point_clouds_are_upright_slabs_turned_about_the_vertical(prepared):
  _, ds = prepared
  arr = ds.arrays("train")
  normals = _slab_normals(arr["pointcloud"][arr["label"] != 1])  # a 1 can be thinner than the slab is deep
  assert np.median(np.abs(normals[:, 1])) < SIN_TILT  # a free 3D rotation would give a median of 0.5
  yaw = np.degrees(np.arctan2(normals[:, 0], normals[:, 2])) % 180
  assert np.histogram(yaw, bins=6, range=(0, 180))[0].min() > 0  # every yaw


def test_a_vertical_bar_stays_within_the_tilt_bound_at_any_yaw():
  bar = np.zeros((28, 28), np.uint8)
  bar[4:24, 14] = 255
  axes, normals = [], []
  for seed in range(200):
    cloud = mmdigits.point_cloud(bar, 20000, np.random.default_rng(seed)).astype(np.float64)
    centred = cloud - cloud.mean(0)
    vectors = np.linalg.eigh(centred.T @ centred)[1]
    axes.append(vectors[:, 2])  # the bar's length
    normals.append(vectors[:, 1])  # the slab's depth (z before the turn)
  up = np.abs(np.array(axes)[:, 1])
  assert up.min() > math.cos(math.radians(15))**2 - 0.01 and up.min() < 0.99  # tilted, never more than 15 + 15 deg
  normals = np.array(normals)
  assert np.abs(normals[:, 1]).max() < SIN_TILT + 0.02 and np.abs(normals[:, 1]).max() > 0.2
  yaw = np.degrees(np.arctan2(normals[:, 0], normals[:, 2])) % 180
  assert np.histogram(yaw, bins=12, range=(0, 180))[0].min() > 0


def test_training_digits_are_subsampled_by_their_keep_fractions(prepared, subset):
  manifest, ds = prepared
  fractions = mmdigits.keep_fractions(0)
  np.testing.assert_allclose(np.sort(fractions)[::-1], np.linspace(1.0, 0.4, 10))
  assert not np.array_equal(fractions, mmdigits.keep_fractions(1))
  available = collections.Counter()
  held_out = collections.Counter()
  for path in (subset / "recordings").iterdir():
    digit, _, take = path.stem.split("_")
    (available if int(take) >= 10 else held_out)[int(digit)] += 1
  kept = collections.Counter(ds.arrays("train")["label"].tolist())
  for digit in range(10):
    assert kept[digit] == round(fractions[digit] * available[digit]), digit
  assert len(set(kept.values())) > 5  # imbalanced
  stored = collections.Counter(np.concatenate([ds.arrays(s)["label"] for s in ("validation", "test")]).tolist())
  assert stored == held_out  # validation and test are not subsampled
  notes = " ".join(manifest["notes"])
  for digit in range(10):
    assert re.search(rf"\b{digit}: {kept[digit]}/{available[digit]}\b", notes)


def test_every_image_modality_draws_its_own_mnist_images(shared_data):
  _, labels = raw_mnist(shared_data / "mnist-t10k")
  layout = mmdigits.list_examples(shared_data / "fsdd", shared_data / "mnist-t10k", seed=0)
  by_split = collections.defaultdict(set)
  for e in layout.examples:
    sources = (e["mnist_index"], e["video_mnist_index"], e["pointcloud_mnist_index"])
    assert len(set(sources)) == 3 and all(labels[i] == e["label"] for i in sources)
    by_split[e["split"]].update(sources)
  assert not (by_split["train"] & by_split["test"]) and not (by_split["validation"] & by_split["test"])
  assert not (by_split["train"] & by_split["validation"])
  assert sum(map(len, by_split.values())) == 3 * len(layout.examples)  # none reused with this seed
  # A seed that keeps every training 5 needs 900 images of the 892 MNIST 5s: only training examples reuse one.
  seed = next(s for s in range(100) if mmdigits.keep_fractions(s)[5] == 1.0)
  full = mmdigits.list_examples(shared_data / "fsdd", shared_data / "mnist-t10k", seed=seed)
  held_out = {i for e in full.examples if e["split"] != "train"
              for i in (e["mnist_index"], e["video_mnist_index"], e["pointcloud_mnist_index"])}
  train = [i for e in full.examples if e["split"] == "train"
           for i in (e["mnist_index"], e["video_mnist_index"], e["pointcloud_mnist_index"])]
  assert not held_out & set(train) and len(train) - len(set(train)) == 8
  assert any("8 video/point-cloud images reused" in n for n in full.notes)


def test_same_seed_same_arrays_with_any_worker_count(prepared, subset, shared_data, tmp_path):
  manifest, ds = prepared
  again = prepare.prepare_mmdigits(subset, shared_data / "mnist-t10k", tmp_path / "again", seed=0, workers=2)
  assert again["fingerprint"] == manifest["fingerprint"]
  other = data.Dataset(tmp_path / "again")
  for split in ("train", "validation", "test"):
    for key in ("id", "audio", "image", "text", "video", "pointcloud"):
      np.testing.assert_array_equal(other.arrays(split)[key], ds.arrays(split)[key])
  reseeded = mmdigits.list_examples(subset, shared_data / "mnist-t10k", seed=1)
  first = {e["id"]: e["extra"]["video"] for e in reseeded.examples}
  test_ids = ds.arrays("test")["id"]
  assert not np.array_equal(np.stack([first[i] for i in test_ids]), ds.arrays("test")["video"])


def test_bad_settings_fail_before_any_work(subset, shared_data, tmp_path):
  with pytest.raises(ValueError, match="no data.video_frames or data.points"):
    prepare.prepare_mmdigits(subset, shared_data / "mnist-t10k", tmp_path / "a", config="avdigits")
  with pytest.raises(ValueError, match="data.video_frames=0"):
    prepare.prepare_mmdigits(subset, shared_data / "mnist-t10k", tmp_path / "b",
                             config=config_lib.load("mcvs", ["data.video_frames=0"]))
  assert not (tmp_path / "a").exists() and not (tmp_path / "b").exists()


def test_cli_prep_mmdigits(monkeypatch, capsys):
  with pytest.raises(SystemExit) as exit_info:
    cli.main(["prep", "mmdigits", "--help"])
  assert exit_info.value.code == 0 and "--fsdd" in capsys.readouterr().out
  seen = {}
  monkeypatch.setattr(mmdigits, "prepare_mmdigits", lambda *args, **kwargs: seen.update(args=args, kwargs=kwargs))
  cli.main(["prep", "mmdigits", "--fsdd", "F", "--mnist", "M", "--out", "O", "--seed", "3", "--workers", "1",
            "--config.data.points=64"])
  assert seen["args"] == ("F", "M", "O")
  assert seen["kwargs"]["seed"] == 3 and seen["kwargs"]["workers"] == 1 and not seen["kwargs"]["strict"]
  assert seen["kwargs"]["config"].name == "mcvs" and seen["kwargs"]["config"].data.points == 64
