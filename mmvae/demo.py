"""`mmvae demo`: generate -> prepare -> train -> analyze on the built-in synthetic corpus."""

import itertools
import json
import pathlib
import time
from typing import Sequence

from mmvae import config as config_lib


def _line(metrics: dict, key: str, label: str) -> str:
  value, chance = metrics.get(key), metrics.get(f"{key}_chance")
  if value is None:
    return f"  {label:<34} (not computed)"
  ratio = f"  ({value / chance:.1f}x chance {chance:.3f})" if chance else ""
  return f"  {label:<34} {value:.3f}{ratio}"


def summary(metrics: dict, report_dir: pathlib.Path, seconds: float) -> str:
  """The few numbers a newcomer should look at, each beside its chance level."""
  from mmvae.analysis import markdown
  names = list(metrics.get("modalities") or ())
  display = markdown.display_labels(names)
  lines = [f"mmvae demo finished in {seconds / 60:.1f} min. Report: {report_dir / 'report.md'}"]
  pairs = list(itertools.permutations(names, 2))
  for q, g in pairs:
    lines.append(_line(metrics, f"retrieval.{q}_to_{g}.mrr", f"{display[q]} -> {display[g]} MRR"))
  for q, g in pairs:
    lines.append(_line(metrics, f"coherence.{q}_to_{g}.accuracy", f"{display[g]} from {display[q]}: coherence"))
  if "coherence.joint.accuracy" in metrics:
    lines.append(_line(metrics, "coherence.joint.accuracy", "joint coherence (prior samples)"))
  return "\n".join(lines)


def run(workdir: str, config: str = "synthetic", identities: int = 24, seed: int = 0,
        overrides: Sequence[str] = ()) -> dict:
  """Runs every stage into WORKDIR/{data,run}; rerunning resumes where the last run stopped."""
  from data_prep import prepare
  from mmvae.analysis import report
  from mmvae.train import entry

  start = time.time()
  root = pathlib.Path(workdir)
  data_dir, run_dir = root / "data", root / "run"
  cfg = config_lib.load(config, overrides)
  print(f"[1/3] synthetic corpus with {identities} identities -> {data_dir}", flush=True)
  if (data_dir / "manifest.json").is_file():
    print("      already prepared; reusing it", flush=True)
  else:
    prepare.prepare_synthetic(str(data_dir), identities=identities, seed=seed, split="closed", config=cfg)
  print(f"[2/3] training {cfg.name} for {cfg.train.num_steps} steps -> {run_dir}", flush=True)
  entry.train(cfg, str(data_dir), str(run_dir))
  print(f"[3/3] analysis of the test split -> {run_dir / 'report'}", flush=True)
  metrics = report.analyze(str(run_dir), data_dir=str(data_dir), split="test")
  text = summary(metrics, run_dir / "report", time.time() - start)
  print(text, flush=True)
  (root / "summary.json").write_text(json.dumps(
      {"seconds": time.time() - start, "report": str(run_dir / "report" / "report.md"),
       **{k: v for k, v in metrics.items() if k.startswith(("retrieval.", "coherence."))}}, indent=1))
  return metrics
