"""`mmvae sweep` chooses its row on validation: fabricated run folders (no training), checked by brute force."""

import json
import pathlib

import ml_collections
import numpy as np
import pytest

from mmvae import cli, sweep
from mmvae.analysis import sweep_table

A2F, F2A = "retrieval.audio_to_face.mrr", "retrieval.face_to_audio.mrr"
COLUMNS = [(A2F, "voice->face MRR"), (F2A, "face->voice MRR")]
SEEDS = [0, 1, 2]
# Per row and seed: (test a2f, test f2a, validation a2f, validation f2a). 'test best' wins on test and loses on
# validation; 'val best' the reverse; 'half done' has the best validation score but a failed seed; 'lopsided'
# has the best validation voice->face MRR alone, but not the best mean of both directions.
VALUES = {
    "test best": [(0.90, 0.88, 0.50, 0.52), (0.92, 0.86, 0.48, 0.55), (0.91, 0.90, 0.51, 0.50)],
    "val best": [(0.60, 0.62, 0.70, 0.72), (0.58, 0.61, 0.69, 0.74), (0.63, 0.60, 0.71, 0.70)],
    "half done": [(0.40, 0.41, 0.95, 0.96), None, (0.42, 0.40, 0.94, 0.97)],
    "lopsided": [(0.55, 0.50, 0.99, 0.20), (0.52, 0.51, 0.98, 0.25), (0.50, 0.49, 0.97, 0.22)],
}


def _metrics(a2f, f2a, chance):
  return {"modalities": ["audio", "face"], A2F: a2f, F2A: f2a, f"{A2F}_chance": chance, f"{F2A}_chance": chance,
          "loss.total": 10.0 - a2f}


def _fabricate(out: pathlib.Path, values=VALUES, validation=True) -> list:
  """Run folders as finished runs leave them (reports, final.json, sweep_done.json), and their Run objects."""
  config = ml_collections.ConfigDict({"train": {"batch_size": 8}})
  runs = []
  for seed_i, seed in enumerate(SEEDS):
    for name, per_seed in values.items():
      row = {"name": name, "slug": sweep.slug(name), "config": "synthetic:tiny", "overrides": []}
      run = sweep.Run(row, seed, out / "runs" / row["slug"] / f"seed{seed}", config=config)
      rows = [r for r in runs if r.row["name"] == name]
      run.row = rows[0].row if rows else row  # one row dict per row, as plan() gives
      v = per_seed[seed_i]
      if v is None:
        run.status, run.error = "failed", "RuntimeError: boom"
      else:
        run.status = "skipped"
        (run.workdir / "report").mkdir(parents=True)
        (run.workdir / "report" / "metrics.json").write_text(json.dumps(_metrics(v[0], v[1], 0.25)))
        if validation:
          (run.workdir / "report-validation").mkdir()
          (run.workdir / "report-validation" / "metrics.json").write_text(json.dumps(_metrics(v[2], v[3], 0.3)))
        (run.workdir / "final.json").write_text(json.dumps({"elapsed_seconds": 1.0, "samples_per_second": 80.0}))
        (run.workdir / sweep.DONE).write_text(json.dumps({"job": {}, "train_process_seconds": 1.0}))
      runs.append(run)
  return runs


def _context(out, select, runs):
  rows = list({id(r.row): r.row for r in runs}.values())
  spec = {"path": str(out / "grid.py"), "rows": rows, "description": "",
          "columns": sweep_table.columns(COLUMNS),
          "select": sweep_table.selection(select, sweep_table.columns(COLUMNS))}
  return {"sweep": spec, "command": "mmvae sweep ...", "split": "test", "out": out, "seeds": SEEDS,
          "data": "d", "root": None}


def _expected_choice(values, pick, lower=False):
  """Brute force: among rows with every seed finished, the best mean over seeds of pick(validation values)."""
  best = None
  for name, per_seed in values.items():
    if any(v is None for v in per_seed):
      continue
    total = 0.0
    for v in per_seed:
      total += pick(v)
    mean = total / len(per_seed)
    if best is None or (mean < best[0] if lower else mean > best[0]):
      best = (mean, name)
  return best[1]


