"""CVS against M-CVS side by side: the paper's mAP@50 tables, their averages and the time per iteration per stage.

  python experiments/mcvs_compare.py --mcvs runs/mcvs --cvs runs/cvs [--out runs/mcvs_vs_cvs.md]

Both workdirs must be trained (mmvae train --config mcvs [--config.model.plan=joint]) and analysed
(mmvae analyze --workdir ...). mAP@50 is the paper's (map_top@50: AP over the top 50 divided by the
relevant items among them); the tables are laid out like the paper's Tables III and IV (query rows,
retrieved columns, row and overall averages), with the chance level. The time per iteration comes from
each run's stages.json (the trainer's steady-state rate); benchmarks/mcvs_stages.py measures the bare
step of M-CVS stage k against CVS on k modalities (the paper's Fig. 3).
"""

import argparse
import json
import pathlib

from mmvae.analysis import markdown

KEY = "map_top@50"


def _load(workdir: pathlib.Path) -> tuple[dict, list[str], list[dict]]:
  metrics_file = workdir / "report" / "metrics.json"
  if not metrics_file.is_file():
    raise SystemExit(f"{metrics_file} not found: run `mmvae analyze --workdir {workdir}` first")
  metrics = json.loads(metrics_file.read_text())
  stages = json.loads((workdir / "stages.json").read_text()) if (workdir / "stages.json").is_file() else []
  names = stages[-1]["modalities"] if stages else sorted(
      {k.split(".")[1].split("_to_")[0] for k in metrics if k.startswith("retrieval.") and "_to_" in k})
  return metrics, names, stages


def _cell(v: float) -> str:
  return "–" if v != v else f"{v:.3f}"


def compare(mcvs_dir, cvs_dir) -> tuple[str, dict]:
  """(markdown, summary numbers) of the two runs."""
  runs = {"M-CVS": _load(pathlib.Path(mcvs_dir)), "CVS": _load(pathlib.Path(cvs_dir))}
  names = runs["M-CVS"][1]
  if sorted(runs["CVS"][1]) != sorted(names):
    raise SystemExit(f"the runs have different modalities: {names} vs {runs['CVS'][1]}")
  tables = {r: markdown.pair_table(m, names, KEY) for r, (m, _, _) in runs.items()}
  chance = markdown.pair_table(runs["CVS"][0], names, KEY + "_chance")[2]
  mrr = {r: markdown.pair_table(m, names, "mrr")[2] for r, (m, _, _) in runs.items()}
  lines = [f"# CVS vs M-CVS: mAP@50 (query rows, retrieved columns; chance {chance:.3f})", "",
           "| query \\ retrieved | " + " | ".join(f"{g} CVS / M-CVS" for g in names) + " | Average CVS / M-CVS |",
           "|---|" + "---|" * (len(names) + 1)]
  for i, q in enumerate(names):
    cells = [f"{_cell(tables['CVS'][0][i][j])} / {_cell(tables['M-CVS'][0][i][j])}" for j in range(len(names))]
    lines.append(f"| {q} | " + " | ".join(cells) + f" | {_cell(tables['CVS'][1][i])} / {_cell(tables['M-CVS'][1][i])} |")
  summary = {"cvs_map50": tables["CVS"][2], "mcvs_map50": tables["M-CVS"][2], "chance_map50": chance,
             "mcvs_over_cvs": tables["M-CVS"][2] / tables["CVS"][2], "cvs_mrr": mrr["CVS"], "mcvs_mrr": mrr["M-CVS"]}
  lines += ["", f"Average over all {len(names) * (len(names) - 1)} ordered pairs: CVS {summary['cvs_map50']:.3f}, "
            f"M-CVS {summary['mcvs_map50']:.3f} ({100 * summary['mcvs_over_cvs']:.1f}% of CVS); mean MRR CVS "
            f"{mrr['CVS']:.3f}, M-CVS {mrr['M-CVS']:.3f}.", "", "## Time per iteration (trainer, steady state)", "",
            "| run | stage | modalities | trainable parameters | ms / iteration |", "|---|---:|---|---:|---:|"]
  for r, (_, _, stages) in runs.items():
    lines += [f"| {r} | {s['stage']} | {', '.join(s['modalities'])} | {s['trainable_params']:,} | "
              f"{1e3 * s['seconds_per_iteration']:.2f} |" for s in stages]
  return "\n".join(lines) + "\n", summary


def main(argv=None):
  p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  p.add_argument("--mcvs", required=True, help="the stage-wise run's workdir (trained and analysed)")
  p.add_argument("--cvs", required=True, help="the joint run's workdir (trained and analysed)")
  p.add_argument("--out", default=None, help="also write the markdown here")
  args = p.parse_args(argv)
  text, _ = compare(args.mcvs, args.cvs)
  print(text)
  if args.out:
    pathlib.Path(args.out).write_text(text)


if __name__ == "__main__":
  main()
