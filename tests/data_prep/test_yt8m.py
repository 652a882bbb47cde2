"""`mmvae prep yt8m`: YouTube-8M TFRecords read without TensorFlow -> sequence / vector modalities.

The records are written here by an encoder of this file's own (bitwise CRC32C, varints, protobuf messages,
TFRecord framing), so the reader is checked against an independent writer, not against itself.
"""

import gzip
import hashlib
import json

import numpy as np
import pytest

from data_prep import tfrecord as reader
from data_prep import yt8m
from mmvae import cli, data
from mmvae.modalities import sequence

# ------------------------------------------------------------------------------------ independent writer


def crc32c_bitwise(data: bytes) -> int:
  """CRC-32C bit by bit (no table), reflected polynomial 0x82F63B78."""
  crc = 0xFFFFFFFF
  for byte in data:
    crc ^= byte
    for _ in range(8):
      crc = (crc >> 1) ^ (0x82F63B78 if crc & 1 else 0)
  return crc ^ 0xFFFFFFFF


def masked(data: bytes) -> int:
  crc = crc32c_bitwise(data)
  return ((((crc >> 15) | (crc << 17)) & 0xFFFFFFFF) + 0xA282EAD8) & 0xFFFFFFFF


def varint(n: int) -> bytes:
  n &= (1 << 64) - 1
  out = bytearray()
  while True:
    low = n & 0x7F
    n >>= 7
    out.append(low | (0x80 if n else 0))
    if not n:
      return bytes(out)


def key(field: int, wire: int) -> bytes:
  return varint(field << 3 | wire)


def ld(field: int, payload: bytes) -> bytes:
  """A length-delimited field."""
  return key(field, 2) + varint(len(payload)) + payload


UNKNOWN = key(15, 0) + varint(300) + key(14, 5) + b"\x01\x02\x03\x04" + key(13, 1) + b"\x00" * 8 + ld(12, b"junk!")


def bytes_feature(values, extra=False) -> bytes:
  body = b"".join(ld(1, v) for v in values) + (UNKNOWN if extra else b"")
  return ld(1, body) + (key(9, 0) + varint(1) if extra else b"")  # Feature.bytes_list, an unknown Feature field


def float_feature(values, packed=True) -> bytes:
  values = np.asarray(values, "<f4")
  if packed:
    body = ld(1, values.tobytes())
  else:
    body = b"".join(key(1, 5) + v.tobytes() for v in values)
  return ld(2, body)


def int64_feature(values, packed=True) -> bytes:
  if packed:
    body = ld(1, b"".join(varint(v) for v in values)) if values else b""
  else:
    body = b"".join(key(1, 0) + varint(v) for v in values)
  return ld(3, body)


def features(d: dict, extra=False) -> bytes:
  """tf.train.Features: map entries (key = 1, value = 2), an unknown field in each entry when `extra`."""
  return b"".join(ld(1, ld(1, k.encode()) + (UNKNOWN if extra else b"") + ld(2, v)) for k, v in d.items())


def sequence_example(video_id: str, labels, rgb, audio, packed=True, extra=False) -> bytes:
  context = {"id": bytes_feature([video_id.encode()])}
  if labels is not None:
    context["labels"] = int64_feature(labels, packed)
  lists = {"rgb": rgb, "audio": audio}
  feature_lists = b"".join(
      ld(1, ld(1, name.encode()) + ld(2, b"".join(ld(1, bytes_feature([row.tobytes()], extra)) for row in steps)))
      for name, steps in lists.items())
  return (UNKNOWN if extra else b"") + ld(1, features(context, extra)) + ld(2, feature_lists) + (
      UNKNOWN if extra else b"")


def example(video_id: str, labels, mean_rgb, mean_audio, packed=True) -> bytes:
  body = {"id": bytes_feature([video_id.encode()]), "labels": int64_feature(labels, packed),
          "mean_rgb": float_feature(mean_rgb, packed), "mean_audio": float_feature(mean_audio, packed)}
  return ld(1, features(body))


def tfrecord(records) -> tuple[bytes, list[int]]:
  """The framed file and each record's byte offset."""
  out, offsets = bytearray(), []
  for r in records:
    offsets.append(len(out))
    length = len(r).to_bytes(8, "little")
    out += length + masked(length).to_bytes(4, "little") + r + masked(r).to_bytes(4, "little")
  return bytes(out), offsets


def dequantised(q) -> np.ndarray:
  """yt8m's Dequantize (min -2, max 2), computed here in float64."""
  return np.asarray(q, np.float64) * (4.0 / 255.0) + 4.0 / 512.0 - 2.0


# --------------------------------------------------------------------------------------------- corpus

