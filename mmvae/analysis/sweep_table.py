"""A sweep's table: per row and metric, mean ± std over seeds beside its chance level -> results.json and .md.

Each run is analysed on the sweep's split (WORKDIR/report/, normally test) and on the validation split
(WORKDIR/report-validation/). The row with the best mean validation score (the sweep's 'select') is the
selected one: it is chosen on validation alone, and its test columns are its held-out numbers.
"""

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
VALIDATION = "validation"  # the split a sweep chooses its row on


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


def selection(select=None, cols: list[dict] | None = None) -> dict:
  """A sweep's 'select' -> {'keys': [...], 'title': str, 'default': bool}; ValueError naming 'select' if bad.

  select: a metrics.json key, a list of keys (the score is their mean), or {'keys': key or [keys], 'title': ...}.
  A key may hold {q}/{g} or '*' like a column key (every key it stands for joins the mean); a leading '-' marks
  a lower-is-better key (a loss). Default (no 'select'): the first metric column, e.g. 'retrieval.{q}_to_{g}.mrr'
  (the mean MRR over every ordered pair of modalities, what training's select_by='cross_mrr' uses too).
  """
  cols = columns(None) if cols is None else cols
  if select is None:
    return {"keys": [cols[0]["key"]], "title": _plain(cols[0]["title"]), "default": True}
  where = "a sweep's 'select'"
  keys, title = select, None
  if isinstance(select, dict):
    if "keys" not in select or set(select) - {"keys", "title"}:
      raise ValueError(f"{where} as a dict takes 'keys' and optionally 'title', got {sorted(map(str, select))}")
    keys, title = select["keys"], select.get("title")
    if title is not None and (not isinstance(title, str) or not title.strip()):
      raise ValueError(f"{where}: 'title' must be a non-empty string, got {title!r}")
  keys = [keys] if isinstance(keys, str) else keys
  if not isinstance(keys, (list, tuple)) or not keys:
    raise ValueError(f"{where} must be a metrics.json key, a non-empty list of keys or {{'keys': [...], "
                     f"'title': ...}}, got {select!r}")
  for key in keys:
    if not isinstance(key, str):
      raise ValueError(f"{where}: {key!r} is not a metrics.json key (a string)")
    bare = key.removeprefix("-")
    if not bare or bare.startswith("-") or any(c.isspace() for c in key):
      raise ValueError(f"{where}: {key!r} is not a metrics.json key (no spaces; one leading '-' for "
                       "lower-is-better); a title goes in {'keys': [...], 'title': ...}")
    try:
      bare.format(q="q", g="g")
    except (KeyError, IndexError, ValueError):
      raise ValueError(f"{where}: {key!r} may hold only {{q}} and {{g}} as placeholders") from None
  if len(set(keys)) != len(keys):
    raise ValueError(f"{where} names a key twice: {list(keys)!r}")
  if title is None:
    titles = {c["key"]: c["title"] for c in cols} | dict(DEFAULT_COLUMNS)
    names = [("-" if k.startswith("-") else "") + _plain(titles.get(k.removeprefix("-"), k.removeprefix("-")))
             for k in keys]
    title = names[0] if len(names) == 1 else "mean of " + ", ".join(names)
  return {"keys": list(keys), "title": title, "default": False}


def _plain(title: str) -> str:
  """A column title with its {q}/{g} or '*' pattern said in words (for the selection score's default title)."""
  if "{q}" in title or "{g}" in title:
    return f"mean {title.format(q='q', g='g')} over every ordered pair of modalities q, g"
  return title.replace("*", "any") if "*" in title else title


def score_plan(select: dict, metrics: list[dict]) -> dict:
  """The selection keys expanded over these runs' validation metrics: {'terms': [(sign, key)], 'direction'}.

  direction +1: higher is better; -1 (every key has a '-'): the score is the plain mean, lower is better.
  """
  terms = []
  for key in select["keys"]:
    sign = -1.0 if key.startswith("-") else 1.0
    bare = key.removeprefix("-")
    for col in expand([{"key": bare, "title": bare}], metrics):
      if (sign, col["key"]) not in terms:
        terms.append((sign, col["key"]))
  direction = -1.0 if terms and all(sign < 0 for sign, _ in terms) else 1.0
  return {"terms": terms, "direction": direction}




