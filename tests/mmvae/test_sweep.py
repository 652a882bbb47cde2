"""`mmvae sweep` on a tiny synthetic dataset: the table against the runs' own metrics, resume, failures."""

import itertools
import json
import os

import numpy as np
import pytest

from mmvae import cli, sweep
from mmvae.analysis import sweep_table

SWEEP = """
def get_sweep():
  return {{"rows": [
      {{"name": "plain", "config": "synthetic:tiny"}},
      {{"name": "Sample L2", "config": "synthetic:tiny", "overrides": ["loss.wasserstein=sample_l2"]}},
      {{"name": "bad override", "config": "synthetic:tiny", "overrides": ["train.no_such_key=1"]}},
      {{"name": "other data", "config": "synthetic:tiny", "overrides": ["data.face_size=16"]}},
  ], "seeds": [0, 1], "metrics": {metrics}}}
"""
COLUMNS = ["retrieval.audio_to_face.mrr", ["retrieval.face_to_audio.recall@1", "f->v R@1"],
           "coherence.audio_to_face.accuracy"]


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
  from data_prep import prepare
  out = tmp_path_factory.mktemp("sweep_data") / "prepared"
  prepare.prepare_synthetic(str(out), identities=4, seed=0, config="synthetic:tiny", workers=1)
  return out


@pytest.fixture(scope="module")
def sweep_file(tmp_path_factory):
  path = tmp_path_factory.mktemp("sweep_def") / "grid.py"
  path.write_text(SWEEP.format(metrics=COLUMNS))
  return path


def _args(sweep_file, out, dataset, *extra):
  return ["sweep", "--sweep", str(sweep_file), "--out", str(out), "--data", str(dataset), *extra]


@pytest.fixture(scope="module")
def swept(dataset, sweep_file, tmp_path_factory):
  """Two good rows x two seeds, two at a time; the bad-override row fails without a subprocess."""
  out = tmp_path_factory.mktemp("sweep_out")
  rc = cli.main(_args(sweep_file, out, dataset, "--parallel", "2", "--rows", "plain,sample-l2,bad override"))
  return out, rc


def _run_dir(out, slug, seed):
  return out / "runs" / slug / f"seed{seed}"


def test_table_equals_the_runs_metrics_read_independently(swept):
  out, rc = swept
  assert rc == 1  # a row failed; the others still ran
  results = json.loads((out / "results.json").read_text())
  rows = {r["name"]: r for r in results["rows"]}
  assert list(rows) == ["plain", "Sample L2", "bad override"]
  for name, slug in (("plain", "plain"), ("Sample L2", "sample-l2")):
    row = rows[name]
    assert (row["finished"], row["failed"], row["seeds"]) == (2, 0, [0, 1])
    for key in ("retrieval.audio_to_face.mrr", "retrieval.face_to_audio.recall@1", "coherence.audio_to_face.accuracy"):
      per_run = [json.loads((_run_dir(out, slug, s) / "report" / "metrics.json").read_text()) for s in (0, 1)]
      values = np.array([m[key] for m in per_run])
      got = row["metrics"][key]
      assert got["n"] == 2 and got["values"] == values.tolist()
      assert got["mean"] == pytest.approx(values.mean(), abs=1e-12)
      assert got["std"] == pytest.approx(values.std(ddof=1), abs=1e-12)
      assert got["chance"] == pytest.approx(np.mean([m[f"{key}_chance"] for m in per_run]), abs=1e-12)
    finals = [json.loads((_run_dir(out, slug, s) / "final.json").read_text()) for s in (0, 1)]
    assert row["timing"]["train_seconds"]["values"] == [f["elapsed_seconds"] for f in finals]
    # Each run trained its own seed with the row's overrides.
    configs = [json.loads((_run_dir(out, slug, s) / "config.json").read_text()) for s in (0, 1)]
    assert [c["train"]["seed"] for c in configs] == [0, 1]
    assert {c["loss"]["wasserstein"] for c in configs} == {"sample_l2" if slug == "sample-l2" else "w2_gaussian"}
    assert finals[0]["params_sha256"] != finals[1]["params_sha256"]
    assert "train synthetic_tiny" in (_run_dir(out, slug, 0) / "sweep.log").read_text()
  bad = rows["bad override"]
  assert (bad["finished"], bad["failed"]) == (0, 2)
  assert all("no_such_key" in r["error"] and r["error"].startswith("KeyError") for r in bad["runs"])