MAX_STEPS = 6
# file: [(id, labels or None, rgb steps, audio steps, packed labels)]
FRAME_FILES = {
    "train0000.tfrecord": [("e000", [3], 0, 0, True), ("zq01", [7, 3], 4, 4, True), ("Ab12", [3], 9, 9, False),
                           ("m0X9", [12, 7, 3], 5, 3, True), ("k777", None, 3, 3, True)],
    "validate0000.tfrecord": [("Yy00", [3], 2, 2, False), ("b5b5", [7, 12], MAX_STEPS, MAX_STEPS, True)],
    "test0000.tfrecord": [("t001", [], 2, 2, True), ("Q9a0", [20], 1, 1, True)],
}
SPLIT_OF_FILE = {"train0000.tfrecord": "train", "validate0000.tfrecord": "validation", "test0000.tfrecord": "test"}
CLASSES = [3, 7, 12, 20]  # sorted first labels of the labeled videos


def write_frame_corpus(root, seed=0) -> dict:
  """Writes FRAME_FILES; returns {id: (file, labels, rgb uint8 [L, 1024], audio uint8 [La, 128])}."""
  rng = np.random.default_rng(seed)
  root.mkdir(parents=True, exist_ok=True)
  written = {}
  for name, videos in FRAME_FILES.items():
    records = []
    for i, (vid, labels, n_rgb, n_audio, packed) in enumerate(videos):
      rgb = rng.integers(0, 256, (n_rgb, 1024), dtype=np.uint8)
      audio = rng.integers(0, 256, (n_audio, 128), dtype=np.uint8)
      if n_rgb and n_audio:
        rgb[0, :3], audio[0, :3] = (0, 255, 128), (255, 0, 1)  # the ends of the range
      records.append(sequence_example(vid, labels, rgb, audio, packed=packed, extra=(i % 2 == 0)))
      written[vid] = (name, labels, rgb, audio)
    (root / name).write_bytes(tfrecord(records)[0])
  return written


@pytest.fixture(scope="module")
def frame_level(tmp_path_factory):
  base = tmp_path_factory.mktemp("yt8m_frames")
  written = write_frame_corpus(base / "raw")
  # Two patterns, one of them matching a file the other matches too (counted once).
  code = cli.main(["prep", "yt8m", "--records", str(base / "raw" / "t*.tfrecord"), "--records",
                   str(base / "raw" / "*.tfrecord"), "--out", str(base / "out"), "--max-steps", str(MAX_STEPS)])
  assert code == 0
  return base, written


def test_frame_level_values_mask_lengths_and_labels(frame_level):
  base, written = frame_level
  ds = data.Dataset(base / "out")
  labeled = {v: w for v, w in written.items() if w[1] and len(w[2])}  # e000 has no frames
  assert set(ds.splits) == {"train", "validation", "test"}
  for split in ds.splits:
    arrays = ds.arrays(split)
    expected_ids = sorted(v for v, w in labeled.items() if SPLIT_OF_FILE[w[0]] == split)
    assert list(arrays["id"]) == expected_ids
    assert list(ds.read(split, range(len(expected_ids)))["id"]) == expected_ids  # stored in id order
    for row, vid in enumerate(expected_ids):
      _, labels, rgb, audio = labeled[vid]
      steps = min(len(rgb), len(audio), MAX_STEPS)
      for name, q in (("rgb", rgb), ("audio", audio)):
        stored = arrays[name][row]
        assert stored.shape == (MAX_STEPS, q.shape[1] + 1) and stored.dtype == np.float32
        np.testing.assert_allclose(stored[:steps, :-1], dequantised(q[:steps]), rtol=0, atol=1e-6)
        np.testing.assert_array_equal(stored[:steps, -1], 1.0)
        np.testing.assert_array_equal(stored[steps:], 0.0)
        assert sequence.lengths(stored) == steps
      assert arrays["label"][row] == CLASSES.index(labels[0])
      assert arrays["identity"][row] == str(labels[0])
      assert arrays["video"][row] == vid and arrays["gender"][row] == ""


def test_frame_level_manifest(frame_level):
  base, _ = frame_level
  manifest = json.loads((base / "out" / "manifest.json").read_text())
  assert manifest["corpus"] == "yt8m" and manifest["complete"]
  assert manifest["modalities"] == [
      {"name": "rgb", "kind": "sequence", "shape": [MAX_STEPS, 1025], "dtype": "float32", "step_shape": [1024],
       "step_seconds": 1.0},
      {"name": "audio", "kind": "sequence", "shape": [MAX_STEPS, 129], "dtype": "float32", "step_shape": [128],
       "step_seconds": 1.0}]
  assert [(i["identity"], i["name"]) for i in manifest["identities"]] == [(str(c), str(c)) for c in CLASSES]
  assert manifest["relevance"] == "same first label"
  assert manifest["splits"] == {"train": {"examples": 3}, "validation": {"examples": 2}, "test": {"examples": 1}}
  counts = manifest["source"]["counts"]
  assert (counts["records"], counts["videos"], counts["unlabeled"], counts["no_steps"]) == (9, 9, 2, 1)
  assert (counts["truncated"], counts["length_mismatch"], counts["multi_label"]) == (1, 1, 3)
  assert len(manifest["source"]["files"]) == 3  # the file both patterns match is read once
  notes = " ".join(manifest["notes"])
  for phrase in ("1 videos longer than 6 steps truncated", "1 videos whose rgb and audio lengths differ",
                 "skipped 2 videos without labels (YouTube-8M's test files carry none) and 1 without frames",
                 "first label id", "split by file name", "q * 4/255 + 4/512 - 2"):
    assert phrase in notes, phrase


