"""`mmvae sweep`: train and analyse a grid of configs x seeds, in parallel and resumably, into results.md/json.

A sweep file (experiments/sweeps/NAME.py) defines `get_sweep()` -> {'rows': [{'name', 'config', 'overrides'}],
'seeds': [...], 'metrics': optional [key or (key, title)], 'select': optional key, [keys] or {'keys', 'title'}}.
Every run (row x seed) trains and is analysed in its own subprocess (`python -m mmvae.sweep WORKDIR`) into
OUT/runs/<row slug>/seed<s>/, with its output in sweep.log there: on the sweep's split into WORKDIR/report/ and
on the dataset's validation split into WORKDIR/report-validation/. The table's selected row is the one with the
best mean validation score ('select'); the analysed (test) split never takes part in choosing it. A run whose
sweep_done.json matches what the sweep asks for now is not rerun. OUT holds one
sweep: OUT/sweep.json marks its results.md/json as this sweep's; a results.md the sweep did not write, or another
sweep's, is refused, and the rows and seeds of earlier invocations (other --rows, --seeds) stay in the table.
"""

import concurrent.futures
import dataclasses
import datetime
import functools
import hashlib
import json
import os
import pathlib
import re
import signal
import subprocess
import sys
import threading
import time

from mmvae import config as config_lib
from mmvae import files
from mmvae.analysis import sweep_table

SWEEP_DIR = config_lib.EXPERIMENTS_DIR / "sweeps"
JOB, DONE, LOG = "sweep_job.json", "sweep_done.json", "sweep.log"
REPORT, VALIDATION_REPORT = "report", "report-validation"  # WORKDIR/<this>/metrics.json: the split's, validation's
VALIDATION = sweep_table.VALIDATION
# sweep_done.json 'validation': what became of the validation analysis
VALIDATED, NO_VALIDATION = "analysed", "no validation split"
# XLA's multi-threaded Eigen kernels on every worker would oversubscribe the cores; XLA aborts on a flag it
# does not know, so it is probed once before use (accepted by jaxlib 0.10.2).
XLA_THREAD_FLAG = "--xla_cpu_multi_thread_eigen=false"


def available() -> list[str]:
  """Names of the built-in sweeps."""
  return sorted(p.stem for p in SWEEP_DIR.glob("*.py") if p.stem != "__init__")


def resolve(spec: str) -> pathlib.Path:
  """'voxceleb1' or 'path/to/sweep.py' -> the sweep file."""
  path = pathlib.Path(spec)
  if path.suffix != ".py":
    path = SWEEP_DIR / f"{spec}.py"
  if not path.is_file():
    raise FileNotFoundError(f"sweep {spec!r} not found (looked for {path}); use a file path or one of: "
                            f"{', '.join(available())}")
  return path


def slug(name: str) -> str:
  """A row name as a folder name: 'Seed report recipe' -> 'seed-report-recipe'."""
  return re.sub(r"[^a-z0-9]+", "-", name.lower()).strip("-")


