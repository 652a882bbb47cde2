"""AV-digits: FSDD recordings paired with MNIST images of the same digit, split by take."""

import collections
import gzip
import shutil

import numpy as np
import pytest

from data_prep import avdigits, prepare
from mmvae import data


def raw_mnist(mnist_dir):
  """The IDX files read with plain NumPy (16- and 8-byte headers)."""
  images = np.frombuffer(gzip.open(mnist_dir / "t10k-images-idx3-ubyte.gz").read()[16:], np.uint8)
  labels = np.frombuffer(gzip.open(mnist_dir / "t10k-labels-idx1-ubyte.gz").read()[8:], np.uint8)
  return images.reshape(-1, 28, 28), labels


def test_full_fsdd_layout_splits_and_seeded_pairing(shared_data):
  fsdd, mnist = shared_data / "fsdd", shared_data / "mnist-t10k"
  images, labels = raw_mnist(mnist)
  layout = avdigits.list_examples(fsdd, mnist, seed=0)
  assert len(layout.examples) == 3000 and layout.skipped == []
  counts = collections.Counter(e["split"] for e in layout.examples)
  assert counts == {"train": 2400, "validation": 300, "test": 300}
  for e in layout.examples:
    digit, speaker, take = e["id"][:-4].split("_")
    assert e["label"] == int(digit) and e["identity"] == digit and e["video"] == speaker
    assert e["split"] == ("test" if int(take) <= 4 else "validation" if int(take) <= 9 else "train")
    assert labels[e["mnist_index"]] == int(digit)
    np.testing.assert_array_equal(e["face_image"], images[e["mnist_index"]])
  assert len({e["mnist_index"] for e in layout.examples}) == 3000  # no image shared across splits
  again = avdigits.list_examples(fsdd, mnist, seed=0)
  other = avdigits.list_examples(fsdd, mnist, seed=1)
  assert [e["mnist_index"] for e in again.examples] == [e["mnist_index"] for e in layout.examples]
  assert [e["mnist_index"] for e in other.examples] != [e["mnist_index"] for e in layout.examples]
  assert all(len(e["more_mnist_indices"]) == 0 for e in layout.examples)


def test_training_examples_get_more_images_never_shared(shared_data):
  fsdd, mnist = shared_data / "fsdd", shared_data / "mnist-t10k"
  images, labels = raw_mnist(mnist)
  one = avdigits.list_examples(fsdd, mnist, seed=0)
  three = avdigits.list_examples(fsdd, mnist, seed=0, train_images=3)
  # The first images, and so validation and test, do not depend on train_images.
  assert [e["mnist_index"] for e in three.examples] == [e["mnist_index"] for e in one.examples]
  assert [e["text"] for e in three.examples] == [e["text"] for e in one.examples]
  every = []
  for e in three.examples:
    more = e["more_mnist_indices"]
    # 5 has 892 t10k images, the fewest: 300 first images + 2 x 240 training extras = 780 fit every digit.
    assert len(more) == (2 if e["split"] == "train" else 0), e["id"]
    assert all(labels[i] == e["label"] for i in more)
    np.testing.assert_array_equal(e["more_images"], images[more].reshape(-1, 28, 28))
    every += [e["mnist_index"], *more]
  assert len(every) == len(set(every)) == 3000 + 2 * 2400  # no image twice, within or across splits
  with pytest.raises(ValueError, match="train_images"):
    avdigits.list_examples(fsdd, mnist, train_images=0)


def test_more_images_stop_at_the_digits_supply(shared_data, tmp_path):
  """A digit with fewer MNIST images than asked for: extras stop where its distinct images run out."""
  mnist = tmp_path / "mnist"
  mnist.mkdir()
  images, labels = raw_mnist(shared_data / "mnist-t10k")
  keep = np.concatenate([np.flatnonzero(labels == d)[:4 if d == 3 else 50] for d in range(10)])
  for name, magic, body in (("t10k-images-idx3-ubyte.gz", 2051, images[keep]), ("t10k-labels-idx1-ubyte.gz", 2049,
                                                                                 labels[keep])):
    header = np.array([magic, len(keep), *body.shape[1:]], ">u4").tobytes()
    (mnist / name).write_bytes(gzip.compress(header + body.tobytes()))
  root = tmp_path / "fsdd"
  (root / "recordings").mkdir(parents=True)
  for take in (0, 10, 11):
    shutil.copy(shared_data / "fsdd/recordings" / f"3_theo_{take}.wav", root / "recordings" / f"3_theo_{take}.wav")
  layout = avdigits.list_examples(root, mnist, train_images=4)
  # 4 images of digit 3: one for each of the 3 recordings, the fourth to the first training example in order.
  assert sorted(len(e["more_mnist_indices"]) for e in layout.examples) == [0, 0, 1]
  every = [i for e in layout.examples for i in (e["mnist_index"], *e["more_mnist_indices"])]
  assert sorted(every) == [150, 151, 152, 153]  # all four 3s of the cut-down MNIST (after 50 each of 0, 1, 2)


