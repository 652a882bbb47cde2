"""A sweep's table: per row and metric, mean ± std over seeds beside its chance level -> results.json and .md."""

import datetime
import fnmatch
import itertools
import json
import math
import pathlib

import numpy as np

from mmvae import files

# A column key may hold {q} and {g}: one column per ordered pair of distinct modalities of the finished runs
# (metrics.json 'modalities'; titles show display labels), or '*': one column per metrics.json key it matches.
DEFAULT_COLUMNS = [
    ("retrieval.{q}_to_{g}.mrr", "{q}->{g} MRR"),
    ("coherence.{q}_to_{g}.accuracy", "{q}->{g} coherence"),
    ("coherence.joint.accuracy", "joint coherence"),
    ("likelihood.iwae_k*", "log p(x) (nats, K=*)"),
]
TIMING = [("train_seconds", "train (s)", 1), ("step_ms", "step (ms)", 2)]
OK = ("done", "skipped")  # statuses of runs whose report exists
# Beside results.md/json: says that the sweep wrote them, and which sweep, so a user's own results.md is never
# overwritten and one folder never mixes two sweeps' tables.
MARKER = "sweep.json"
STD_NOTE = "sample standard deviation over seeds (ddof=1); null with fewer than two finished runs"


def columns(metrics=None) -> list[dict]:
  """The metric columns: a sweep's 'metrics' (keys, or (key, title) pairs) or DEFAULT_COLUMNS."""
  titles = dict(DEFAULT_COLUMNS)
  items = DEFAULT_COLUMNS if metrics is None else metrics
  if not isinstance(items, (list, tuple)) or not items:
    raise ValueError(f"a sweep's 'metrics' must be a non-empty list of metrics.json keys, got {metrics!r}")
  out = []
  for item in items:
    pair = (item, titles.get(item, item)) if isinstance(item, str) else item
    if not (isinstance(pair, (list, tuple)) and len(pair) == 2 and all(isinstance(x, str) for x in pair)):
      raise TypeError(f"a sweep metric must be a metrics.json key or a (key, title) pair, got {item!r}")
    key, title = pair
    out.append({"key": key, "title": title})
  return out


def expand(cols: list[dict], metrics: list[dict]) -> list[dict]:
  """Columns with {q}/{g} and '*' patterns replaced by the keys they stand for in these runs' metrics."""
  from mmvae.analysis import markdown
  names = []
  for m in metrics:
    names += [n for n in m.get("modalities") or () if n not in names]
  display = markdown.display_labels(names)
  keys = sorted({k for m in metrics for k in m if not k.endswith("_chance")})
  out = []
  for col in cols:
    key, title = col["key"], col["title"]
    if "{q}" in key or "{g}" in key:
      out += [{"key": key.format(q=q, g=g), "title": title.format(q=display[q], g=display[g])}
              for q, g in itertools.permutations(names, 2)]
    elif "*" in key:
      head, tail = key.split("*", 1)
      out += [{"key": k, "title": title.replace("*", k[len(head):len(k) - len(tail)])}
              for k in keys if fnmatch.fnmatchcase(k, key)]
    else:
      out.append(col)
  return out


def summary(values, seeds=None) -> dict:
  """Mean, sample std, n and the values over the finite ones (with the seeds they came from)."""
  seeds = list(range(len(values))) if seeds is None else list(seeds)
  kept = [(s, float(v)) for s, v in zip(seeds, values)
          if isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)]
  vals = [v for _, v in kept]
  return {"mean": float(np.mean(vals)) if vals else None,
          "std": float(np.std(vals, ddof=1)) if len(vals) > 1 else None,
          "n": len(vals), "values": vals, "seeds": [s for s, _ in kept]}


def aggregate_row(row: dict, records: list[dict], cols: list[dict]) -> dict:
  """One row of results.json from its runs' records (seed, status, error, workdir, metrics, timing)."""
  ok = [r for r in records if r["status"] in OK]
  seeds = [r["seed"] for r in ok]
  metrics = {}
  for col in cols:
    key = col["key"]
    chance = summary([r["metrics"].get(f"{key}_chance") for r in ok], seeds)
    metrics[key] = {**summary([r["metrics"].get(key) for r in ok], seeds), "chance": chance["mean"],
                    "chance_values": chance["values"]}
  timing = {k: summary([r.get("timing", {}).get(k) for r in ok], seeds)
            for k in ("train_seconds", "step_ms", "samples_per_second", "run_seconds")}
  runs = [{k: v for k, v in r.items() if k != "metrics"} for r in records]
  return {"name": row["name"], "slug": row["slug"], "config": row["config"], "overrides": row["overrides"],
          "seeds": [r["seed"] for r in records], "finished": len(ok),
          "failed": sum(r["status"] == "failed" for r in records), "metrics": metrics, "timing": timing,
          "runs": runs}


def _num(v, digits: int = 3) -> str:
  return "—" if v is None else f"{v:.{digits}f}"


def _cell(s: dict, digits: int = 3) -> str:
  if not s["n"]:
    return "—"
  return _num(s["mean"], digits) + ("" if s["std"] is None else f" ± {_num(s['std'], digits)}")


def _esc(text: str) -> str:
  return str(text).replace("|", "\\|").replace("\n", " ")


def _status(row: dict) -> str:
  failed = [r for r in row["runs"] if r["status"] == "failed"]
  if failed:
    return _esc(f"failed {len(failed)}/{len(row['runs'])}: seed {failed[-1]['seed']}: {failed[-1]['error']}")
  waiting = [r["status"] for r in row["runs"] if r["status"] not in OK]
  return ", ".join(sorted(set(waiting))) if waiting else "ok"