def load_sweep(spec: str) -> dict:
  """Runs the sweep file's get_sweep() and checks its rows, seeds and metrics."""
  path = resolve(spec)
  where = f"sweep {path}"
  sweep = config_lib.call_user_file(path, "sweep", "get_sweep")
  if not isinstance(sweep, dict) or set(sweep) - {"rows", "seeds", "metrics", "select", "description"}:
    raise ValueError(f"{where}: get_sweep() must return a dict with 'rows', 'seeds' and optionally 'metrics', "
                     f"'select', 'description' "
                     f"(got {sorted(sweep) if isinstance(sweep, dict) else type(sweep).__name__})")
  rows = sweep.get("rows")
  if not isinstance(rows, list) or not rows:
    raise ValueError(f"{where}: 'rows' must be a non-empty list of {{'name', 'config', 'overrides'}}")
  clean = []
  for i, row in enumerate(rows):
    if not isinstance(row, dict) or set(row) - {"name", "config", "overrides"} or not {"name", "config"} <= set(row):
      raise ValueError(f"{where}: row {i} must be a dict with 'name', 'config' and optionally 'overrides'")
    overrides = list(row.get("overrides", []))
    if not all(isinstance(o, str) for o in overrides) or not isinstance(row["config"], str):
      raise TypeError(f"{where}: row {row['name']!r}: 'config' and every override must be strings")
    if any(o.removeprefix("--").removeprefix("config.").startswith("train.seed=") for o in overrides):
      raise ValueError(f"{where}: row {row['name']!r} sets train.seed; the seeds come from the sweep's 'seeds'")
    name = str(row["name"])
    if not slug(name) or "," in name:
      raise ValueError(f"{where}: row name {name!r} needs a letter or digit and no comma")
    clean.append({"name": name, "slug": slug(name), "config": row["config"], "overrides": overrides})
  slugs = [r["slug"] for r in clean]
  if len(set(slugs)) != len(slugs):
    raise ValueError(f"{where}: two rows share a folder name: {sorted(s for s in slugs if slugs.count(s) > 1)}")
  cols = sweep_table.columns(sweep.get("metrics"))
  try:
    select = sweep_table.selection(sweep.get("select"), cols)
  except ValueError as e:
    raise ValueError(f"{where}: {e}") from None
  return {"path": str(path.absolute()), "rows": clean, "seeds": parse_seeds(sweep.get("seeds", [0]), where),
          "columns": cols, "select": select, "description": sweep.get("description", "")}


def parse_seeds(seeds, where: str = "--seeds") -> list[int]:
  """[0, 1, 2] or '0,1,2' -> [0, 1, 2]."""
  if isinstance(seeds, str):
    seeds = [s for s in seeds.split(",") if s.strip()]
  try:
    out = [int(s) for s in seeds]
  except (TypeError, ValueError):
    raise ValueError(f"{where}: seeds must be integers, got {seeds!r}") from None
  if not out or len(set(out)) != len(out):
    raise ValueError(f"{where}: seeds must be a non-empty list without repeats, got {seeds!r}")
  return out


def data_key(config) -> str:
  """A short hash of the config's data section: runs with equal keys share one prepared dataset."""
  text = json.dumps(config_lib.to_dict(config.data), sort_keys=True, default=list)
  return hashlib.sha256(text.encode()).hexdigest()[:10]


@dataclasses.dataclass
class Run:
  """One (row, seed): what to run, where, and how it went."""
  row: dict
  seed: int
  workdir: pathlib.Path
  config: object = None  # the ConfigDict; None when the row's config or overrides are bad
  data_dir: pathlib.Path | None = None
  status: str = "pending"  # pending | skipped (finished before) | done | failed | interrupted
  # | not run (listed by an earlier invocation, not asked for by this one)
  error: str = ""

  @property
  def overrides(self) -> list[str]:
    return self.row["overrides"] + [f"train.seed={self.seed}"]

  def job(self, split: str) -> dict:
    """Everything the run's result depends on; equal jobs mean the finished run can be reused."""
    return {"row": self.row["name"], "config": self.row["config"], "overrides": self.overrides,
            "seed": self.seed, "data_dir": str(self.data_dir), "split": split, "validation_split": VALIDATION,
            "config_dict": json.loads(json.dumps(config_lib.to_dict(self.config), default=list))}


def _error_line(e: Exception) -> str:
  msg = e.args[0] if isinstance(e, KeyError) and e.args else str(e)
  return f"{type(e).__name__}: {msg}"


def plan(sweep: dict, out: pathlib.Path, seeds: list[int]) -> list[Run]:
  """The runs, seed-major so that every row has a first result early; bad rows come back failed."""
  runs = []
  for seed in seeds:
    for row in sweep["rows"]:
      run = Run(row, seed, out / "runs" / row["slug"] / f"seed{seed}")
      try:
        run.config = config_lib.load(row["config"], run.overrides)
      except (FileNotFoundError, ValueError, KeyError, TypeError) as e:
        run.status, run.error = "failed", _error_line(e)
      runs.append(run)
  return runs