def _table(md: str) -> list[list[str]]:
  return [[c.strip() for c in line.strip("|").split("|")] for line in md.splitlines() if line.startswith("| ")]


def test_the_validation_best_row_is_selected_and_its_test_numbers_shown(tmp_path):
  runs = _fabricate(tmp_path)
  select = [A2F, F2A]
  results = sweep._write_results(runs, _context(tmp_path, select, runs))
  expected = _expected_choice(VALUES, lambda v: (v[2] + v[3]) / 2)
  test_best = max(VALUES, key=lambda n: np.mean([(v[0] + v[1]) / 2 for v in VALUES[n] if v]))
  assert expected == "val best" and test_best == "test best"  # the fixture's point: they differ
  assert results["selected"] == expected and results["select"] == select
  assert [r["name"] for r in results["rows"] if r["selected"]] == [expected]
  assert [r["name"] for r in results["rows"] if not r["selectable"]] == ["half done"]
  rows = {r["name"]: r for r in results["rows"]}
  # Validation block and per-run values against the fabricated numbers.
  chosen = rows[expected]
  val_scores = [(v[2] + v[3]) / 2 for v in VALUES[expected]]
  assert chosen["validation"]["score"]["mean"] == pytest.approx(np.mean(val_scores), abs=1e-12)
  assert chosen["validation"]["score"]["std"] == pytest.approx(np.std(val_scores, ddof=1), abs=1e-12)
  assert chosen["validation"]["score"]["chance"] == pytest.approx(0.3)
  assert chosen["validation"]["metrics"][A2F]["values"] == [v[2] for v in VALUES[expected]]
  assert [r["validation_score"] for r in chosen["runs"]] == pytest.approx(val_scores)
  assert [r["validation_metrics"][F2A] for r in chosen["runs"]] == [v[3] for v in VALUES[expected]]
  assert chosen["metrics"][A2F]["values"] == [v[0] for v in VALUES[expected]]  # test numbers stay test numbers
  assert rows["half done"]["runs"][1]["validation_metrics"] is None

  md = (tmp_path / "results.md").read_text()
  table = _table(md)
  head = table[0]
  assert head[:3] == ["row", "runs", "selected"]
  assert head[3:6] == ["val: score", "val: voice->face MRR", "val: face->voice MRR"]
  assert head[6:8] == ["test: voice->face MRR", "test: face->voice MRR"]
  line = [cells for cells in table if cells[0] == f"**{expected}**"]
  assert len(line) == 1 and line[0][2] == "**selected**"
  for i, col in ((6, 0), (7, 1)):
    test_vals = np.array([v[col] for v in VALUES[expected]])
    assert line[0][i] == f"{test_vals.mean():.3f} ± {test_vals.std(ddof=1):.3f}"
  assert line[0][3] == f"{np.mean(val_scores):.3f} ± {np.std(val_scores, ddof=1):.3f}"
  assert sum(cells[2] == "**selected**" for cells in table) == 1
  assert table[-1][:6] == ["*chance*", "", "", "0.300", "0.300", "0.300"] and table[-1][6] == "0.250"
  assert f"**Selected: {expected}**" in md and "the `test` split was not used to choose" in md
  assert "Rows not among the candidates (a seed not finished or without a validation score): half done." in md


def test_one_key_and_lower_is_better(tmp_path):
  runs = _fabricate(tmp_path / "one")
  results = sweep._write_results(runs, _context(tmp_path / "one", A2F, runs))
  assert results["selected"] == _expected_choice(VALUES, lambda v: v[2]) == "lopsided"
  runs = _fabricate(tmp_path / "loss")
  results = sweep._write_results(runs, _context(tmp_path / "loss", "-loss.total", runs))
  # loss.total = 10 - a2f: the lowest validation loss is the highest validation a2f.
  assert results["selected"] == _expected_choice(VALUES, lambda v: 10.0 - v[2], lower=True) == "lopsided"
  assert results["selection"]["higher_is_better"] is False
  row = next(r for r in results["rows"] if r["selected"])
  assert row["validation"]["score"]["mean"] == pytest.approx(np.mean([10.0 - v[2] for v in VALUES["lopsided"]]))
  assert "the row with the lowest mean `val: score`" in (tmp_path / "loss" / "results.md").read_text()


