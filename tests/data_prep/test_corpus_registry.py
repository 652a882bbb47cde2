"""A corpus is one module plus a registration: a toy registered here is prepared by `mmvae prep toy` like a built-in."""

import json

import numpy as np
import pytest

import mmvae
from data_prep import corpora, storage
from mmvae import cli, data

NAME = "toy"
WIDTH = 3
SPLIT_ROWS = {"train": 5, "test": 2}


def _toy_arrays(split: str, rows: int, scale: float) -> dict:
  """What the toy stores, written out independently of its prepare: row i of a is i * scale + [0, 1, 2]."""
  a = (np.arange(rows)[:, None] * scale + np.arange(WIDTH)[None, :]).astype(np.float32)
  return {"a": a, "b": -2 * a, "label": np.arange(rows) % 2,
          "id": [f"{split}/{i:03d}" for i in range(rows)]}


def _prepare(out, rows: int = 1, scale: float = 1.0) -> dict:
  if rows < 1:
    raise ValueError(f"--rows must be at least 1, got {rows}")
  counts = {s: n * rows for s, n in SPLIT_ROWS.items()}

  def split_fn(split):
    def generate():
      for i in range(counts[split]):
        a = np.array([i * scale + k for k in range(WIDTH)], np.float32)
        yield {"a": a, "b": a * -2.0, "label": i % 2, "id": f"{split}/{i:03d}", "identity": str(i % 2),
               "video": f"v{i}", "gender": ""}
    return generate

  entries = [{"name": m, "kind": "vector", "shape": [WIDTH], "dtype": "float32"} for m in ("a", "b")]
  manifest = {"config": None, "data_config": {}, "audio_normalisation": None, "relevance": "same class",
              "identities": [{"identity": str(c), "name": str(c), "gender": "", "nationality": ""} for c in (0, 1)],
              "attributes": [], "skipped": [], "warnings": [], "notes": [f"toy: {rows} x, scale {scale}"]}
  with storage.Build(out) as build:
    manifest = storage.write_dataset(build.path, NAME, {s: split_fn(s) for s in counts}, entries, manifest)
    build.commit()
  return manifest


def _add_arguments(parser, add_config) -> None:  # pylint: disable=unused-argument  (reads no config)
  parser.add_argument("--out", required=True, help=corpora.OUT_HELP)
  parser.add_argument("--rows", type=int, default=1, help="rows per split, times the split's base count")
  parser.add_argument("--scale", type=float, default=1.0, help="step between consecutive rows")


def _run(args, config) -> None:  # pylint: disable=unused-argument
  _prepare(args.out, rows=args.rows, scale=args.scale)


@pytest.fixture
def toy(monkeypatch):
  corpora.names()  # the built-ins register on first use: before the registry is copied for this test
  monkeypatch.setattr(corpora, "_KINDS", dict(corpora._KINDS))  # pylint: disable=protected-access  (this test only)
  corpora.register(corpora.Kind(NAME, help="a toy corpus of two vector modalities", add_arguments=_add_arguments,
                                run=_run, prepare=_prepare))


def test_registered_toy_is_a_prep_subcommand_with_its_flags(toy, capsys):
  with pytest.raises(SystemExit) as exit_info:
    cli.main(["prep", "--help"])
  assert exit_info.value.code == 0
  assert "a toy corpus of two vector modalities" in capsys.readouterr().out
  with pytest.raises(SystemExit) as exit_info:
    cli.main(["prep", NAME, "--help"])
  assert exit_info.value.code == 0
  text = " ".join(capsys.readouterr().out.split())
  assert "--rows ROWS rows per split, times the split's base count (default: 1)" in text
  assert "--config" not in text  # a corpus that reads no config gets no --config


def test_prep_toy_writes_the_records_the_toy_produced(toy, tmp_path, capsys):
  out = tmp_path / "toy_data"
  assert cli.main(["prep", NAME, "--out", str(out), "--rows", "2", "--scale", "0.5"]) == 0
  manifest = json.loads((out / "manifest.json").read_text())
  assert manifest["corpus"] == NAME
  assert {s: v["examples"] for s, v in manifest["splits"].items()} == {"train": 10, "test": 4}
  assert manifest["notes"][-1] == "toy: 2 x, scale 0.5"
  ds = data.Dataset(out)
  for split, n in (("train", 10), ("test", 4)):
    got, want = ds.arrays(split), _toy_arrays(split, n, 0.5)
    np.testing.assert_array_equal(got["a"], want["a"])
    np.testing.assert_array_equal(got["b"], want["b"])
    np.testing.assert_array_equal(got["label"], want["label"])
  # The Python API reaches the same kind; it reads no config, so one is refused.
  again = mmvae.prepare(NAME, tmp_path / "api", rows=2, scale=0.5)
  assert again["fingerprint"] == manifest["fingerprint"]
  with pytest.raises(ValueError, match="reads no config"):
    mmvae.prepare(NAME, tmp_path / "refused", config="synthetic")


def test_toy_errors_are_one_line_exit_2(toy, tmp_path, capsys):
  assert cli.main(["prep", NAME, "--out", str(tmp_path / "x"), "--rows", "0"]) == 2
  err = capsys.readouterr().err.strip().splitlines()
  assert err == ["mmvae prep: error: --rows must be at least 1, got 0"]
  assert not (tmp_path / "x").exists()


def test_unknown_and_duplicate_corpora_are_refused(toy):
  with pytest.raises(ValueError, match="unknown corpus 'toi'; did you mean 'toy'"):
    corpora.get("toi")
  with pytest.raises(ValueError, match="already registered"):
    corpora.register(corpora.Kind(NAME, help="another", add_arguments=_add_arguments, run=_run, prepare=_prepare))