def is_finished(run: Run, split: str) -> bool:
  """True when the run finished train + analyze with exactly this job (config, seed, data, split), validation
  included (WORKDIR/report-validation/, unless the dataset has no validation split).

  A run finished before the validation analysis existed is not: rerun, its worker only analyses validation.
  """
  done = run.workdir / DONE
  if not (done.is_file() and (run.workdir / REPORT / "metrics.json").is_file()):
    return False
  try:
    record = json.loads(done.read_text())
    if record["job"] != run.job(split):
      return False
  except (ValueError, KeyError, TypeError):
    return False
  validation = record.get("validation")
  return validation == NO_VALIDATION or (validation == VALIDATED
                                         and (run.workdir / VALIDATION_REPORT / "metrics.json").is_file())


def has_split(data_dir, split: str) -> bool | None:
  """Whether the prepared dataset in data_dir has `split` (manifest 'splits'); None when it is not prepared yet."""
  try:
    manifest = json.loads((pathlib.Path(data_dir) / "manifest.json").read_text())
  except (OSError, ValueError):
    return None
  return split in (manifest.get("splits") or {})


def _prepare_data(runs: list[Run], root: pathlib.Path, out: pathlib.Path) -> None:
  """One prepared dataset per distinct data section under OUT/data/<key>/, reused when complete."""
  from data_prep import prepare
  by_key = {}
  for run in runs:
    by_key.setdefault(data_key(run.config), []).append(run)
  for key, group in by_key.items():
    data_dir = out / "data" / key
    if not (data_dir / "manifest.json").is_file():
      print(f"mmvae sweep: preparing {root} for rows {sorted({r.row['name'] for r in group})} -> {data_dir}",
            flush=True)
      try:
        prepare.prepare_voxceleb1(root, data_dir, config=group[0].config)
      except (FileNotFoundError, ValueError, KeyError, TypeError, OSError) as e:
        for run in group:
          run.status, run.error = "failed", f"preparing {data_dir}: {_error_line(e)}"


@functools.cache
def _xla_flag_accepted(flag: str) -> bool:
  env = dict(os.environ, XLA_FLAGS=flag, JAX_PLATFORMS="cpu")
  try:
    probe = subprocess.run([sys.executable, "-c", "import jax; jax.devices()"], env=env, capture_output=True,
                           timeout=300)
  except subprocess.TimeoutExpired:
    return False
  return probe.returncode == 0


