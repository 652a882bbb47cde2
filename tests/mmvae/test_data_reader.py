"""The dataset reader: arrays, config checks, and batches that are a function of (seed, step)."""

import itertools
import json

import numpy as np
import pytest

from data_prep import storage
from mmvae import config as config_lib
from mmvae import data
from mmvae.modalities import image as image_kind

N, K, S = 13, 3, 5


def _examples(split, n, offset):
  def generate():
    for i in range(n):
      g = offset + i
      # audio[0] carries the example's global number so tests can recover which example a row is.
      yield {"audio": np.array([g, g * 0.5, -g], np.float32), "face": np.full((K, S, S, 1), 0, np.uint8)
             + np.arange(K, dtype=np.uint8)[:, None, None, None] * 40 + np.uint8(g),
             "label": g % 4, "id": f"ex{g:03d}", "identity": f"id{g % 4}", "video": f"v{g % 5}",
             "gender": "mf"[g % 2]}
  return generate


@pytest.fixture(scope="module")
def prepared(tmp_path_factory):
  out = tmp_path_factory.mktemp("prepared")
  cfg = config_lib.load("reference:tiny")
  cfg.data.face_size, cfg.data.frames_per_utterance = S, K
  storage.write_dataset(out, "synthetic", {"train": _examples("train", N, 0), "test": _examples("test", 4, 100)},
                        storage.audio_and_face((3,), (K, S, S, 1)), {"config": "t", "data_config": cfg.data.to_dict(),
                                             "audio_normalisation": None, "identities": [], "attributes": [],
                                             "skipped": []})
  return out