def test_each_run_is_analysed_on_validation_and_the_row_chosen_on_it(swept):
  out, _ = swept
  results = json.loads((out / "results.json").read_text())
  key = "retrieval.audio_to_face.mrr"  # no 'select' in the sweep file: its first column
  assert results["select"] == [key]
  means = {}
  for name, slug in (("plain", "plain"), ("Sample L2", "sample-l2")):
    val = [json.loads((_run_dir(out, slug, s) / "report-validation" / "metrics.json").read_text()) for s in (0, 1)]
    test = [json.loads((_run_dir(out, slug, s) / "report" / "metrics.json").read_text()) for s in (0, 1)]
    assert [m["analysis.split"] for m in val] == ["validation"] * 2 and [m["analysis.split"] for m in test] == ["test"] * 2
    means[name] = float(np.mean([m[key] for m in val]))
    row = next(r for r in results["rows"] if r["name"] == name)
    assert row["validation"]["score"]["values"] == [m[key] for m in val]
    assert [r["validation_metrics"][key] for r in row["runs"]] == [m[key] for m in val]
  assert results["selected"] == max(means, key=means.get)
  assert [r["name"] for r in results["rows"] if r["selected"]] == [results["selected"]]
  assert "the `test` split was not used to choose" in (out / "results.md").read_text()


def test_markdown_has_one_line_per_row_and_the_chance_line(swept):
  out, _ = swept
  md = (out / "results.md").read_text()
  table = [line for line in md.splitlines() if line.startswith("| ")]
  assert table[0].startswith("| row | runs | selected | val: score | val: retrieval.audio_to_face.mrr | val: f->v R@1 |"
                             " val: coherence.audio_to_face.accuracy | test: retrieval.audio_to_face.mrr | "
                             "test: f->v R@1 |")
  body = table[1:]
  assert len(body) == 4 and body[-1].startswith("| *chance* |")
  selected = json.loads((out / "results.json").read_text())["selected"]
  for name in ("plain", "Sample L2", "bad override"):
    shown = f"**{name}**" if name == selected else name
    assert sum(line.startswith(f"| {shown} |") for line in body) == 1
  assert sum("| **selected** |" in line for line in body) == 1
  assert " ± " in body[0] and "| ok |" in body[0]
  assert "failed 2/2" in body[2] and "no_such_key" in body[2]
  assert "mmvae sweep --sweep" in md and "## Failed runs" in md


def test_second_invocation_retrains_nothing(swept, dataset, sweep_file, capsys):
  out, _ = swept
  files = [_run_dir(out, slug, s) / name for slug in ("plain", "sample-l2") for s in (0, 1)
           for name in ("report/metrics.json", "sweep.log", "final.json")]
  before = {f: os.stat(f).st_mtime_ns for f in files}
  old = json.loads((out / "results.json").read_text())
  capsys.readouterr()
  rc = cli.main(_args(sweep_file, out, dataset, "--parallel", "2", "--rows", "plain,sample-l2,bad override"))
  assert rc == 1
  assert "0 trained, 4 finished before, 2 failed" in capsys.readouterr().out
  assert {f: os.stat(f).st_mtime_ns for f in files} == before
  new = json.loads((out / "results.json").read_text())
  assert [r["metrics"] for r in new["rows"]] == [r["metrics"] for r in old["rows"]]
  assert {r["status"] for row in new["rows"][:2] for r in row["runs"]} == {"skipped"}


def test_a_finished_run_is_redone_when_what_it_answers_changes(swept, dataset, sweep_file):
  out, _ = swept
  spec = sweep.load_sweep(str(sweep_file))
  runs = sweep.plan(spec, out, [0])
  for r in runs:
    r.data_dir = dataset.absolute()
  plain = runs[0]
  assert sweep.is_finished(plain, "test") and not sweep.is_finished(plain, "validation")
  plain.config.train.num_steps += 1
  assert not sweep.is_finished(plain, "test")


def test_a_row_whose_data_differs_fails_with_the_trainers_message(dataset, sweep_file, tmp_path):
  rc = cli.main(_args(sweep_file, tmp_path, dataset, "--rows", "other data", "--seeds", "0"))
  row = json.loads((tmp_path / "results.json").read_text())["rows"][0]
  assert rc == 1 and row["failed"] == 1
  assert "ValueError" in row["runs"][0]["error"] and "data.face_size" in row["runs"][0]["error"]