VIDEO_IDS = ["v0", "v1", "v2", "v3", "v4", "v5", "v6", "v7", "v8", "v9", "vA", "vB", "vC", "vD", "vE", "vF"]


def hash_split(vid: str) -> str:
  bucket = int(hashlib.sha256(vid.encode()).hexdigest()[:16], 16) % 10
  return "train" if bucket < 8 else "validation" if bucket == 8 else "test"


def test_video_level_round_trip_with_hash_split_and_gzip(tmp_path):
  rng = np.random.default_rng(1)
  written, records = {}, {"part-a.tfrecord": [], "part-b.tfrecord.gz": []}
  for i, vid in enumerate(VIDEO_IDS):
    labels = [int(rng.integers(0, 5)) * 10 + 100] + ([5] if i % 3 == 0 else [])
    mean_rgb = rng.normal(0, 1, 1024).astype(np.float32)
    mean_audio = rng.normal(0, 1, 128).astype(np.float32)
    written[vid] = (labels, mean_rgb, mean_audio)
    records["part-a.tfrecord" if i % 2 else "part-b.tfrecord.gz"].append(
        example(vid, labels, mean_rgb, mean_audio, packed=i % 4 != 1))
  (tmp_path / "raw").mkdir()
  (tmp_path / "raw" / "part-a.tfrecord").write_bytes(tfrecord(records["part-a.tfrecord"])[0])
  (tmp_path / "raw" / "part-b.tfrecord.gz").write_bytes(gzip.compress(tfrecord(records["part-b.tfrecord.gz"])[0]))
  manifest = yt8m.prepare_yt8m(str(tmp_path / "raw" / "part-*"), tmp_path / "out")
  assert manifest["modalities"] == [{"name": "mean_rgb", "kind": "vector", "shape": [1024], "dtype": "float32"},
                                    {"name": "mean_audio", "kind": "vector", "shape": [128], "dtype": "float32"}]
  classes = sorted({w[0][0] for w in written.values()})
  assert [i["identity"] for i in manifest["identities"]] == [str(c) for c in classes]
  ds = data.Dataset(tmp_path / "out")
  expected_splits = {s: sorted(v for v in VIDEO_IDS if hash_split(v) == s) for s in ("train", "validation", "test")}
  assert manifest["splits"] == {s: {"examples": len(v)} for s, v in expected_splits.items() if v}
  for split in ds.splits:
    arrays = ds.arrays(split)
    assert list(arrays["id"]) == expected_splits[split]
    for row, vid in enumerate(arrays["id"]):
      labels, mean_rgb, mean_audio = written[vid]
      np.testing.assert_array_equal(arrays["mean_rgb"][row], mean_rgb)
      np.testing.assert_array_equal(arrays["mean_audio"][row], mean_audio)
      assert arrays["label"][row] == classes.index(labels[0]) and arrays["identity"][row] == str(labels[0])
  assert "sha256 of the video id" in " ".join(manifest["notes"])
  assert not (tmp_path / "out" / ".yt8m-gunzip").exists()


# ------------------------------------------------------------------------------------ formats and errors


def test_crc32c_known_vectors_and_long_inputs():
  assert reader.crc32c(b"123456789") == 0xE3069283
  assert reader.crc32c(bytes(32)) == 0x8A9136AA  # RFC 3720 B.4
  assert reader.crc32c(b"\xff" * 32) == 0x62A8AB43
  assert reader.crc32c(bytes(range(32))) == 0x46DD794E
  assert reader.crc32c(b"") == 0
  rng = np.random.default_rng(2)
  for n in (5, 2047, 2048, 3001, 9000):  # both the byte loop and the blockwise numpy path
    block = rng.integers(0, 256, n, dtype=np.uint8).tobytes()
    assert reader.crc32c(block) == crc32c_bitwise(block), n
  assert reader.masked_crc32c(b"123456789") == masked(b"123456789")


