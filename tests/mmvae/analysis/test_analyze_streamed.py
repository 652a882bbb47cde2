"""`analyze` of a split too large for memory: encoded chunk by chunk from disk, to the numbers of the whole split."""

import json
import shutil

import numpy as np
import pytest

from mmvae import data
from mmvae import config as config_lib
from mmvae.analysis import report
from mmvae.train import checkpoints, entry


@pytest.fixture(scope="module")
def runs(synthetic_dataset, tmp_path_factory):
  """synthetic:tiny on the shared 4-identity corpus, analysed in memory; a copy of the run for streamed analyses."""
  base = tmp_path_factory.mktemp("streamed")
  entry.train(config_lib.load("synthetic:tiny"), synthetic_dataset, base / "run")
  shutil.copytree(base / "run", base / "copy")
  return base, report.analyze(base / "run")


def _streamed(monkeypatch, generated_examples):
  """Every split 'too large' for memory, read in chunks of 8 (16 test rows: two), whole-split loads refused."""
  monkeypatch.setattr(data, "IN_MEMORY_BYTES", 0)
  monkeypatch.setattr(data, "CHUNK", 8)
  monkeypatch.setattr(report, "GENERATED_EXAMPLES", generated_examples)

  def no_whole_split(*_):
    raise AssertionError("a streamed analysis loaded a whole split")

  monkeypatch.setattr(data.Dataset, "arrays", no_whole_split)


def test_streamed_analysis_gives_the_in_memory_numbers(runs, synthetic_dataset, monkeypatch):
  base, whole = runs
  _streamed(monkeypatch, generated_examples=1000)  # every test row generated, every training row for coherence
  metrics = report.analyze(base / "copy")
  assert set(metrics) == set(whole)
  for key, value in whole.items():
    if isinstance(value, float):
      assert metrics[key] == pytest.approx(value, rel=1e-5, abs=1e-6), key
    elif key != "dataset.path":
      assert metrics[key] == value, key
  a, b = (np.load(base / r / "report" / "latents.npz") for r in ("run", "copy"))
  assert sorted(a.files) == sorted(b.files)
  for key in a.files:
    if a[key].dtype.kind == "f":
      np.testing.assert_allclose(b[key], a[key], rtol=1e-5, atol=1e-6)
    else:
      np.testing.assert_array_equal(b[key], a[key])
  # The likelihood of example i uses the noise of (seed, i) in whichever chunk it is read.
  la, lb = (np.load(base / r / "report" / "likelihood.npz") for r in ("run", "copy"))
  np.testing.assert_allclose(lb["iwae"], la["iwae"], rtol=1e-5, atol=1e-4)
  # Independent of analyze: the saved means are the model's encoding of the examples read from disk here.
  model, _, _ = checkpoints.load_run(base / "copy")
  ds = data.Dataset(synthetic_dataset)
  test = ds.read("test", range(ds.num_examples("test")))
  np.testing.assert_allclose(b["audio_mu"], np.asarray(model.encode("audio", test["audio"])[0]), rtol=1e-4, atol=1e-5)
  np.testing.assert_array_equal(b["id"], test["id"])


def test_streamed_subset_generation_and_rebuild(runs, synthetic_dataset, monkeypatch):
  base, whole = runs
  _streamed(monkeypatch, generated_examples=8)  # 16 test rows of 4 identities: 2 per identity generated
  metrics = report.analyze(base / "copy")
  rep = base / "copy" / "report"
  gen, lat = np.load(rep / "generated.npz"), np.load(rep / "latents.npz")
  rows = gen["rows"]
  assert len(rows) == 8 and len(lat["label"]) == metrics["examples"] == 16
  assert np.bincount(lat["label"][rows]).tolist() == [2, 2, 2, 2]
  model, _, _ = checkpoints.load_run(base / "copy")
  np.testing.assert_allclose(gen["face_from_audio"], np.asarray(model.decode(lat["audio_mu"][rows])["face"]),
                             rtol=1e-4, atol=1e-5)
  assert set(metrics) == set(whole)
  # Retrieval and clusters use every row: the same as in memory; coherence is over the generated rows.
  for key in (k for k in whole if k.startswith(("retrieval.", "clusters."))):
    assert metrics[key] == (whole[key] if isinstance(whole[key], str) else  # retrieval.ci_cluster: a name
                            pytest.approx(whole[key], rel=1e-5, abs=1e-6)), key
  assert {p.name for p in rep.glob("*_from_*.png")} == {"face_from_audio.png", "audio_from_face.png"}
  assert report.rebuild(base / "copy") == json.loads((rep / "metrics.json").read_text()) == metrics