def test_root_prepares_one_dataset_per_data_section_and_reuses_it(dataset, sweep_file, tmp_path):
  spec = sweep.load_sweep(str(sweep_file))
  runs = [r for r in sweep.plan(spec, tmp_path, [0, 1]) if r.status == "pending"]
  keys = {sweep.data_key(r.config) for r in runs}
  assert len(keys) == 2  # 'other data' differs; seeds and losses do not change the data
  sweep._prepare_data(runs, dataset / "raw", tmp_path)
  for r in runs:
    manifest = json.loads((tmp_path / "data" / sweep.data_key(r.config) / "manifest.json").read_text())
    assert manifest["data_config"]["face_size"] == r.config.data.face_size
  stamps = {k: os.stat(tmp_path / "data" / k / "manifest.json").st_mtime_ns for k in keys}
  sweep._prepare_data(runs, dataset / "raw", tmp_path)
  assert {k: os.stat(tmp_path / "data" / k / "manifest.json").st_mtime_ns for k in keys} == stamps


def test_workers_get_thread_limits_when_they_share_the_cores(monkeypatch):
  for name in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
    monkeypatch.delenv(name, raising=False)
  env = sweep.worker_env(2)
  assert env["OMP_NUM_THREADS"] == str(max(1, (os.cpu_count() or 1) // 2))
  assert sweep.XLA_THREAD_FLAG in env["XLA_FLAGS"]
  assert "OMP_NUM_THREADS" not in sweep.worker_env(1)


@pytest.mark.parametrize("body, match", [
    ("def get_sweep():\n  return {'rows': []}", "non-empty"),
    ("def get_sweep():\n  return {'rows': [{'name': 'a', 'config': 'reference', 'overrides': ['train.seed=3']}]}",
     "seeds come from"),
    ("def get_sweep():\n  return {'rows': [{'name': 'a', 'config': 'x'}, {'name': 'A', 'config': 'x'}]}",
     "share a folder"),
    ("def get_sweep():\n  return {'rows': [{'name': 'a', 'config': 'x'}], 'metrics': [3]}", "metrics.json key"),
    ("def get_sweep(:\n  pass", "bad.py:1: SyntaxError: "),
    ("x = 1", "bad.py defines no get_sweep()"),
    ("def get_sweep():\n  rows = []\n  return {'rows': rows[3]}", "bad.py:3: IndexError: list index out of range"),
])
def test_bad_sweep_files_and_arguments_get_one_line(body, match, tmp_path, capsys):
  path = tmp_path / "bad.py"
  path.write_text(body)
  rc = cli.main(_args(path, tmp_path / "out", tmp_path))
  err = capsys.readouterr().err
  assert rc == 2 and err.startswith("mmvae sweep: error:") and match in err and "Traceback" not in err


def test_unknown_sweep_row_or_dataset(sweep_file, dataset, tmp_path, capsys):
  assert cli.main(["sweep", "--sweep", "no_such_sweep", "--out", str(tmp_path), "--data", str(dataset)]) == 2
  assert "voxceleb1" in capsys.readouterr().err  # the error lists the built-in sweeps
  assert cli.main(_args(sweep_file, tmp_path, dataset, "--rows", "nope")) == 2
  assert "no row 'nope'" in capsys.readouterr().err
  assert cli.main(_args(sweep_file, tmp_path, tmp_path)) == 2
  assert "manifest.json" in capsys.readouterr().err
  with pytest.raises(SystemExit):
    cli.main(_args(sweep_file, tmp_path, dataset, "--root", str(tmp_path)))


def test_summary_std_and_missing_values():
  s = sweep_table.summary([0.5, float("nan"), None, 0.7], seeds=[0, 1, 2, 3])
  assert (s["n"], s["seeds"], s["values"]) == (2, [0, 3], [0.5, 0.7])
  assert s["std"] == pytest.approx(np.std([0.5, 0.7], ddof=1))
  assert sweep_table.summary([0.5])["std"] is None and sweep_table.summary([])["mean"] is None


def test_a_run_planned_with_another_config_is_set_aside_not_resumed(swept, dataset, sweep_file, tmp_path):
  import shutil
  out, _ = swept
  workdir = tmp_path / "runs" / "plain" / "seed0"
  shutil.copytree(_run_dir(out, "plain", 0), workdir)
  spec = sweep.load_sweep(str(sweep_file))
  plain = sweep.plan(spec, out, [0])[0]
  plain.data_dir = dataset.absolute()
  job = plain.job("test")
  assert sweep.set_aside_if_changed(workdir, job) is None and (workdir / "final.json").is_file()  # same plan
  plain.config.train.num_steps += 1  # the row now asks for another run
  aside = sweep.set_aside_if_changed(workdir, plain.job("test"))
  assert not workdir.exists() and aside.parent == workdir.parent and aside.name.startswith("seed0.superseded-")
  old = json.loads((aside / "sweep_job.json").read_text())
  assert old["config_dict"] == job["config_dict"] and (aside / "final.json").is_file()  # nothing deleted


def test_default_columns_expand_to_every_pair_of_the_runs_modalities(tmp_path):
  def record(seed, mrr):
    metrics = {"modalities": ["audio", "image", "text"], "likelihood.iwae_k16": -10.0 - seed,
               "coherence.joint.accuracy": 0.5, "coherence.joint.accuracy_chance": 0.1}
    for q, g in itertools.permutations(["audio", "image", "text"], 2):
      metrics.update({f"retrieval.{q}_to_{g}.mrr": mrr + seed, f"retrieval.{q}_to_{g}.mrr_chance": 0.2,
                      f"coherence.{q}_to_{g}.accuracy": 0.9, f"coherence.{q}_to_{g}.accuracy_chance": 0.1})
    return {"seed": seed, "status": "done", "error": None, "workdir": "w", "metrics": metrics,
            "timing": {"train_seconds": 1.0, "step_ms": 2.0}}

  row = {"name": "r", "slug": "r", "config": "c", "overrides": []}
  context = {"columns": sweep_table.columns(None), "seeds": [0, 1], "split": "test", "data": "d", "sweep": "s.py"}
  results = sweep_table.write(tmp_path, [{"row": row, "records": [record(0, 0.3), record(1, 0.3)]}], context)
  keys = [c["key"] for c in results["columns"]]
  pairs = list(itertools.permutations(["audio", "image", "text"], 2))
  assert keys == ([f"retrieval.{q}_to_{g}.mrr" for q, g in pairs] + [f"coherence.{q}_to_{g}.accuracy" for q, g in pairs]
                  + ["coherence.joint.accuracy", "likelihood.iwae_k16"])
  titles = {c["key"]: c["title"] for c in results["columns"]}
  assert titles["retrieval.text_to_image.mrr"] == "text->image MRR"
  assert titles["likelihood.iwae_k16"] == "log p(x) (nats, K=16)"
  assert "| row | runs | audio->image MRR | audio->text MRR |" in (tmp_path / "results.md").read_text()
  got = results["rows"][0]["metrics"]
  assert got["retrieval.audio_to_text.mrr"]["mean"] == pytest.approx(0.8)
  assert got["likelihood.iwae_k16"]["chance"] is None
  # On a voice/face dataset the titles show audio as voice; the keys keep the modality names.
  cols = sweep_table.expand(sweep_table.columns(None), [{"modalities": ["audio", "face"]}])
  assert [(c["key"], c["title"]) for c in cols[:2]] == [("retrieval.audio_to_face.mrr", "voice->face MRR"),
                                                        ("retrieval.face_to_audio.mrr", "face->voice MRR")]


def _one_error_line(capsys) -> str:
  err = capsys.readouterr().err
  lines = [line for line in err.splitlines() if line.strip()]
  assert len(lines) == 1 and lines[0].startswith("mmvae sweep: error: ") and "Traceback" not in err, err
  return lines[0]


def test_a_results_md_the_sweep_did_not_write_is_refused_untouched(sweep_file, dataset, tmp_path, capsys):
  for name in ("results.md", "results.json", "sweep.json"):
    out = tmp_path / name.replace(".", "_")
    out.mkdir()
    (out / name).write_text("{}" if name.endswith(".json") else "# my own notes\n")
    assert cli.main(_args(sweep_file, out, dataset, "--rows", "bad override", "--seeds", "0")) == 2
    assert f"{out / name} was not written by mmvae sweep" in _one_error_line(capsys)
    assert [p.name for p in out.iterdir()] == [name] and (out / name).read_text() in ("{}", "# my own notes\n")


def test_another_sweep_into_the_same_folder_is_refused(swept, dataset, sweep_file, tmp_path, capsys):
  out, _ = swept
  before = {n: (out / n).read_bytes() for n in ("results.md", "results.json", "sweep.json")}
  other = tmp_path / "other.py"
  other.write_text(SWEEP.format(metrics=COLUMNS))  # the same rows, but another sweep file
  assert cli.main(_args(other, out, dataset, "--rows", "plain", "--seeds", "0")) == 2
  assert f"{out} holds the results of another sweep ({sweep_file})" in _one_error_line(capsys)
  assert {n: (out / n).read_bytes() for n in before} == before


def test_other_rows_and_seeds_of_the_same_sweep_join_the_table(swept, dataset, sweep_file, tmp_path, capsys):
  import shutil
  out = tmp_path / "out"
  shutil.copytree(swept[0], out)
  old = {r["name"]: r for r in json.loads((out / "results.json").read_text())["rows"]}
  (_run_dir(out, "sample-l2", 1) / "sweep_done.json").unlink()  # no longer finished: shown as not run
  capsys.readouterr()
  assert cli.main(_args(sweep_file, out, dataset, "--rows", "plain", "--seeds", "0")) == 1  # 'bad override' failed
  assert "0 trained, 3 finished before, 2 failed" in capsys.readouterr().out
  results = json.loads((out / "results.json").read_text())
  rows = {r["name"]: r for r in results["rows"]}
  assert list(rows) == ["plain", "Sample L2", "bad override"] and results["seeds"] == [0, 1]
  assert rows["plain"]["metrics"] == old["plain"]["metrics"]  # both seeds, though only seed 0 was asked for
  assert [(r["seed"], r["status"]) for r in rows["Sample L2"]["runs"]] == [(0, "skipped"), (1, "not run")]
  assert rows["Sample L2"]["metrics"]["retrieval.audio_to_face.mrr"]["n"] == 1
  assert [r["status"] for r in rows["bad override"]["runs"]] == ["failed", "failed"]
  table = [line for line in (out / "results.md").read_text().splitlines() if line.startswith("| Sample L2 |")]
  assert len(table) == 1 and table[0].endswith("| not run |")


def test_a_run_finished_before_validation_analysis_is_analysed_not_retrained(swept, dataset, sweep_file, tmp_path,
                                                                             capsys):
  import shutil
  out = tmp_path / "out"
  shutil.copytree(swept[0], out)
  workdir = _run_dir(out, "plain", 0)
  shutil.rmtree(workdir / "report-validation")
  done = json.loads((workdir / "sweep_done.json").read_text())
  del done["job"]["validation_split"], done["validation"]  # as sweeps wrote it before
  (workdir / "sweep_done.json").write_text(json.dumps(done))
  kept = [workdir / n for n in ("final.json", "report/metrics.json", "checkpoints")]
  before = {f: os.stat(f).st_mtime_ns for f in kept}
  capsys.readouterr()
  assert cli.main(_args(sweep_file, out, dataset, "--rows", "plain", "--seeds", "0")) == 1  # 'bad override' failed
  assert "1 trained, 3 finished before, 2 failed" in capsys.readouterr().out  # only analysed, in fact
  assert {f: os.stat(f).st_mtime_ns for f in kept} == before
  log = (workdir / "sweep.log").read_text()
  assert "finished training before; keeping it" in log and f"keeping {workdir / 'report'}" in log
  assert json.loads((workdir / "report-validation" / "metrics.json").read_text())["analysis.split"] == "validation"
  assert json.loads((workdir / "sweep_done.json").read_text())["validation"] == "analysed"


def test_results_written_before_the_marker_existed_still_count_as_the_sweeps(tmp_path):
  legacy = {"sweep": str(tmp_path / "grid.py"), "std": sweep_table.STD_NOTE, "rows": []}
  (tmp_path / "results.json").write_text(json.dumps(legacy))
  (tmp_path / "results.md").write_text("# Sweep `grid`\n")
  assert sweep_table.previous(tmp_path, str(tmp_path / "grid.py")) == legacy
  with pytest.raises(ValueError, match="holds the results of another sweep"):
    sweep_table.previous(tmp_path, str(tmp_path / "other.py"))