def test_protobuf_decoder_skips_unknown_fields_and_reads_both_encodings():
  q = np.arange(8, dtype=np.uint8).reshape(2, 4)
  video = yt8m.decode_video(sequence_example("abc", [300, 2], q, q[:, :2], packed=False, extra=True))
  assert (video.kind, video.id, video.labels) == ("frame", "abc", [300, 2])
  np.testing.assert_array_equal(video.arrays["rgb"], q)
  np.testing.assert_array_equal(video.arrays["audio"], q[:, :2])
  for packed in (True, False):
    video = yt8m.decode_video(example("v", [1, 2 ** 40], [0.5, -1.25], [3.0], packed=packed))
    assert (video.kind, video.labels) == ("video", [1, 2 ** 40])
    np.testing.assert_array_equal(video.arrays["mean_rgb"], [0.5, -1.25])


def test_corrupt_byte_names_the_file_and_offset(tmp_path):
  records = [b"first record", b"second record, which gets a bad byte", b"third"]
  framed, offsets = tfrecord(records)
  path = tmp_path / "corrupt.tfrecord"
  bad = bytearray(framed)
  bad[offsets[1] + 12 + 3] ^= 0x40  # in the second record's data
  path.write_bytes(bytes(bad))
  with pytest.raises(ValueError, match=rf"corrupt\.tfrecord: byte {offsets[1]}: corrupt TFRecord .*CRC"):
    list(reader.read_records(path))
  bad = bytearray(framed)
  bad[offsets[2]] ^= 0x01  # in the third record's length
  path.write_bytes(bytes(bad))
  with pytest.raises(ValueError, match=rf"byte {offsets[2]}: corrupt TFRecord \(the record length's CRC"):
    list(reader.read_records(path))
  path.write_bytes(framed)
  assert [r for _, r in reader.read_records(path)] == records
  assert [o for o, _ in reader.read_records(path)] == offsets


def test_truncated_file(tmp_path):
  framed, offsets = tfrecord([b"a" * 50, b"b" * 70])
  path = tmp_path / "short.tfrecord"
  path.write_bytes(framed[:-10])
  with pytest.raises(ValueError, match=rf"short\.tfrecord: byte {offsets[1]}: truncated TFRecord"):
    list(reader.read_records(path))
  path.write_bytes(framed[:offsets[1] + 5])  # inside the second header
  with pytest.raises(ValueError, match=rf"byte {offsets[1]}: truncated TFRecord: 5 bytes left"):
    list(reader.read_records(path))


def _cli_error(capsys, argv) -> str:
  assert cli.main(argv) == 2
  lines = capsys.readouterr().err.strip().splitlines()  # progress lines, then the error
  assert lines[-1].startswith("mmvae prep: error: "), lines
  assert not [line for line in lines[:-1] if not line.startswith("yt8m index")], lines
  return lines[-1]


def test_cli_errors_are_one_line(tmp_path, capsys):
  raw = tmp_path / "raw"
  raw.mkdir()
  out = ["--out", str(tmp_path / "out")]
  err = _cli_error(capsys, ["prep", "yt8m", "--records", str(raw / "*.tfrecord"), *out])
  assert "matches no files" in err
  (raw / "notes.tfrecord").write_text("these are not records, just text that is long enough\n")
  err = _cli_error(capsys, ["prep", "yt8m", "--records", str(raw / "notes.tfrecord"), *out])
  assert "notes.tfrecord is not a TFRecord file" in err
  (raw / "empty.tfrecord").write_bytes(b"")
  err = _cli_error(capsys, ["prep", "yt8m", "--records", str(raw / "empty.tfrecord"), *out])
  assert "no records" in err
  q = np.zeros((2, 1024), np.uint8)
  (raw / "test0000.tfrecord").write_bytes(tfrecord([sequence_example("a", [], q, q[:, :128]),
                                                    sequence_example("b", None, q, q[:, :128])])[0])
  err = _cli_error(capsys, ["prep", "yt8m", "--records", str(raw / "test*"), *out])
  assert "no labeled videos among the 2 records" in err
  (raw / "train0000.tfrecord").write_bytes(tfrecord([sequence_example("a", [1], q, q[:, :128]),
                                                     example("b", [1], np.zeros(1024), np.zeros(128))])[0])
  err = _cli_error(capsys, ["prep", "yt8m", "--records", str(raw / "train*"), *out])
  assert "is a video-level Example" in err and "separately" in err
  (raw / "train0000.tfrecord").write_bytes(tfrecord([sequence_example("dup", [1], q, q[:, :128])])[0])
  (raw / "train0001.tfrecord").write_bytes(tfrecord([sequence_example("dup", [2], q, q[:, :128])])[0])
  err = _cli_error(capsys, ["prep", "yt8m", "--records", str(raw / "train*"), *out])
  assert "video id 'dup' appears twice" in err and "train0001.tfrecord" in err
  assert not (tmp_path / "out").exists() and [p.name for p in tmp_path.iterdir()] == ["raw"]  # nothing left behind