def _finite(v) -> bool:
  return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def applies(key: str, modalities) -> bool:
  """Whether a metric key can be asked of a run of these modalities: a '<q>_to_<g>' pair key only when the run
  has both q and g (rows of one sweep may hold different modalities, e.g. GE2E vectors instead of MFCCs)."""
  parts = key.split(".")
  if modalities is None or len(parts) < 2 or "_to_" not in parts[1]:
    return True
  mods = set(modalities)
  return any(parts[1][:i] in mods and parts[1][i + 4:] in mods
             for i in range(len(parts[1])) if parts[1].startswith("_to_", i))


def score(metrics: dict | None, plan: dict, suffix: str = ""):
  """One run's selection score from its validation metrics.json: the mean of the selection keys that apply to its
  modalities (`applies`); None when one of those is missing or not finite, or none applies."""
  if not metrics or not plan["terms"]:
    return None
  terms = [(sign, key) for sign, key in plan["terms"] if applies(key, metrics.get("modalities"))]
  values = [metrics.get(key + suffix) for _, key in terms]
  if not terms or not all(_finite(v) for v in values):
    return None
  return float(np.mean([sign * plan["direction"] * v for (sign, _), v in zip(terms, values)]))


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


def aggregate_row(row: dict, records: list[dict], cols: list[dict], plan: dict | None = None) -> dict:
  """One row of results.json from its runs' records (seed, status, error, workdir, metrics, timing, and
  validation_metrics: the run's report-validation/metrics.json or None).

  plan (score_plan): adds 'validation': the selection score's and every column's mean ± std over seeds on the
  validation split, and per run its validation score and column values.
  """
  ok = [r for r in records if r["status"] in OK]
  seeds = [r["seed"] for r in ok]

  def column_stats(metric_dicts):
    out = {}
    for col in cols:
      key = col["key"]
      chance = summary([m.get(f"{key}_chance") for m in metric_dicts], seeds)
      out[key] = {**summary([m.get(key) for m in metric_dicts], seeds), "chance": chance["mean"],
                  "chance_values": chance["values"]}
    return out

  metrics = column_stats([r["metrics"] for r in ok])
  timing = {k: summary([r.get("timing", {}).get(k) for r in ok], seeds)
            for k in ("train_seconds", "step_ms", "samples_per_second", "run_seconds")}
  runs = [{k: v for k, v in r.items() if k not in ("metrics", "validation_metrics")} for r in records]
  out = {"name": row["name"], "slug": row["slug"], "config": row["config"], "overrides": row["overrides"],
         "seeds": [r["seed"] for r in records], "finished": len(ok),
         "failed": sum(r["status"] == "failed" for r in records), "metrics": metrics, "timing": timing,
         "runs": runs}
  if plan is not None:
    val = [r.get("validation_metrics") or {} for r in ok]
    chance = summary([score(m, plan, "_chance") for m in val], seeds)
    out["validation"] = {"score": {**summary([score(m, plan) for m in val], seeds), "chance": chance["mean"]},
                         "metrics": column_stats(val)}
    keys = [c["key"] for c in cols] + [k for _, k in plan["terms"] if k not in {c["key"] for c in cols}]
    for run, rec in zip(runs, records):
      vm = rec.get("validation_metrics") if rec["status"] in OK else None
      run["validation_score"] = score(vm, plan)
      run["validation_metrics"] = {k: vm.get(k) for k in keys} if vm else None
    # A candidate: every seed finished with a validation score (a row half done cannot be compared fairly).
    out["selectable"] = bool(records) and len(ok) == len(records) and out["validation"]["score"]["n"] == len(records)
    out["selected"] = False
  return out