def test_the_default_is_the_first_column_and_patterns_expand(tmp_path):
  runs = _fabricate(tmp_path / "default")
  context = _context(tmp_path / "default", None, runs)
  assert context["sweep"]["select"]["keys"] == [A2F]
  assert sweep._write_results(runs, context)["selected"] == "lopsided"
  runs = _fabricate(tmp_path / "pattern")
  results = sweep._write_results(runs, _context(tmp_path / "pattern", "retrieval.{q}_to_{g}.mrr", runs))
  assert results["selection"]["keys"] == [A2F, F2A] and results["selected"] == "val best"


def test_no_validation_split_selects_nothing_and_keeps_the_old_table(tmp_path):
  runs = _fabricate(tmp_path, validation=False)
  results = sweep._write_results(runs, _context(tmp_path, [A2F, F2A], runs))
  assert results["selected"] is None and not any(r["selected"] for r in results["rows"])
  md = (tmp_path / "results.md").read_text()
  assert _table(md)[0][:4] == ["row", "runs", "voice->face MRR", "face->voice MRR"]
  assert "**No row is selected**" in md and "no `validation` split" in md and "**selected**" not in md


def test_a_selection_key_in_no_run_is_said(tmp_path):
  runs = _fabricate(tmp_path)
  results = sweep._write_results(runs, _context(tmp_path, "retrieval.no_such.mrr", runs))
  assert results["selected"] is None
  assert "no row has all its seeds finished with a validation score" in (tmp_path / "results.md").read_text()
  results = sweep._write_results(runs, _context(tmp_path, "no.such.*", runs))
  assert results["selected"] is None and "is in the runs' `validation` metrics.json" in results["selection"]["why"]


SWEEP = "def get_sweep():\n  return {{'rows': [{{'name': 'a', 'config': 'synthetic:tiny'}}], 'select': {select}}}\n"


@pytest.mark.parametrize("select, match", [
    ("[]", "'select' must be a metrics.json key, a non-empty list"),
    ("3", "'select' must be a metrics.json key"),
    ("['retrieval.a.mrr', 3]", "3 is not a metrics.json key"),
    ("('retrieval.a.mrr', 'voice->face MRR')", "'voice->face MRR' is not a metrics.json key (no spaces"),
    ("'--loss'", "'--loss' is not a metrics.json key"),
    ("'-'", "'-' is not a metrics.json key"),
    ("'retrieval.{x}.mrr'", "may hold only {q} and {g}"),
    ("['a.b', 'a.b']", "names a key twice"),
    ("{'key': 'a.b'}", "as a dict takes 'keys' and optionally 'title'"),
    ("{'keys': 'a.b', 'title': ''}", "'title' must be a non-empty string"),
])
def test_bad_select_gets_one_line(select, match, tmp_path, capsys):
  path = tmp_path / "bad.py"
  path.write_text(SWEEP.format(select=select))
  rc = cli.main(["sweep", "--sweep", str(path), "--out", str(tmp_path / "out"), "--data", str(tmp_path)])
  err = capsys.readouterr().err
  lines = [line for line in err.splitlines() if line.strip()]
  assert rc == 2 and len(lines) == 1 and "Traceback" not in err, err
  assert lines[0].startswith(f"mmvae sweep: error: sweep {path}: a sweep's 'select'") and match in lines[0], lines[0]


def test_good_select_forms(tmp_path):
  cols = sweep_table.columns(COLUMNS)
  assert sweep_table.selection({"keys": [A2F, F2A], "title": "both"}, cols)["title"] == "both"
  assert sweep_table.selection([A2F, F2A], cols)["title"] == "mean of voice->face MRR, face->voice MRR"
  assert sweep_table.selection(f"-{A2F}", cols) == {"keys": [f"-{A2F}"], "title": "-voice->face MRR",
                                                    "default": False}
  for name in ("voxceleb1", "avdigits", "tiny"):  # the shipped sweeps name their selection
    assert sweep.load_sweep(name)["select"]["default"] is False
  assert sweep.load_sweep("voxceleb1")["select"]["keys"] == [A2F, F2A]


