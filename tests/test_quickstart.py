"""experiments/quickstart.py, run as a user runs it: the whole pipeline from Python, its printed numbers checked."""

import json
import math
import pathlib
import re
import subprocess
import sys

import numpy as np

import mmvae

SCRIPT = pathlib.Path(__file__).resolve().parents[1] / "experiments" / "quickstart.py"


def _mrr(query, gallery, labels) -> float:
  """Cosine retrieval, rank of the first same-identity gallery item; ties only within one identity (asserted)."""
  q = query / np.linalg.norm(query.astype(np.float64), axis=1, keepdims=True)
  g = gallery / np.linalg.norm(gallery.astype(np.float64), axis=1, keepdims=True)
  rr = []
  for i, row in enumerate(q @ g.T):
    best = row[labels == labels[i]].max()
    assert (labels[row == best] == labels[i]).all()  # faces of one video are shared: tied, but one identity
    rr.append(1.0 / (1 + np.sum(row > best)))
  return float(np.mean(rr))


def _mrr_chance(labels) -> float:
  labels = list(labels)
  m = len(labels)
  return sum(sum(math.comb(m - k, labels.count(x) - 1) / math.comb(m, labels.count(x)) / k
                 for k in range(1, m - labels.count(x) + 2)) for x in labels) / m


def test_quickstart_runs_the_pipeline_and_prints_true_numbers(tmp_path):
  out = subprocess.run([sys.executable, str(SCRIPT), str(tmp_path)], capture_output=True, text=True, timeout=600)
  assert out.returncode == 0, out.stderr[-3000:]
  final = json.loads((tmp_path / "run" / "final.json").read_text())
  assert f"trained {final['step']} steps" in out.stdout and final["step"] == 100
  assert (tmp_path / "run" / "report" / "report.md").is_file()
  lat = np.load(tmp_path / "run" / "report" / "latents.npz")
  labels = lat["label"]
  for label, (q, g) in (("voice -> face", ("audio_mu", "face_mu")), ("face -> voice", ("face_mu", "audio_mu"))):
    printed = re.search(rf"{label} MRR ([0-9.]+) \(chance ([0-9.]+)\)", out.stdout)
    assert printed, out.stdout
    assert abs(float(printed.group(1)) - _mrr(lat[q], lat[g], labels)) <= 5e-4
    assert abs(float(printed.group(2)) - _mrr_chance(labels.tolist())) <= 5e-4
  assert "latent size 8" in out.stdout


def test_api_is_documented_and_import_is_light():
  for name in ("prepare", "train", "analyze", "load_run"):
    fn = getattr(mmvae, name)
    assert callable(fn) and (fn.__call__.__doc__ if name == "train" else fn.__doc__), name
  # `import mmvae` pulls in none of the heavy stages (they load on first call).
  probe = "import sys, mmvae; print(sorted(m for m in ('jax', 'flax', 'tensorflow_datasets', 'ml_collections') " \
          "if m in sys.modules))"
  loaded = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True).stdout.strip()
  assert loaded == "[]"
  # mmvae.train stays both the training function and the subpackage, whatever was imported first.
  from mmvae.train import checkpoints  # noqa: F401
  assert callable(mmvae.train) and mmvae.train.checkpoints.LAST == "last"