def choose(rows: list[dict], plan: dict) -> str | None:
  """The selected row's name: the best mean validation score among the selectable rows (ties: the first)."""
  best = None
  for row in rows:
    if row.get("selectable"):
      value = plan["direction"] * row["validation"]["score"]["mean"]
      if best is None or value > best[0]:
        best = (value, row["name"])
  return best[1] if best else None


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
  return _range([r["metrics"][key]["chance"] for r in rows if r["metrics"][key]["chance"] is not None])


def _range(values: list[float]) -> str:
  if not values:
    return "—"
  lo, hi = min(values), max(values)
  return _num(float(np.mean(values))) if hi - lo < 5e-4 else f"{_num(lo)}–{_num(hi)}"


def _selection_note(results: dict, validated: bool) -> list[str]:
  """The sentences under the table: which row was selected, on what, and that the test split was not used."""
  sel, split, rows = results.get("selection") or {}, results["split"], results["rows"]
  keys = ", ".join(f"`{k}`" for k in sel.get("keys", results.get("select", [])))
  how = "lowest" if sel.get("direction", 1.0) < 0 else "highest"
  left_out = [r["name"] for r in rows if validated and "validation" in r and not r["selectable"]]
  lines = []
  if results.get("selected") is not None:
    lines.append(f"**Selected: {_esc(results['selected'])}**: the row with the {how} mean `val: score` (the "
                 f"mean over its seeds of {_esc(results.get('select_title', ''))}: {keys} on each run's "
                 f"`{VALIDATION}` split) among the rows whose seeds all finished. It was chosen on the "
                 f"`{VALIDATION}` split alone: the `{split}` split was not used to choose, so the selected row's "
                 f"`{split}:` columns are its held-out numbers.")
  else:
    lines.append(f"**No row is selected**: {sel.get('why', 'no row has validation results')}.")
  if left_out:
    lines.append("")
    lines.append(f"Rows not among the candidates (a seed not finished or without a validation score): "
                 f"{', '.join(_esc(n) for n in left_out)}.")
  if split == VALIDATION:
    lines.append("")
    lines.append(f"Warning: `--split {VALIDATION}` makes the `{split}:` columns the split the row was chosen on; "
                 "they are not held-out numbers (use `--split test`).")
  return lines


