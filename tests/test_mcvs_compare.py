"""experiments/mcvs_compare.py: the side-by-side tables and averages of two runs' metrics, computed here by hand."""

import itertools
import json

import pytest

from experiments import mcvs_compare

NAMES = ["image", "text", "audio"]


def _run(path, values: dict, stages: list[dict]):
  metrics = {}
  for (q, g), v in values.items():
    metrics[f"retrieval.{q}_to_{g}.map_top@50"] = v
    metrics[f"retrieval.{q}_to_{g}.map_top@50_chance"] = 0.1
    metrics[f"retrieval.{q}_to_{g}.mrr"] = v / 2
  (path / "report").mkdir(parents=True)
  (path / "report" / "metrics.json").write_text(json.dumps(metrics))
  (path / "stages.json").write_text(json.dumps(stages))


def _stage(k, mods, ms):
  return {"stage": k, "modalities": mods, "new": mods[-1:], "trainable_params": 1000 * k,
          "seconds_per_iteration": ms / 1e3, "branch_sha256": {}}


def test_the_comparison_averages_every_ordered_pair_and_lists_every_stage(tmp_path):
  pairs = list(itertools.permutations(NAMES, 2))
  cvs = {p: 0.5 + 0.05 * i for i, p in enumerate(pairs)}  # 0.50 .. 0.75
  mcvs = {p: v - 0.1 for p, v in cvs.items()}
  _run(tmp_path / "cvs", cvs, [_stage(1, NAMES, 30.0)])
  _run(tmp_path / "mcvs", mcvs, [_stage(1, NAMES[:2], 10.0), _stage(2, NAMES, 12.5)])
  text, summary = mcvs_compare.compare(tmp_path / "mcvs", tmp_path / "cvs")
  assert summary["cvs_map50"] == pytest.approx(sum(cvs.values()) / 6)
  assert summary["mcvs_map50"] == pytest.approx(sum(cvs.values()) / 6 - 0.1)
  assert summary["mcvs_over_cvs"] == pytest.approx((sum(cvs.values()) / 6 - 0.1) / (sum(cvs.values()) / 6))
  assert summary["chance_map50"] == pytest.approx(0.1) and summary["cvs_mrr"] == pytest.approx(summary["cvs_map50"] / 2)
  # Row 'image': its two cells and their mean, CVS then M-CVS.
  row = next(line for line in text.splitlines() if line.startswith("| image |"))
  image_cells = [cvs[("image", "text")], cvs[("image", "audio")]]
  assert f"{image_cells[0]:.3f} / {image_cells[0] - 0.1:.3f}" in row
  assert row.endswith(f"| {sum(image_cells) / 2:.3f} / {sum(image_cells) / 2 - 0.1:.3f} |")
  assert "| M-CVS | 2 | image, text, audio | 2,000 | 12.50 |" in text and "| CVS | 1 | image, text, audio | 1,000 | 30.00 |" in text