def worker_env(parallel: int) -> dict:
  """The environment of a run's subprocess: this mmvae on the path, and thread limits when runs share cores."""
  env = dict(os.environ, PYTHONUNBUFFERED="1", TQDM_MININTERVAL="10")  # a readable sweep.log
  here = str(pathlib.Path(__file__).resolve().parents[1])
  env["PYTHONPATH"] = os.pathsep.join(p for p in (here, env.get("PYTHONPATH", "")) if p)
  if parallel > 1:
    threads = str(max(1, (os.cpu_count() or 1) // parallel))
    for name in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
      env.setdefault(name, threads)
    # Several processes on one accelerator: allocate as needed instead of 75% of its memory each.
    env.setdefault("XLA_PYTHON_CLIENT_PREALLOCATE", "false")
    flags = env.get("XLA_FLAGS", "")
    if XLA_THREAD_FLAG.split("=")[0] not in flags and _xla_flag_accepted(XLA_THREAD_FLAG):
      env["XLA_FLAGS"] = f"{flags} {XLA_THREAD_FLAG}".strip()
  return env


def _record(r: Run) -> dict:
  """What the table needs from one run: its status, and for a finished run its metrics and timings."""
  rec = {"seed": r.seed, "status": r.status, "error": r.error, "workdir": str(r.workdir),
         "log": str(r.workdir / LOG)}
  if r.status not in sweep_table.OK:
    return rec
  try:
    rec["metrics"] = json.loads((r.workdir / REPORT / "metrics.json").read_text())
    validation = r.workdir / VALIDATION_REPORT / "metrics.json"
    rec["validation_metrics"] = json.loads(validation.read_text()) if validation.is_file() else None
    final = json.loads((r.workdir / "final.json").read_text())
    done = json.loads((r.workdir / DONE).read_text())
  except (OSError, ValueError) as e:  # removed or cut short since the run finished
    return dict(rec, status="failed", error=f"reading its results: {_error_line(e)}")
  rate = final.get("samples_per_second")
  rec["timing"] = {"train_seconds": final.get("elapsed_seconds"), "samples_per_second": rate,
                   "step_ms": 1000.0 * r.config.train.batch_size / rate if rate else None,
                   "run_seconds": sum(done.get(k) or 0.0 for k in ("train_process_seconds", "analyze_seconds",
                                                                    "validation_analyze_seconds"))}
  return rec


def _write_results(runs: list[Run], context: dict) -> dict:
  rows = [{"row": row, "records": [_record(r) for r in runs if r.row is row]} for row in context["sweep"]["rows"]]
  info = {k: v for k, v in context.items() if k not in ("sweep", "out")}
  info.update(sweep=context["sweep"]["path"], description=context["sweep"]["description"],
              columns=context["sweep"]["columns"], select=context["sweep"]["select"])
  return sweep_table.write(context["out"], rows, info)


def _last_line(text: str) -> str:
  lines = [line.strip() for line in re.split(r"[\r\n]", text) if line.strip()]
  return lines[-1][:400] if lines else "no output"


def set_aside_if_changed(workdir: pathlib.Path, job: dict) -> pathlib.Path | None:
  """Moves a run folder planned with another config to WORKDIR.superseded-TIME (never deleted); returns it.

  A row whose definition changed must train from scratch: resuming its old checkpoints would mix two configs
  (and the trainer refuses it).
  """
  previous = workdir / JOB
  if not previous.is_file():
    return None
  try:
    old = json.loads(previous.read_text()).get("config_dict")
  except ValueError:
    old = None
  if old == job["config_dict"]:
    return None
  stamp = datetime.datetime.now().strftime("%Y%m%d-%H%M%S")
  aside = workdir.with_name(f"{workdir.name}.superseded-{stamp}")
  workdir.rename(aside)
  return aside


class _Launcher:
  """Runs jobs as subprocesses, at most `parallel` at once, and can stop them all (SIGTERM: they checkpoint)."""

  def __init__(self, parallel: int, split: str):
    self.parallel, self.split = parallel, split
    self.env = worker_env(parallel)
    self.procs, self.lock, self.stopping = set(), threading.Lock(), False

  def __call__(self, run: Run) -> Run:
    try:
      return self._launch(run)
    except OSError as e:  # e.g. a full disk: this run fails, the sweep goes on
      run.status, run.error = "failed", _error_line(e)
      return run

  def _launch(self, run: Run) -> Run:
    job = run.job(self.split)
    set_aside_if_changed(run.workdir, job)
    run.workdir.mkdir(parents=True, exist_ok=True)
    files.write_json_atomic(run.workdir / JOB, job, indent=1)
    log_path = run.workdir / LOG
    with open(log_path, "a") as log:
      log.write(f"\n=== mmvae sweep: run {run.row['name']!r} seed {run.seed}, "
                f"{datetime.datetime.now().isoformat(timespec='seconds')} ===\n")
      log.flush()
      start = log.tell()
      with self.lock:
        if self.stopping:
          run.status = "interrupted"
          return run
        proc = subprocess.Popen([sys.executable, "-m", "mmvae.sweep", str(run.workdir)], stdout=log,
                                stderr=subprocess.STDOUT, env=self.env, start_new_session=True)
        self.procs.add(proc)
      rc = proc.wait()
      with self.lock:
        self.procs.discard(proc)
    if rc == 0 and is_finished(run, self.split):
      run.status = "done"
      return run
    with open(log_path, errors="replace") as log:
      log.seek(start)
      tail = _last_line(log.read()[-20000:])
    run.status = "interrupted" if self.stopping else "failed"
    run.error = tail if rc > 0 else f"killed by signal {signal.Signals(-rc).name}; last output: {tail}"
    return run

  def stop(self) -> None:
    with self.lock:
      self.stopping = True
      for proc in self.procs:
        proc.terminate()


def select_rows(sweep: dict, rows) -> None:
  """Keeps the rows named (or slugged) in `rows`, 'a,b' or a list; KeyError naming the rows there are."""
  wanted = [r.strip() for r in rows.split(",")] if isinstance(rows, str) else list(rows)
  known = {r["name"] for r in sweep["rows"]} | {r["slug"] for r in sweep["rows"]}
  missing = [w for w in wanted if w not in known]
  if missing:
    raise KeyError(f"no row {missing[0]!r} in {sweep['path']}; rows: {', '.join(r['name'] for r in sweep['rows'])}")
  sweep["rows"] = [r for r in sweep["rows"] if r["name"] in wanted or r["slug"] in wanted]


def _assign_data(runs: list[Run], out: pathlib.Path, data, root) -> None:
  """Every run's dataset: the one --data folder, or OUT/data/<key of its data section> with --root."""
  if data is not None and not (data / "manifest.json").is_file():
    raise FileNotFoundError(f"{data / 'manifest.json'} not found: --data must be a prepared dataset (mmvae prep)")
  if root is not None and not root.is_dir():
    raise FileNotFoundError(f"--root {root} is not a folder (a raw VoxCeleb1 corpus)")
  for r in runs:
    r.data_dir = data if data is not None else out / "data" / data_key(r.config)


def _earlier_runs(earlier, every_row: list[dict], runs: list[Run], out: pathlib.Path, data, root,
                  split: str) -> list[Run]:
  """The runs an earlier invocation's table listed that this one does not run (other --rows or --seeds).

  They stay in the table: finished ones (for this split and data) with their results, the others with their
  earlier failure or as 'not run'. Rows since removed from the sweep file leave the table.
  """
  if not earlier:
    return []
  planned = {(r.row["name"], r.seed) for r in runs}
  by_name = {row["name"]: row for row in every_row}
  kept = []
  for old_row in earlier.get("rows", []):
    row = by_name.get(old_row.get("name"))
    for old in old_row.get("runs", []) if row is not None else ():
      if (row["name"], old.get("seed")) in planned or not isinstance(old.get("seed"), int):
        continue
      planned.add((row["name"], old["seed"]))
      run = plan({"rows": [row]}, out, [old["seed"]])[0]
      if run.status == "pending":
        _assign_data([run], out, data, root)
        if is_finished(run, split):
          run.status = "skipped"
        elif old.get("status") in ("failed", "interrupted"):
          run.status, run.error = old["status"], old.get("error", "")
        else:
          run.status = "not run"
      kept.append(run)
  return kept


def _execute(runs: list[Run], todo: list[Run], parallel: int, split: str, context: dict) -> bool:
  """Runs `todo` with a progress bar, rewriting the results after each; False when interrupted (Ctrl-C, SIGTERM)."""
  from mmvae import progress
  failed = sum(r.status == "failed" for r in runs)
  bar = progress.bar(total=len(runs), initial=len(runs) - len(todo), desc="sweep", unit="run", dynamic_ncols=True)
  bar.set_postfix(failed=failed, skipped=sum(r.status == "skipped" for r in runs))
  launcher = _Launcher(min(parallel, max(1, len(todo))), split)
  main_thread = threading.current_thread() is threading.main_thread()
  previous = signal.getsignal(signal.SIGTERM) if main_thread else None
  if main_thread:  # SIGTERM stops the runs cleanly (each saves a checkpoint), like Ctrl-C
    signal.signal(signal.SIGTERM, signal.default_int_handler)
  pool = concurrent.futures.ThreadPoolExecutor(launcher.parallel)
  try:
    for future in concurrent.futures.as_completed([pool.submit(launcher, r) for r in todo]):
      finished = future.result()
      failed += finished.status == "failed"
      bar.update(1)
      bar.set_postfix(failed=failed, last=f"{finished.row['slug']}/seed{finished.seed}")
      _write_results(runs, context)
    return True
  except KeyboardInterrupt:
    launcher.stop()
    for r in todo:
      r.status = "interrupted" if r.status == "pending" else r.status
    return False
  finally:
    pool.shutdown(wait=True, cancel_futures=True)
    if main_thread:
      signal.signal(signal.SIGTERM, previous)
    bar.close()


def _say_if_no_validation(runs: list[Run]) -> None:
  """Says once that the rows cannot be selected when a run's prepared dataset has no validation split."""
  lacking = sorted({str(r.data_dir) for r in runs
                    if r.status != "failed" and has_split(r.data_dir, VALIDATION) is False})
  if lacking:
    print(f"mmvae sweep: {', '.join(lacking)} has no '{VALIDATION}' split: its runs are analysed on the "
          "chosen split only and cannot be selected (the table chooses its row on validation only)", flush=True)


def run(spec: str, out, data=None, root=None, parallel: int = 0, seeds=None, rows=None, split: str = "test",
        command: str = "") -> dict:
  """Runs (or resumes) the sweep `spec` into OUT; returns results.json's contents. Failed runs do not stop it."""
  if (data is None) == (root is None):
    raise ValueError("give exactly one of --data (a prepared dataset) or --root (a raw VoxCeleb1 corpus)")
  if parallel < 0:
    raise ValueError(f"--parallel {parallel} must be >= 1 (or 0: half the cores)")
  sweep = load_sweep(spec)
  every_row = list(sweep["rows"])
  if rows:
    select_rows(sweep, rows)
  seeds = parse_seeds(seeds) if seeds is not None else sweep["seeds"]
  out = pathlib.Path(out).absolute()
  earlier = sweep_table.previous(out, sweep["path"])  # refuses a results.md that is not this sweep's
  data = pathlib.Path(data).absolute() if data is not None else None
  root = pathlib.Path(root).absolute() if root is not None else None
  runs = plan(sweep, out, seeds)
  live = [r for r in runs if r.status == "pending"]
  _assign_data(live, out, data, root)
  for r in live:
    r.status = "skipped" if is_finished(r, split) else r.status
  todo = [r for r in live if r.status == "pending"]
  if root is not None and todo:
    _prepare_data(todo, root, out)
    todo = [r for r in todo if r.status == "pending"]
  _say_if_no_validation(live)
  kept = _earlier_runs(earlier, every_row, runs, out, data, root, split)
  runs += kept
  shown = [row for row in every_row if any(r.row is row for r in runs)]
  context = {"sweep": dict(sweep, rows=shown), "command": command, "split": split, "out": out,
             "seeds": seeds + sorted({r.seed for r in kept} - set(seeds)),
             "data": str(data) if data else None, "root": str(root) if root else None}
  _write_results(runs, context)
  completed = _execute(runs, todo, parallel or max(1, (os.cpu_count() or 1) // 2), split, context) if todo else True
  results = _write_results(runs, context)
  if not completed:
    print(f"mmvae sweep: interrupted; the running runs saved a checkpoint. Rerun the same command to continue "
          f"({out / 'results.md'} holds what finished)", flush=True)
    raise SystemExit(130)
  counts = {s: sum(r.status == s for r in runs) for s in ("done", "skipped", "failed")}
  print(f"mmvae sweep: {len(runs)} runs ({counts['done']} trained, {counts['skipped']} finished before, "
        f"{counts['failed']} failed) -> {out / 'results.md'}", flush=True)
  return results


def _previous_done(workdir: pathlib.Path) -> dict:
  """WORKDIR/sweep_done.json of an earlier finish, or {}."""
  try:
    done = json.loads((workdir / DONE).read_text())
  except (OSError, ValueError):
    return {}
  return done if isinstance(done, dict) and isinstance(done.get("job"), dict) else {}


def _training_part(job: dict) -> dict:
  """What a run's training depends on: its job without the analysed splits."""
  return {k: v for k, v in job.items() if k not in ("split", "validation_split")}


def _worker(workdir: pathlib.Path) -> None:
  """One run in this process: train (or resume), analyse the split and validation, then mark it finished.

  What an earlier finish of the same training already made is kept: a run finished before the validation
  analysis existed (or analysed on another split) only runs the analysis it lacks.
  """
  job = json.loads((workdir / JOB).read_text())
  config = config_lib.load(job["config"], job["overrides"])
  if json.loads(json.dumps(config_lib.to_dict(config), default=list)) != job["config_dict"]:
    raise ValueError(f"config {job['config']!r} changed since the sweep planned {workdir}; rerun the sweep")
  from mmvae.analysis import report
  from mmvae.train import entry
  prev = _previous_done(workdir)
  trained = bool(prev) and _training_part(prev["job"]) == _training_part(job) and (workdir / "final.json").is_file()
  done = {"job": job}
  if trained:
    print(f"mmvae sweep: {workdir} finished training before; keeping it", flush=True)
    done["train_process_seconds"] = prev.get("train_process_seconds", 0.0)
  else:
    t0 = time.perf_counter()
    entry.train(config, job["data_dir"], workdir)
    done["train_process_seconds"] = time.perf_counter() - t0
  if trained and prev["job"].get("split") == job["split"] and (workdir / REPORT / "metrics.json").is_file():
    print(f"mmvae sweep: keeping {workdir / REPORT} (split {job['split']!r})", flush=True)
    done["analyze_seconds"] = prev.get("analyze_seconds", 0.0)
  else:
    t0 = time.perf_counter()
    report.analyze(workdir, data_dir=job["data_dir"], split=job["split"], report_dir=workdir / REPORT)
    done["analyze_seconds"] = time.perf_counter() - t0
  if not has_split(job["data_dir"], job["validation_split"]):
    print(f"mmvae sweep: {job['data_dir']} has no {job['validation_split']!r} split: not analysed on it, so this "
          "run cannot take part in selecting a row", flush=True)
    done["validation"], done["validation_analyze_seconds"] = NO_VALIDATION, 0.0
  elif (trained and prev.get("validation") == VALIDATED
        and prev["job"].get("validation_split") == job["validation_split"]
        and (workdir / VALIDATION_REPORT / "metrics.json").is_file()):
    print(f"mmvae sweep: keeping {workdir / VALIDATION_REPORT}", flush=True)
    done["validation"] = VALIDATED
    done["validation_analyze_seconds"] = prev.get("validation_analyze_seconds", 0.0)
  else:
    t0 = time.perf_counter()
    report.analyze(workdir, data_dir=job["data_dir"], split=job["validation_split"],
                   report_dir=workdir / VALIDATION_REPORT)
    done["validation"], done["validation_analyze_seconds"] = VALIDATED, time.perf_counter() - t0
  done["finished"] = datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")
  files.write_json_atomic(workdir / DONE, done, indent=1)


if __name__ == "__main__":  # python -m mmvae.sweep WORKDIR: the job in WORKDIR/sweep_job.json
  _worker(pathlib.Path(sys.argv[1]))