def markdown(results: dict) -> str:
  """results.md: one table line per row (validation block, then the analysed split's), a chance line, the
  selected row and how it was chosen, what each row is, and the failed runs."""
  cols, rows, split = results["columns"], results["rows"], results["split"]
  lines = [f"# Sweep `{pathlib.Path(results['sweep']).stem}`", ""]
  if results.get("description"):
    lines += [results["description"], ""]
  source = f"prepared dataset `{results['data']}`" if results.get("data") else f"raw corpus `{results['root']}`"
  validated = any(r.get("validation", {}).get("score", {}).get("n") or
                  any(m["n"] for m in r.get("validation", {}).get("metrics", {}).values()) for r in rows)
  block = (f"The `val:` columns are split `{VALIDATION}` (the row is chosen on `val: score`), the `{split}:` "
           f"columns split `{split}`," if validated else f"Split `{split}`")
  lines += [f"Made by `{results['command']}`" if results.get("command") else "", "",
            f"{block} of the {source}; seeds {', '.join(map(str, results['seeds']))}. Each cell "
            "is the mean ± sample standard deviation (n − 1) over the seeds whose run finished (`runs`); "
            "the last line is the chance level (a range when it differs between rows).", ""]
  val_cols = [{"key": None, "title": "score"}] + cols if validated else []
  head = (["row", "runs"] + (["selected"] if validated else []) + [f"val: {c['title']}" for c in val_cols]
          + [f"{split}: {c['title']}" if validated else c["title"] for c in cols] + [t for _, t, _ in TIMING]
          + ["status"])
  lines += ["| " + " | ".join(_esc(h) for h in head) + " |",
            "|---|---:|" + ("---|" if validated else "") + "---:|" * (len(val_cols) + len(cols) + len(TIMING))
            + "---|"]

  def val_cell(row, key):
    v = row.get("validation")
    if v is None:
      return "—"
    return _cell(v["score"]) if key is None else _cell(v["metrics"][key])

  for row in rows:
    chosen = row["name"] == results.get("selected")
    cells = [f"**{_esc(row['name'])}**" if chosen else _esc(row["name"]), f"{row['finished']}/{len(row['runs'])}"]
    if validated:
      cells += ["**selected**" if chosen else ""] + [val_cell(row, c["key"]) for c in val_cols]
    cells += [_cell(row["metrics"][c["key"]]) for c in cols]
    cells += [_cell(row["timing"][k], d) for k, _, d in TIMING]
    lines.append("| " + " | ".join(cells + [_status(row)]) + " |")
  chance = ["*chance*", ""] + ([""] if validated else [])
  if validated:
    score_chance = [r["validation"]["score"]["chance"] for r in rows if r.get("validation")]
    chance += [_range([v for v in score_chance if v is not None])]
    chance += [_range([r["validation"]["metrics"][c["key"]]["chance"] for r in rows if r.get("validation")
                       and r["validation"]["metrics"][c["key"]]["chance"] is not None]) for c in cols]
  chance += [_chance_cell(rows, c["key"]) for c in cols] + [""] * (len(TIMING) + 1)
  lines.append("| " + " | ".join(chance) + " |")
  lines += [""] + _selection_note(results, validated)
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
            f"`runs/<row>/seed<s>/report/report.md` (split `{split}`) and "
            f"`runs/<row>/seed<s>/report-validation/report.md` (split `{VALIDATION}`).", ""]
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
  """Aggregates rows [{'row': row, 'records': [...]}] and writes OUT/results.json and OUT/results.md.

  context['select'] (selection()'s dict; default: the first column) scores the rows on their records'
  validation_metrics; results.json gets 'select' (its keys), 'select_title', 'selection' and 'selected' (the
  chosen row's name, or null), and every row 'validation', 'selectable' and 'selected'.
  """
  out = pathlib.Path(out)
  out.mkdir(parents=True, exist_ok=True)
  records = [r for row in rows for r in row["records"]]
  val = [r["validation_metrics"] for r in records if r.get("validation_metrics")]
  cols = expand(context["columns"], [r.get("metrics", {}) for r in records] + val)
  select = context.get("select") or selection(None, context["columns"])
  plan = score_plan(select, val)
  table = [aggregate_row(r["row"], r["records"], cols, plan) for r in rows]
  chosen = choose(table, plan)
  if chosen is not None:
    why = None
  elif not val:
    why = (f"no finished run has `{VALIDATION}` results (report-validation/metrics.json): the dataset has no "
           f"`{VALIDATION}` split, or no run has finished")
  elif not plan["terms"]:
    why = f"no key of 'select' {select['keys']} is in the runs' `{VALIDATION}` metrics.json"
  else:
    why = "no row has all its seeds finished with a validation score"
  for row in table:
    row["selected"] = row["name"] == chosen
  results = {**context, "columns": cols, "std": STD_NOTE, "select": select["keys"], "select_title": select["title"],
             "selected": chosen,
             "selection": {"split": VALIDATION, "keys": [("-" if sign < 0 else "") + k for sign, k in plan["terms"]],
                           "direction": plan["direction"], "higher_is_better": plan["direction"] > 0,
                           "default": select.get("default", False), "why": why,
                           "rule": "the best mean validation score over a row's seeds, among the rows whose seeds "
                                   "all finished with one; the analysed split was not used to choose"},
             "updated": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
             "rows": table}
  files.write_json_atomic(out / MARKER, {"written_by": "mmvae sweep", "sweep": str(context.get("sweep")),
                                         "files": ["results.md", "results.json"]}, indent=1)
  files.write_json_atomic(out / "results.json", results, indent=1)
  files.write_atomic(out / "results.md", markdown(results))
  return results