def _expected_example(seed, step, j, b):
  """The brute-force reading of the contract for batch position j of batch `step`."""
  p = step * b + j
  perm = np.random.default_rng((seed, p // N)).permutation(N)
  return int(perm[p % N]), int(np.random.default_rng((seed, step, j)).integers(K))


def test_arrays_sorted_typed_and_manifest_complete(prepared):
  ds = data.Dataset(prepared)
  arr = ds.arrays("train")
  assert list(arr["id"]) == [f"ex{i:03d}" for i in range(N)]
  assert arr["audio"].dtype == np.float32 and arr["audio"].shape == (N, 3)
  assert arr["face"].dtype == np.uint8 and arr["face"].shape == (N, K, S, S, 1)
  assert arr["label"].dtype == np.int32 and list(arr["label"]) == [i % 4 for i in range(N)]
  assert list(arr["gender"]) == ["mf"[i % 2] for i in range(N)] and arr["video"][7] == "v2"
  assert ds.num_examples("test") == 4 and ds.splits == ["train", "test"]
  assert ds.input_shapes() == {"audio": (3,), "face": (S, S, 1)}
  manifest = json.loads((prepared / "manifest.json").read_text())
  for key in ("format", "corpus", "config", "data_config", "tfds_dir", "splits", "features", "audio_normalisation",
              "identities", "attributes", "skipped", "versions", "complete"):
    assert key in manifest, key
  np.testing.assert_array_equal(image_kind.to_float(np.array([0, 255], np.uint8)), [0.0, 1.0])


@pytest.mark.parametrize("seed,step,b", [(0, 0, 4), (3, 5, 4), (1, 2, 20)])
def test_batch_at_matches_brute_force_contract(prepared, seed, step, b):
  ds = data.Dataset(prepared)
  batch = data.batch_at(ds, "train", b, seed, step)
  assert batch["face"].shape == (b, S, S, 1) and batch["face"].dtype == np.float32
  for j in range(b):
    example, frame = _expected_example(seed, step, j, b)
    assert batch["audio"][j, 0] == example and batch["label"][j] == example % 4
    # Frame f of example g has pixel value 40 f + g.
    np.testing.assert_allclose(batch["face"][j], np.full((S, S, 1), (40 * frame + example) / 255.0), rtol=1e-6)


def test_resume_equals_uninterrupted_and_prefetch_thread(prepared):
  ds = data.Dataset(prepared)
  full = list(itertools.islice(data.Batches(ds, "train", 4, seed=7), 9))
  resumed = list(itertools.islice(data.Batches(ds, "train", 4, seed=7, start_step=5, prefetch=1), 4))
  for a, b in zip(full[5:], resumed):
    for key in a:
      np.testing.assert_array_equal(a[key], b[key])
  other_seed = data.batch_at(ds, "train", 4, 8, 5)
  assert not np.array_equal(other_seed["audio"], full[5]["audio"])


def _check_rows(batch, seed, step, b, positions):
  """Rows of a batch against the brute-force contract at global batch positions `positions`."""
  assert batch["audio"].shape[0] == len(positions)
  for row, j in enumerate(positions):
    example, frame = _expected_example(seed, step, j, b)
    assert batch["audio"][row, 0] == example
    np.testing.assert_allclose(batch["face"][row], np.full((S, S, 1), (40 * frame + example) / 255.0), rtol=1e-6)


@pytest.mark.parametrize("workers", [0, 2])
def test_grain_pipeline_rows_and_saved_state_follow_the_contract(prepared, workers):
  """A process's rows of each batch, in worker processes or not, and a stream restored from its saved state."""
  ds = data.Dataset(prepared)
  rows = slice(2, 4)  # process 1 of 2 at global batch 4
  stream = data.Batches(ds, "train", 4, seed=7, start_step=2, rows=rows, workers=workers)
  try:
    for step in range(2, 5):
      _check_rows(next(stream), 7, step, 4, [2, 3])
    state = stream.get_state()
  finally:
    stream.close()
  assert json.loads(state)["step"] == 5
  # Restored into a stream started at step 0: with the same worker count through grain's own iterator state,
  # with another by restarting at the saved step; both continue at step 5.
  for restored_workers in (workers, 1 if workers == 0 else 0):
    restored = data.Batches(ds, "train", 4, seed=7, rows=rows, workers=restored_workers)
    try:
      restored.set_state(state)
      assert restored.step == 5
      for step in (5, 6):
        _check_rows(next(restored), 7, step, 4, [2, 3])
    finally:
      restored.close()


def test_each_epoch_covers_every_example_once(prepared):
  ds = data.Dataset(prepared)
  b = 5  # does not divide N, so epochs straddle batches
  seen = np.concatenate([data.batch_at(ds, "train", b, 2, s)["audio"][:, 0] for s in range(4 * N // b + 1)])
  for epoch in range(4):
    assert sorted(seen[epoch * N:(epoch + 1) * N].astype(int)) == list(range(N))
  assert not np.array_equal(seen[:N], seen[N:2 * N])  # epochs are reshuffled


def test_random_access_path_equals_in_memory(prepared, monkeypatch):
  in_memory = data.batch_at(data.Dataset(prepared), "train", 6, 1, 3)
  monkeypatch.setattr(data, "IN_MEMORY_BYTES", 0)
  ds = data.Dataset(prepared)
  assert not ds.in_memory("train")
  from_disk = data.batch_at(ds, "train", 6, 1, 3)
  for key in in_memory:
    np.testing.assert_array_equal(in_memory[key], from_disk[key])


def test_batch_errors(prepared):
  ds = data.Dataset(prepared)
  with pytest.raises(ValueError, match="global batch size must be >= 1, got 0"):
    data.Batches(ds, "train", 0, 0)
  with pytest.raises(ValueError, match="split 'validation' is not in"):
    data.batch_at(ds, "validation", 4, 0, 0)


def test_check_config_says_what_to_change(prepared, tmp_path):
  ds = data.Dataset(prepared)
  cfg = config_lib.load("reference:tiny")
  cfg.data.face_size, cfg.data.frames_per_utterance = S, K
  ds.check_config(cfg)
  cfg.data.frames_per_utterance = 1  # only changes sampling: accepted
  ds.check_config(cfg)
  for key, value in (("face_size", 8), ("time_average", False), ("grayscale", False), ("n_bins", 256)):
    bad = cfg.copy_and_resolve_references()
    bad.data[key] = value
    with pytest.raises(ValueError, match=f"--config.data.{key}="):
      ds.check_config(bad)
  bad = cfg.copy_and_resolve_references()
  bad.analysis.split = "validation"
  with pytest.raises(ValueError, match="no 'validation' split"):
    ds.check_config(bad)
  with pytest.raises(FileNotFoundError, match="manifest.json not found"):
    data.Dataset(tmp_path)


# A corpus with nested groups: 3 identities x 2 videos x 3 utterances in train (plus test utterances of the
# same identities, which training must never pair with). Face frame f of example g has pixel value 40 f + g.
GN, GK = 18, 3


def _grouped_examples(n, offset):
  def generate():
    for i in range(n):
      g = offset + i
      ident, video = i % 3, (i // 3) % 2
      yield {"audio": np.array([g, 0.0, 0.0], np.float32),
             "face": (np.arange(GK, dtype=np.uint8)[:, None, None, None] * 40 + np.uint8(g)
                      + np.zeros((GK, S, S, 1), np.uint8)),
             "label": ident, "id": f"ex{g:03d}", "identity": f"id{ident}", "video": f"id{ident}_v{video}",
             "gender": "mf"[ident % 2]}
  return generate


@pytest.fixture(scope="module")
def grouped(tmp_path_factory):
  out = tmp_path_factory.mktemp("grouped")
  cfg = config_lib.load("reference:tiny")
  cfg.data.face_size, cfg.data.frames_per_utterance = S, GK
  storage.write_dataset(out, "synthetic", {"train": _grouped_examples(GN, 0), "test": _grouped_examples(6, 100)},
                        storage.audio_and_face((3,), (GK, S, S, 1)), {"config": "t", "data_config": cfg.data.to_dict(),
                                              "audio_normalisation": None, "identities": [], "attributes": [],
                                              "skipped": []})
  return out


def _brute_force_pairs(ds, pairing, seed, step, b):
  """(voice example, face example, frame) per position, from the contract and group lists built by a loop."""
  arr = ds.arrays("train")
  key = {"video": arr["video"], "identity": arr["label"]}.get(pairing)
  out = []
  for j in range(b):
    p = step * b + j
    voice = int(np.random.default_rng((seed, p // GN)).permutation(GN)[p % GN])
    rng = np.random.default_rng((seed, step, j))
    if pairing == "utterance":
      partner = voice
    else:
      group = [k for k in range(GN) if key[k] == key[voice]]
      partner = group[int(rng.integers(len(group)))]
    out.append((voice, partner, int(rng.integers(GK))))
  return out


def _decode(batch, j):
  """(voice example, face example, frame) of batch row j, read back from the stored values."""
  pixel = int(round(float(batch["face"][j, 0, 0, 0]) * 255))
  return int(batch["audio"][j, 0]), pixel % 40, pixel // 40


@pytest.mark.parametrize("pairing", ["utterance", "video", "identity"])
def test_pairing_matches_brute_force_and_stays_in_group(grouped, pairing):
  ds = data.Dataset(grouped)
  arr = ds.arrays("train")
  partners = set()
  for seed, step in [(0, 0), (3, 1), (3, 7), (11, 4)]:
    batch = data.batch_at(ds, "train", 8, seed, step, pairing=pairing)
    assert np.all(batch["face"] == batch["face"][:, :1, :1])  # every row is one stored frame
    for j, expected in enumerate(_brute_force_pairs(ds, pairing, seed, step, 8)):
      voice, face, frame = _decode(batch, j)
      assert (voice, face, frame) == expected, (seed, step, j)
      assert batch["label"][j] == arr["label"][voice]
      assert face < GN  # never a test-split face
      if pairing == "identity":
        assert arr["label"][face] == arr["label"][voice]
      elif pairing == "video":
        assert arr["video"][face] == arr["video"][voice]
      else:
        assert face == voice
      partners.add((voice, face))
  if pairing == "identity":  # another video of the same identity does occur
    assert any(arr["video"][v] != arr["video"][f] for v, f in partners)
  if pairing != "utterance":
    assert any(v != f for v, f in partners)


@pytest.mark.parametrize("pairing", ["video", "identity"])
def test_pairing_is_a_function_of_seed_step_position(grouped, pairing, monkeypatch):
  ds = data.Dataset(grouped)
  direct = [data.batch_at(ds, "train", 6, 5, s, pairing=pairing) for s in range(3, 7)]
  resumed = list(itertools.islice(data.Batches(ds, "train", 6, seed=5, start_step=3, prefetch=1,
                                               pairing=pairing), 4))
  from_zero = list(itertools.islice(data.Batches(ds, "train", 6, seed=5, prefetch=0, pairing=pairing), 7))[3:]
  for a, b, c in zip(direct, resumed, from_zero):
    for key in a:
      np.testing.assert_array_equal(a[key], b[key])
      np.testing.assert_array_equal(a[key], c[key])
  monkeypatch.setattr(data, "IN_MEMORY_BYTES", 0)  # group lists read by random access give the same pairs
  from_disk = data.Dataset(grouped)
  assert not from_disk.in_memory("train")
  for key, value in data.batch_at(from_disk, "train", 6, 5, 4, pairing=pairing).items():
    np.testing.assert_array_equal(value, direct[1][key])


def _with_columns(source, dest, edit=None):
  """A copy of a prepared dataset plus the columns prep now stores, written here from its decoded records."""
  import shutil
  shutil.copytree(source, dest)
  ds = data.Dataset(dest)
  shutil.rmtree(dest / "columns", ignore_errors=True)  # replaced by the ones written here
  (dest / "columns").mkdir()
  for split in ds.splits:
    records = ds._source(split).__getitems__(list(range(ds.num_examples(split))))  # stored order, decoded here
    cols = {"label": np.array([r["label"] for r in records], np.int64)}
    cols.update({k: np.array([r[k].decode() for r in records]) for k in ("id", "identity", "video", "gender")})
    if edit:
      edit(split, cols)
    np.savez(dest / "columns" / f"{split}.npz", **cols)
  manifest = json.loads((dest / "manifest.json").read_text())
  (dest / "manifest.json").write_text(json.dumps(dict(manifest, columns="columns")))
  return dest


def test_stored_columns_equal_the_record_path_and_skip_the_records(synthetic_dataset, tmp_path, monkeypatch):
  monkeypatch.setattr(data, "IN_MEMORY_BYTES", 0)  # streamed splits: column() would otherwise decode every record
  plain = data.Dataset(synthetic_dataset)
  plain.manifest.pop("columns", None)  # the record-decoding path, whether or not prep stored columns
  with_cols = data.Dataset(_with_columns(synthetic_dataset, tmp_path / "cols"))
  expected = {s: plain.arrays(s) for s in plain.splits}  # every record decoded and sorted by id
  readers = [with_cols] + ([data.Dataset(synthetic_dataset)]  # and prep's own columns, where it writes them
                           if data.Dataset(synthetic_dataset).manifest.get("columns") else [])

  def no_records(*_):
    raise AssertionError("column() read the records although the columns file holds the field")

  monkeypatch.setattr(data.Dataset, "read", no_records)
  for reader, split in itertools.product(readers, plain.splits):
    for name in ("label", "id", "identity", "video", "gender"):
      got = reader.column(split, name)
      np.testing.assert_array_equal(got, expected[split][name])
      assert got.dtype == expected[split][name].dtype or got.dtype.kind == expected[split][name].dtype.kind == "U"
  for policy in ("identity", "video"):  # group lists from the columns, identical to those built from the records
    from_cols, from_records = data.Pairing(with_cols, "train", policy), data.Pairing(plain, "train", policy)
    np.testing.assert_array_equal(from_cols.group_of, from_records.group_of)
    assert [list(m) for m in from_cols.members] == [list(m) for m in from_records.members]


def test_a_columns_file_of_the_wrong_length_is_a_clear_error(synthetic_dataset, tmp_path):
  def drop_one(split, cols):
    if split == "test":
      cols["label"] = cols["label"][:-1]

  ds = data.Dataset(_with_columns(synthetic_dataset, tmp_path / "bad", drop_one))
  n = ds.num_examples("test")
  with pytest.raises(ValueError, match=rf"columns \{{'label': {n - 1}\}} have other lengths than the {n} examples"):
    ds.column("test", "label")
  assert len(ds.column("train", "label")) == ds.num_examples("train")  # the other splits' files are fine


def test_arrays_filled_chunk_by_chunk_equal_one_read(prepared, monkeypatch):
  ds = data.Dataset(prepared)
  whole = ds.read("train", range(N))  # stored order is id order here
  monkeypatch.setattr(data, "CHUNK", 4)  # 13 examples: chunks of 4, 4, 4, 1
  chunked = data.Dataset(prepared).arrays("train")
  assert set(chunked) == set(whole)
  for key, value in whole.items():
    np.testing.assert_array_equal(chunked[key], value)
    assert chunked[key].dtype == value.dtype, key
  assert [lo for lo, _ in ds.chunks("train", 5)] == [0, 5, 10]


@pytest.mark.parametrize("limit,seed", [(7, 0), (12, 3), (40, 1), (100, 0)])
def test_stratified_rows_spread_over_labels(limit, seed):
  labels = np.repeat([4, 9, 2, 7], [20, 3, 9, 1])
  rows = data.stratified_rows(labels, limit, seed)
  assert len(rows) == min(limit, len(labels)) and np.all(np.diff(rows) > 0)
  counts = {c: int(np.sum(labels[rows] == c)) for c in np.unique(labels)}
  total = {c: int(np.sum(labels == c)) for c in np.unique(labels)}
  # Balanced: a label below another's count by more than one must have run out of examples.
  for a in counts:
    for b in counts:
      assert counts[a] >= counts[b] - 1 or counts[a] == total[a], (counts, limit)
  np.testing.assert_array_equal(rows, data.stratified_rows(labels, limit, seed))  # seeded