# --- Runs finished before the validation analysis: re-analysed, not retrained ---------------------------------


def _finished_workdir(tmp_path, splits=("train", "validation", "test"), old_done=True, overrides=()):
  """A workdir as an older sweep left it (sweep_done.json without validation), and its Run."""
  data = tmp_path / "data"
  data.mkdir(parents=True)
  (data / "manifest.json").write_text(json.dumps({"splits": {s: {} for s in splits}}))
  row = {"name": "plain", "slug": "plain", "config": "synthetic:tiny", "overrides": list(overrides)}
  run = sweep.plan({"rows": [row]}, tmp_path, [0])[0]
  run.data_dir = data
  job = run.job("test")
  run.workdir.mkdir(parents=True)
  (run.workdir / "final.json").write_text("{}")
  (run.workdir / "report").mkdir()
  (run.workdir / "report" / "metrics.json").write_text(json.dumps({"analysed": "test"}))
  files_job = dict(job)
  if old_done:
    del files_job["validation_split"]  # what sweeps wrote before the validation analysis
  (run.workdir / sweep.DONE).write_text(json.dumps({"job": files_job, "train_process_seconds": 12.0,
                                                     "analyze_seconds": 3.0}))
  (run.workdir / sweep.JOB).write_text(json.dumps(job))
  return run


@pytest.fixture
def calls(monkeypatch):
  """entry.train and report.analyze replaced by recorders (analyze writes the metrics.json it would)."""
  from mmvae.analysis import report
  from mmvae.train import entry
  seen = []
  monkeypatch.setattr(entry, "train", lambda config, data_dir, workdir: seen.append(("train", None)))

  def analyze(workdir, data_dir=None, split="test", which="best", report_dir=None):
    seen.append(("analyze", split, pathlib.Path(report_dir).name))
    pathlib.Path(report_dir).mkdir(parents=True, exist_ok=True)
    (pathlib.Path(report_dir) / "metrics.json").write_text(json.dumps({"analysed": split}))
    return {}
  monkeypatch.setattr(report, "analyze", analyze)
  return seen


def test_an_older_finished_run_only_gets_its_validation_analysis(tmp_path, calls):
  run = _finished_workdir(tmp_path)
  assert not sweep.is_finished(run, "test")
  sweep._worker(run.workdir)
  assert calls == [("analyze", "validation", "report-validation")]
  done = json.loads((run.workdir / sweep.DONE).read_text())
  assert done["validation"] == sweep.VALIDATED and done["train_process_seconds"] == 12.0
  assert json.loads((run.workdir / "report" / "metrics.json").read_text()) == {"analysed": "test"}
  assert sweep.is_finished(run, "test") and not sweep.is_finished(run, "validation")
  calls.clear()
  sweep._worker(run.workdir)  # nothing left to do
  assert calls == []
  (run.workdir / "report-validation" / "metrics.json").unlink()
  assert not sweep.is_finished(run, "test")


def test_a_dataset_without_validation_is_finished_without_it(tmp_path, calls):
  run = _finished_workdir(tmp_path, splits=("train", "test"))
  sweep._worker(run.workdir)
  assert calls == [] and not (run.workdir / "report-validation").exists()
  assert json.loads((run.workdir / sweep.DONE).read_text())["validation"] == sweep.NO_VALIDATION
  assert sweep.is_finished(run, "test")


def test_another_split_or_training_redoes_what_changed(tmp_path, calls):
  run = _finished_workdir(tmp_path / "split")
  job = run.job("validation")  # now analysed on validation: the test report is redone, training kept
  (run.workdir / sweep.JOB).write_text(json.dumps(job))
  sweep._worker(run.workdir)
  assert calls == [("analyze", "validation", "report"), ("analyze", "validation", "report-validation")]
  calls.clear()
  run = _finished_workdir(tmp_path / "train")
  done = json.loads((run.workdir / sweep.DONE).read_text())
  done["job"]["seed"] = 5  # another training than the one finished
  (run.workdir / sweep.DONE).write_text(json.dumps(done))
  sweep._worker(run.workdir)
  assert calls == [("train", None), ("analyze", "test", "report"), ("analyze", "validation", "report-validation")]