def _chance_cell(rows: list[dict], key: str) -> str:
  values = [r["metrics"][key]["chance"] for r in rows if r["metrics"][key]["chance"] is not None]
  if not values:
    return "—"
  lo, hi = min(values), max(values)
  return _num(float(np.mean(values))) if hi - lo < 5e-4 else f"{_num(lo)}–{_num(hi)}"


def markdown(results: dict) -> str:
  """results.md: one table line per row, a chance line, what each row is, and the failed runs."""
  cols, rows = results["columns"], results["rows"]
  lines = [f"# Sweep `{pathlib.Path(results['sweep']).stem}`", ""]
  if results.get("description"):
    lines += [results["description"], ""]
  source = f"prepared dataset `{results['data']}`" if results.get("data") else f"raw corpus `{results['root']}`"
  lines += [f"Made by `{results['command']}`" if results.get("command") else "", "",
            f"Split `{results['split']}` of the {source}; seeds {', '.join(map(str, results['seeds']))}. Each cell "
            "is the mean ± sample standard deviation (n − 1) over the seeds whose run finished (`runs`); "
            "the last line is the chance level (a range when it differs between rows).", ""]
  head = ["row", "runs"] + [c["title"] for c in cols] + [t for _, t, _ in TIMING] + ["status"]
  lines += ["| " + " | ".join(_esc(h) for h in head) + " |",
            "|---|---:|" + "---:|" * (len(cols) + len(TIMING)) + "---|"]
  for row in rows:
    cells = [_esc(row["name"]), f"{row['finished']}/{len(row['runs'])}"]
    cells += [_cell(row["metrics"][c["key"]]) for c in cols]
    cells += [_cell(row["timing"][k], d) for k, _, d in TIMING]
    lines.append("| " + " | ".join(cells + [_status(row)]) + " |")
  chance = ["*chance*", ""] + [_chance_cell(rows, c["key"]) for c in cols] + [""] * (len(TIMING) + 1)
  lines.append("| " + " | ".join(chance) + " |")
  lines += ["", "## Rows", ""]
  for row in rows:
    overrides = "".join(f" `--config.{o}`" for o in row["overrides"])
    lines.append(f"- **{row['name']}** (`runs/{row['slug']}/`): `{row['config']}`{overrides}")
  failed = [(row, r) for row in rows for r in row["runs"] if r["status"] == "failed"]
  if failed:
    lines += ["", "## Failed runs", ""]
    for row, r in failed:
      lines.append(f"- **{row['name']}**, seed {r['seed']}: {r['error']} (log: `{r.get('log', '')}`)")
  lines += ["", f"Train (s) is the training loop's wall time (final.json `elapsed_seconds`); step (ms) is "
            "batch size / samples per second after the first (compiling) step. Per-run reports: "
            "`runs/<row>/seed<s>/report/report.md`.", ""]
  return "\n".join(lines)


def _read_json(path: pathlib.Path) -> dict:
  try:
    value = json.loads(path.read_text())
  except (OSError, ValueError) as e:
    raise ValueError(f"{path} is unreadable ({type(e).__name__}: {e}); move it or choose another --out") from None
  if not isinstance(value, dict):
    raise ValueError(f"{path} was not written by mmvae sweep; move it or choose another --out")
  return value


def previous(out, sweep: str) -> dict | None:
  """The results.json an earlier run of `sweep` wrote into OUT, or None; ValueError if OUT's results are not its.

  Refused: a results.md or results.json that no sweep wrote (no MARKER beside it), and the results of another
  sweep file (a folder holds one sweep; its rows and seeds from earlier invocations are merged).
  """
  out = pathlib.Path(out)
  found = [out / n for n in ("results.md", "results.json") if (out / n).exists()]
  marker, results = out / MARKER, out / "results.json"
  owner = None
  if marker.exists():
    mark = _read_json(marker)
    if mark.get("written_by") != "mmvae sweep":  # someone's own sweep.json: not ours to overwrite
      raise ValueError(f"{marker} was not written by mmvae sweep; move it or choose another --out")
    owner = mark.get("sweep")
  old = _read_json(results) if results.is_file() else None
  if owner is None and old is not None and old.get("std") == STD_NOTE:
    owner = old.get("sweep")  # written before the marker existed: results.json itself says which sweep
  if owner is None:
    if found:
      raise ValueError(f"{found[0]} was not written by mmvae sweep (no {MARKER} beside it); move it or choose "
                       "another --out")
    return None
  if pathlib.Path(owner).absolute() != pathlib.Path(sweep).absolute():
    raise ValueError(f"{out} holds the results of another sweep ({owner}); a folder holds one sweep's table: "
                     "choose another --out")
  return old


def write(out, rows: list[dict], context: dict) -> dict:
  """Aggregates rows [{'row': row, 'records': [...]}] and writes OUT/results.json and OUT/results.md."""
  out = pathlib.Path(out)
  out.mkdir(parents=True, exist_ok=True)
  cols = expand(context["columns"], [r.get("metrics", {}) for row in rows for r in row["records"]])
  results = {**context, "columns": cols, "std": STD_NOTE,
             "updated": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
             "rows": [aggregate_row(r["row"], r["records"], cols) for r in rows]}
  files.write_json_atomic(out / MARKER, {"written_by": "mmvae sweep", "sweep": str(context.get("sweep")),
                                         "files": ["results.md", "results.json"]}, indent=1)
  files.write_json_atomic(out / "results.json", results, indent=1)
  files.write_atomic(out / "results.md", markdown(results))
  return results
