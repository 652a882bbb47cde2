"""Analysis sections are a registry: a toy section registered here lands in a real analysis's metrics.json and
report.md, after the built-in sections and before the dataset, and leaves with its registration."""

import json

import numpy as np
import pytest

from data_prep import prepare
from mmvae import config as config_lib
from mmvae import modalities
from mmvae.analysis import report, sections
from mmvae.train import entry

TOY = "toy_norms"


def _toy_compute(ctx):
  # The mean L2 norm of each modality's posterior means, and what the section saw of the split.
  return {**{f"toy.{m}.mean_norm": float(np.linalg.norm(ctx.latents[f"{m}_mu"], axis=1).mean()) for m in ctx.names},
          "toy.examples_seen": int(len(ctx.latents["label"]))}


def _toy_markdown(ctx, metrics):
  return ["## Toy norms", ""] + [f"- {m}: {metrics[f'toy.{m}.mean_norm']:.6f}" for m in ctx.names] + [""]


@pytest.fixture
def toy_section():
  sections.register(TOY, _toy_compute, _toy_markdown)
  try:
    yield TOY
  finally:
    sections.unregister(TOY)


def _arrays(seed=0, classes=3, per_class=6, dim=4):
  rng = np.random.default_rng(seed)
  labels = np.repeat(np.arange(classes), per_class)
  latents = {"label": labels}
  for m in ("a", "b"):
    latents[f"{m}_mu"] = (rng.normal(size=(len(labels), dim)) + labels[:, None]).astype(np.float32)
    latents[f"{m}_logvar"] = np.zeros((len(labels), dim), np.float32)
  specs = {m: modalities.Modality(m, "vector", (dim,), "float32") for m in ("a", "b")}
  return latents, specs


def test_toy_section_follows_the_builtins_and_leaves_with_its_registration(tmp_path, toy_section):
  latents, specs = _arrays()
  metrics = report.analyze_arrays(tmp_path / "with", latents, None, {"label": latents["label"]}, {}, specs, {})
  for m in specs:
    assert metrics[f"toy.{m}.mean_norm"] == pytest.approx(
        np.mean([np.sqrt(sum(float(v) ** 2 for v in row)) for row in latents[f"{m}_mu"]]), rel=1e-6)
  text = (tmp_path / "with" / "report.md").read_text()
  heads = [line for line in text.splitlines() if line.startswith("## ")]
  assert heads.index("## Toy norms") == heads.index("## Dataset") - 1  # after every built-in section
  assert heads.index("## Toy norms") > heads.index("## Cross generation") > heads.index("## Latent space")
  sections.unregister(TOY)
  again = report.analyze_arrays(tmp_path / "without", latents, None, {"label": latents["label"]}, {}, specs, {})
  assert not [k for k in again if k.startswith("toy.")]
  assert "## Toy norms" not in (tmp_path / "without" / "report.md").read_text()
  # Everything else is the same analysis.
  assert {k: v for k, v in metrics.items() if not k.startswith("toy.")} == again


def test_a_section_may_not_rewrite_another_sections_metrics_or_take_a_used_name(tmp_path):
  latents, specs = _arrays()
  sections.register("clash", lambda ctx: {"retrieval.a_to_b.mrr": 1.0}, lambda ctx, metrics: [])
  try:
    with pytest.raises(ValueError, match="clash.*retrieval.a_to_b.mrr"):
      report.analyze_arrays(tmp_path, latents, None, {"label": latents["label"]}, {}, specs, {})
  finally:
    sections.unregister("clash")
  with pytest.raises(ValueError, match="already registered"):
    sections.register("retrieval", _toy_compute, _toy_markdown)


@pytest.mark.slow
def test_toy_section_appears_in_a_real_tiny_analysis(tmp_path, toy_section):
  data_dir, run = tmp_path / "syn", tmp_path / "run"
  prepare.prepare_synthetic(str(data_dir), identities=4, seed=0, config="synthetic:tiny", workers=1)
  config = config_lib.load("synthetic:tiny")
  config.train.num_steps = 4
  entry.train(config, data_dir, run)
  metrics = report.analyze(run)
  on_disk = json.loads((run / "report" / "metrics.json").read_text())
  saved = np.load(run / "report" / "latents.npz")
  names = on_disk["modalities"]
  for m in names:
    expected = float(np.mean(np.sqrt((saved[f"{m}_mu"].astype(np.float64) ** 2).sum(axis=1))))
    assert on_disk[f"toy.{m}.mean_norm"] == pytest.approx(expected, rel=1e-5)
  assert on_disk["toy.examples_seen"] == len(saved["label"]) == on_disk["examples"]
  assert metrics["toy.examples_seen"] == on_disk["toy.examples_seen"]
  text = (run / "report" / "report.md").read_text()
  heads = [line for line in text.splitlines() if line.startswith("## ")]
  assert heads[heads.index("## Dataset") - 1] == "## Toy norms"
  assert heads[heads.index("## Toy norms") - 1] == "## Test-set likelihood"
  for m in names:
    assert f"- {m}: {on_disk[f'toy.{m}.mean_norm']:.6f}" in text