def test_rows_of_other_modalities_are_scored_on_the_pair_keys_they_have():
  """A {q}/{g} selection over rows whose voices and faces are different modalities (MFCC or GE2E, pixels or dlib):
  each run is scored on its own two directions, computed here by hand; a missing key of its own pair is None."""
  runs = [{"modalities": ["audio", "face"], "retrieval.audio_to_face.mrr": 0.6, "retrieval.face_to_audio.mrr": 0.7},
          {"modalities": ["ge2e", "dlib_face"], "retrieval.ge2e_to_dlib_face.mrr": 1.0,
           "retrieval.dlib_face_to_ge2e.mrr": 0.9},
          {"modalities": ["audio", "dlib_face"], "retrieval.audio_to_dlib_face.mrr": 0.8}]
  plan = sweep_table.score_plan({"keys": ["retrieval.{q}_to_{g}.mrr"]}, runs)
  assert {key for _, key in plan["terms"]} >= {"retrieval.audio_to_face.mrr", "retrieval.dlib_face_to_ge2e.mrr"}
  assert sweep_table.score(runs[0], plan) == pytest.approx((0.6 + 0.7) / 2)
  assert sweep_table.score(runs[1], plan) == pytest.approx((1.0 + 0.9) / 2)
  assert sweep_table.score(runs[2], plan) is None  # dlib_face_to_audio applies to it and is missing
  assert sweep_table.applies("retrieval.dlib_face_to_ge2e.mrr", ["ge2e", "dlib_face"])
  assert not sweep_table.applies("retrieval.audio_to_dlib_face.mrr", ["ge2e", "dlib_face"])
  assert sweep_table.applies("loss.total", ["ge2e"]) and sweep_table.applies("retrieval.audio_to_face.mrr", None)


# --- The recommended VoxCeleb1 config is the row validation picks ----------------------------------------------


def _row_config(row, drop=()):
  """A sweep row's config as `mmvae sweep` builds it, less the overrides in `drop` (the mini set's training)."""
  from mmvae import config as config_lib
  return config_lib.load(row["config"], [o for o in row["overrides"] if o not in drop])


def test_voxceleb1_config_is_the_sweeps_validation_pick_and_aligned_is_rows_6_and_8_together():
  """The voxceleb1 sweep's validation pick in the video-grouped cross-validation is row 17 (README): the
  recommended config must be that row's settings at full length, and
  `voxceleb1:aligned` (rows 9-13's base) row 5 with InfoNCE (row 6) and identity CE (row 8) added."""
  from experiments.sweeps import voxceleb1 as vox_sweep
  from mmvae import config as config_lib
  rows = {r["name"].split()[0]: r for r in sweep.load_sweep("voxceleb1")["rows"]}
  picked = config_lib.flat(_row_config(rows["17"], drop=vox_sweep.MINI_SET_TRAINING).to_dict())
  shipped = config_lib.flat(config_lib.load("voxceleb1").to_dict())
  assert {k: (picked.get(k), shipped.get(k)) for k in picked.keys() | shipped.keys()
          if picked.get(k) != shipped.get(k)} == {"name": ("reference", "voxceleb1")}
  row5 = rows["5"]
  both = dict(row5, overrides=row5["overrides"] + ["loss.infonce_weight=1.0", "loss.identity_weight=1.0"])
  rows_6_8 = config_lib.flat(_row_config(both, drop=vox_sweep.MINI_SET_TRAINING).to_dict())
  aligned = config_lib.flat(config_lib.load("voxceleb1:aligned").to_dict())
  assert {k: (rows_6_8.get(k), aligned.get(k)) for k in rows_6_8.keys() | aligned.keys()
          if rows_6_8.get(k) != aligned.get(k)} == {"name": ("reference", "voxceleb1_aligned")}
  assert rows["9"]["config"] == "voxceleb1:aligned" and rows["9"]["overrides"] == vox_sweep.MINI_SET_TRAINING