DIGITS = ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine")


def test_prepared_images_match_their_recording_digit(shared_data, tmp_path):
  root = tmp_path / "fsdd"
  (root / "recordings").mkdir(parents=True)
  for digit in range(10):
    for speaker, take in (("jackson", 0), ("theo", 7), ("george", 30)):
      name = f"{digit}_{speaker}_{take}.wav"
      shutil.copy(shared_data / "fsdd/recordings" / name, root / "recordings" / name)
  manifest = prepare.prepare_avdigits(root, shared_data / "mnist-t10k", tmp_path / "out", config="avdigits:tiny",
                                      workers=1)
  assert {s: v["examples"] for s, v in manifest["splits"].items()} == {"train": 10, "validation": 10, "test": 10}
  assert [(m["name"], m["kind"], m["shape"]) for m in manifest["modalities"]] == [
      ("audio", "spectrogram", [40]), ("image", "image", [3, 28, 28, 1]), ("text", "tokens", [8])]
  assert manifest["relevance"] == "same digit"
  assert [i["identity"] for i in manifest["identities"]] == [str(d) for d in range(10)]
  assert "speaker" in " ".join(manifest["notes"])
  images, labels = raw_mnist(shared_data / "mnist-t10k")
  ds = data.Dataset(tmp_path / "out")
  for split, take in (("train", "30"), ("validation", "7"), ("test", "0")):
    arr = ds.arrays(split)
    assert all(i.split("_")[2] == f"{take}.wav" for i in arr["id"])
    for i, label, face, text in zip(arr["id"], arr["label"], arr["image"], arr["text"]):
      assert label == int(i.split("_")[0])
      # The stored text names the recording's digit, read back with the manifest's own vocabulary.
      words = [manifest["modalities"][2]["vocab"][t] for t in text if t != 0]
      named = {w for w in words if w in DIGITS} | {DIGITS[int(w)] for w in words if w.isdigit()}
      assert named == {DIGITS[label]}, words
      # Look each stored frame up among all 10,000 raw MNIST digits: a digit of the same class; a training
      # example's 3 frames are 3 different images, a held-out example's one image repeated.
      found = []
      for frame in face[..., 0].astype(int):
        nearest = np.abs(images.astype(int) - frame).sum(axis=(1, 2)).argmin()
        assert np.abs(images[nearest].astype(int) - frame).max() <= 2
        assert labels[nearest] == label
        found.append(nearest)
      assert len(set(found)) == (3 if split == "train" else 1)


def test_bad_fsdd_and_mnist_inputs(shared_data, tmp_path):
  with pytest.raises(FileNotFoundError, match="recordings"):
    avdigits.list_examples(tmp_path, shared_data / "mnist-t10k")
  (tmp_path / "recordings").mkdir()
  shutil.copy(shared_data / "fsdd/recordings/3_theo_12.wav", tmp_path / "recordings/3_theo_12.wav")
  (tmp_path / "recordings/oops.wav").write_bytes(b"RIFF")
  with pytest.raises(FileNotFoundError, match="t10k-images-idx3-ubyte.gz"):
    avdigits.list_examples(tmp_path, tmp_path)
  layout = avdigits.list_examples(tmp_path, shared_data / "mnist-t10k")
  assert [s["path"] for s in layout.skipped] == [str(tmp_path / "recordings/oops.wav")]
  with pytest.raises(ValueError, match="oops.wav"):
    avdigits.list_examples(tmp_path, shared_data / "mnist-t10k", strict=True)
  bad = tmp_path / "mnist"
  bad.mkdir()
  for name in ("t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz"):
    (bad / name).write_bytes(gzip.compress(b"\x00\x00\x08\x01junk"))
  with pytest.raises(ValueError, match="magic 2051"):
    avdigits.read_mnist(bad)
