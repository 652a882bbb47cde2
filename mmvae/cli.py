"""The `mmvae` command: prep, train, analyze, embed, extract, index, query, generate, sweep, demo. Logic lives in the
modules it calls."""

import argparse
import errno
import itertools
import os
import pathlib
import signal
import sys
from typing import Sequence

import mmvae

CONFIG_COMMANDS = ("prep", "train", "demo")  # the commands that take --config, and so --config.KEY overrides


# What a Ctrl-C leaves, by command: nothing is left looking complete that is not.
INTERRUPTED = {
    "prep": "the dataset at --out is as it was; finished shards are kept beside it, and rerunning the same command "
            "resumes from them",
    "train": "rerun the same command to resume from its newest checkpoint",
    "analyze": "the report is as it was (a new one is swapped in only when complete); rerun the same command",
    "embed": "--out was not written; rerun the same command",
    "generate": "rerun the same command",
    "sweep": "rerun the same command to continue; finished runs are kept",
    "demo": "rerun the same command to continue where it stopped",
    "index": "the index at --out is as it was (a new one is swapped in only when complete); rerun the same command",
    "query": "rerun the same command",
    "extract": "--out was not written; rerun the same command",
}


def _add_checkpoint(parser) -> None:
  parser.add_argument("--checkpoint", choices=("best", "last"), default="best",
                      help="best: the checkpoint with the highest validation score (config.train.select_by; the "
                           "newest one when the run has no validation split); last: the newest step")


def _overrides_epilog(example: str) -> str:
  return f"Any config key can be overridden, as --config.KEY=VALUE or --config.KEY VALUE, e.g. {example}."


TRAIN_EPILOG = _overrides_epilog("--config.train.batch_size=256 --config.parallel pmap "
                                 "--config.model.kind=contrastive")
PREP_EPILOG = _overrides_epilog("--config.data.face_size=64 --config.data.grayscale False")


class _HelpFormatter(argparse.ArgumentDefaultsHelpFormatter):
  """Shows every option's default, except where the help already says it or the option is required."""

  def _get_help_string(self, action):
    if action.required or action.default is None or "default" in (action.help or ""):
      return action.help
    return super()._get_help_string(action)


def _parser(sub, name: str, **kwargs) -> argparse.ArgumentParser:
  return sub.add_parser(name, formatter_class=_HelpFormatter, **kwargs)


def config_names() -> str:
  """The built-in experiment configs (experiments/configs/NAME.py), as the --config help lists them."""
  from mmvae import config as config_lib
  return ", ".join(config_lib.available())


def _add_config(parser, default: str) -> None:
  parser.add_argument("--config", default=default,
                      help=f"experiment config whose input settings to follow: a name ({config_names()}), NAME:tiny, "
                           "or path.py[:variant]")


def _add_prep(sub, with_corpora: bool = True) -> None:
  """`mmvae prep` and, with_corpora, one CORPUS subcommand per registered corpus (data_prep.corpora: importing the
  corpus modules loads NumPy, SciPy and TFDS, so commands other than prep build the parser without them)."""
  prep = _parser(sub, "prep", help="prepare a raw corpus into a TFDS array_record dataset", epilog=PREP_EPILOG)
  corpora_sub = prep.add_subparsers(dest="corpus", required=True, metavar="CORPUS")
  if not with_corpora:
    return
  from data_prep import corpora  # pylint: disable=g-import-not-at-top
  for kind in corpora.kinds():
    parser = _parser(corpora_sub, kind.name, help=kind.help, description=kind.description,
                     epilog=PREP_EPILOG if kind.config else None)
    kind.add_arguments(parser, lambda p, default=kind.config: _add_config(p, default))


def _run_prep(args, config) -> None:
  from data_prep import corpora
  corpora.get(args.corpus).run(args, config)


def build_parser(with_corpora: bool = True) -> argparse.ArgumentParser:
  """The whole `mmvae` parser; with_corpora=False leaves out prep's corpus subcommands (see _add_prep)."""
  parser = argparse.ArgumentParser(
      prog="mmvae", description="Multimodal VAEs for voices and faces: prepare, train, analyze, generate.",
      formatter_class=_HelpFormatter)
  parser.add_argument("--version", action="version", version=f"%(prog)s {mmvae.__version__}")
  sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
  _add_prep(sub, with_corpora)
  for add in (_add_train, _add_analyze, _add_embed, _add_extract, _add_index, _add_query, _add_serve, _add_generate,
              _add_sweep, _add_demo):
    add(sub)
  return parser


def _add_train(sub) -> None:
  train = _parser(sub, "train", help="train a model of config.model.kind (resumes from WORKDIR if it holds "
                  "checkpoints)", epilog=TRAIN_EPILOG)
  train.add_argument("--config", required=True,
                     help=f"config name ({config_names()}), NAME:tiny, or path.py[:variant]")
  train.add_argument("--data", required=True, help="prepared dataset folder (holding manifest.json)")
  train.add_argument("--workdir", required=True, help="run folder: checkpoints, metrics.jsonl, final.json")
  train.add_argument("--from", dest="init_from", default=None, metavar="CHECKPOINT",
                     help="start a new run from the parameters of a kept checkpoint of another run "
                          "(WORKDIR/checkpoints/last/N or best/N), e.g. to retry with a lower learning rate; the "
                          "optimizer and the step start fresh, so the whole schedule runs (default: none, "
                          "a fresh initialisation)")
  train.add_argument("--allow-data-change", action="store_true",
                     help="resume a run on a dataset other than the one it started on (compared by the "
                          "fingerprint in manifest.json; recorded in run.json); refused otherwise")
  # Several processes (one per host or per GPU): what the MMVAE_* environment variables otherwise say.
  train.add_argument("--coordinator", default=None, metavar="HOST:PORT",
                     help="multi-process run: address of process 0 (sets MMVAE_COORDINATOR; default: none, "
                          "one process)")
  train.add_argument("--num-processes", type=int, default=None,
                     help="multi-process run: how many processes (sets MMVAE_NUM_PROCESSES; default: none)")
  train.add_argument("--process-id", type=int, default=None,
                     help="multi-process run: this process's index, 0..N-1 (sets MMVAE_PROCESS_ID; default: none)")


def _add_analyze(sub) -> None:
  analyze = _parser(sub, "analyze", help="retrieval for every pair of modalities, t-SNE, DBSCAN, cross generation, "
                    "coherence, likelihood -> WORKDIR/report/")
  analyze.add_argument("--workdir", required=True, help="run folder written by mmvae train")
  analyze.add_argument("--data", default=None,
                       help="prepared dataset (default: the one the run trained on, from WORKDIR/run.json)")
  analyze.add_argument("--split", default="test", help="split to analyse")
  _add_checkpoint(analyze)
  analyze.add_argument("--out", default=None, metavar="DIR",
                       help="report folder (default: WORKDIR/report/); a report already there is replaced, with a "
                            "line naming it when it was made from another checkpoint, split or dataset")


def _add_embed(sub) -> None:
  embed = _parser(sub, "embed", help="export a run's posterior means of one modality for every example of some "
                  "splits -> an .npz (ids, embeddings, splits) that `mmvae prep features --join` reads")
  embed.add_argument("--workdir", required=True, help="run folder written by mmvae train")
  embed.add_argument("--modality", required=True, help="the run's modality to encode, by its name or as reports "
                     "show it (voice for audio); a multi-frame one: its frames' posteriors averaged, as analyze does")
  embed.add_argument("--out", required=True, help=".npz file to write: ids [N] str, embeddings [N, Z] float32, "
                     "splits [N] str")
  embed.add_argument("--data", default=None,
                     help="prepared dataset (default: the one the run trained on, from WORKDIR/run.json)")
  embed.add_argument("--splits", default=None,
                     help="comma-separated splits to encode, e.g. train,validation,test (default: every split of "
                          "the dataset)")
  _add_checkpoint(embed)


def _add_index(sub) -> None:
  index = _parser(sub, "index", help="store a run's space: every example of every modality embedded into a FAISS "
                  "index folder that `mmvae query` searches")
  index.add_argument("--workdir", help="run folder written by mmvae train (no default; required unless --add)")
  index.add_argument("--out", help="index folder to write: index.json, one <modality>.faiss each, "
                     "entries.npz, manifest.json; an index already there is replaced when the new one is complete "
                     "(no default; required unless --add)")
  index.add_argument("--data", default=None,
                     help="prepared dataset (default: the one the run trained on, from WORKDIR/run.json)")
  index.add_argument("--splits", default=None,
                     help="comma-separated splits to index, e.g. train,validation,test (default: every split)")
  kind = index.add_mutually_exclusive_group()
  kind.add_argument("--exact", dest="index_kind", action="store_const", const="exact",
                    help="exact inner-product search for every modality (default: exact up to 100,000 entries, "
                         "an HNSW graph up to 300,000, an inverted file above)")
  kind.add_argument("--approximate", dest="index_kind", action="store_const", const="hnsw",
                    help="an HNSW graph (efSearch tuned to recall@10 >= 0.95) for every modality (default: chosen by "
                         "size, as --exact says)")
  kind.add_argument("--ivf", dest="index_kind", action="store_const", const="ivf",
                    help="an inverted file (k-means cells, nprobe tuned to recall@10 >= 0.95) for every modality "
                         "(default: chosen by size: above 300,000 entries)")
  _add_checkpoint(index)
  add = index.add_argument_group("adding one entry to an existing index: --add INDEX and one of --wav/--image/--video/--text")
  add.add_argument("--add", metavar="INDEX", default=None, help="index folder (mmvae index) to add one entry to, "
                   "embedded with the index's own run and preprocessing; nothing else is re-embedded (default: "
                   "build a new index instead)")
  raw = add.add_mutually_exclusive_group()
  raw.add_argument("--wav", help="with --add: a WAV file (default: none; give one of the three)")
  raw.add_argument("--image", help="with --add: an image file, JPEG/PNG (default: none)")
  raw.add_argument("--video", help="with --add: a video file, GIF/MP4/... (default: none)")
  raw.add_argument("--text", help="with --add: a sentence (default: none)")
  add.add_argument("--id", dest="entry_id", default=None, help="with --add: the new entry's id (default: the file's "
                   "name, or the text)")
  add.add_argument("--label", type=int, default=-1, help="with --add: its label (default -1: none)")
  add.add_argument("--identity", default="", help="with --add: its identity name")


def _add_query(sub) -> None:
  query = _parser(sub, "query", help="the entries of an index (mmvae index) nearest to a WAV, an image, a text or "
                  "a stored entry")
  query.add_argument("index", metavar="INDEX", help="index folder written by mmvae index")
  what = query.add_mutually_exclusive_group(required=True)
  what.add_argument("--wav", help="WAV file: encoded through the run's audio features")
  what.add_argument("--image", help="image file (JPEG/PNG): cropped and resized to the run's face size")
  what.add_argument("--video", help="video file (GIF, MP4, ...): evenly spaced frames, cropped and resized to the "
                    "run's video modality")
  what.add_argument("--text", help="a sentence: through the dataset's subword tokenizer (any words), or, for a "
                    "word-vocabulary text modality, its words in that vocabulary (others dropped)")
  what.add_argument("--id", dest="entry_id", help="the id of a stored entry: its stored vector is the query")
  query.add_argument("--of", default=None, help="with --id: the modality of the entry (default: the first "
                     "modality holding that id)")
  query.add_argument("--modality", default=None, help="the modality to search (default: every one other than the "
                     "query's)")
  query.add_argument("--k", type=int, default=10, help="how many results")
  query.add_argument("--json", action="store_true", help="print a JSON list of objects with id, modality, score, "
                     "label (and rank, identity, split, text, row) instead of a table")


def _add_serve(sub) -> None:
  serve = _parser(sub, "serve", help="a local web page over an index (mmvae index): query it by text, WAV or image, "
                  "results with thumbnails, audio and scores; JSON at /api/query")
  serve.add_argument("index", metavar="INDEX", help="index folder written by mmvae index")
  serve.add_argument("--port", type=int, default=8080, help="TCP port to listen on (0: any free port)")
  serve.add_argument("--host", default="127.0.0.1", help="address to listen on (default: 127.0.0.1, this machine "
                     "only; 0.0.0.0: every network)")
  serve.add_argument("--max-upload-mb", type=float, default=20, help="larger uploads are refused (HTTP 413)")
  serve.add_argument("--k", type=int, default=10, help="results shown unless the page asks for another number")
  serve.add_argument("--audio-root", default=None, help="folder of the corpus's WAV files (an entry's id as a path "
                     "under it, or its file name): audio results get a player (default: none, unless the dataset "
                     "keeps them in raw/wav)")


def _add_extract(sub) -> None:
  from data_prep import pretrained  # light: names and install commands only
  known = "; ".join(f"{name} ({pretrained.INSTALLS[name]})" for name in pretrained.EXTRACTORS)
  extract = _parser(sub, "extract", help="embed every example of a raw corpus (or a prepared dataset) with a pretrained network -> an .npz "
                    "(ids, embeddings, splits) that `mmvae prep features --join` reads",
                    description=f"Pretrained extractors, each with the command that installs its weights: {known}. "
                    "ge2e: 256-d GE2E speaker d-vectors of the wav (resemblyzer's network in Flax); dlib_face: 128-d "
                    "dlib face descriptors, mean over an example's face frames; wordllama: 256-d sentence vectors "
                    "of its text.")
  extract.add_argument("name", choices=list(pretrained.EXTRACTORS), metavar="NAME",
                       help=f"the extractor: {', '.join(pretrained.EXTRACTORS)}")
  source = extract.add_mutually_exclusive_group(required=True)
  source.add_argument("--root", help="raw corpus root, as `mmvae prep CORPUS --root` takes it")
  source.add_argument("--data", help="a prepared dataset instead, where it keeps what NAME needs: dlib_face its RGB "
                      f"faces of >= {pretrained.MIN_FACE_SIZE} px, wordllama its text tokens; GE2E needs the waves "
                      "(prep keeps features) and dlib RGB faces (not the reference config's 23x23 grayscale): use --root for those")
  extract.add_argument("--out", required=True, help=".npz file to write: ids [N] str (the examples' ids, as the "
                       "prepared dataset has them), embeddings [N, D] float32, splits [N] str")
  extract.add_argument("--corpus", choices=pretrained.CORPORA, default="voxceleb1", help="the root's layout")


def _add_generate(sub) -> None:
  generate = _parser(sub, "generate", help="generate one modality from another with a trained run")
  gen_sub = generate.add_subparsers(dest="target", required=True, metavar="TARGET")
  face = _parser(gen_sub, "face", help="a face from a voice: the run's first image modality decoded from one WAV "
                 "file's audio (its first spectrogram modality)")
  face.add_argument("--workdir", required=True, help="run folder written by mmvae train")
  face.add_argument("--wav", required=True, help="WAV file of one utterance")
  face.add_argument("--out", required=True,
                    help="image file to write (.png): the run's face size enlarged 4 times, pixel for pixel "
                         "(128x128 for the 32x32 faces of the voxceleb1 and synthetic configs)")
  _add_checkpoint(face)


def _add_sweep(sub) -> None:
  sweep = _parser(
      sub, "sweep", help="train and analyse a grid of configs x seeds -> OUT/results.md and results.json (resumable)",
      epilog="A sweep file (experiments/sweeps/NAME.py) returns {'rows': [{'name', 'config', 'overrides'}], "
             "'seeds': [...], 'metrics': [...], 'select': key or [keys]} from get_sweep(). Every run is analysed on "
             "--split and on validation; the row is chosen on its mean validation score ('select'), never on the "
             "test split. Rerunning the same command skips finished runs.")
  sweep.add_argument("--sweep", required=True, help="sweep name (experiments/sweeps/NAME.py) or path.py")
  sweep.add_argument("--out", required=True, help="output folder: runs/<row>/seed<s>/, data/, results.{md,json}; "
                     "one sweep per folder: a results.md it did not write, or another sweep's, is refused, and "
                     "earlier --rows/--seeds of the same sweep stay in its table")
  source = sweep.add_mutually_exclusive_group(required=True)
  source.add_argument("--data", help="one prepared dataset for every row")
  source.add_argument("--root", help="raw VoxCeleb1 root: prepared once per distinct data section into OUT/data/")
  sweep.add_argument("--parallel", type=int, default=0, help="runs at once (default: 0, half the cores)")
  sweep.add_argument("--seeds", default=None, help="comma-separated training seeds (default: the sweep's)")
  sweep.add_argument("--rows", default=None, help="comma-separated row names to run (default: all)")
  sweep.add_argument("--split", default="test",
                     help="split every run is analysed on; with --cv: closed (or test) folds videos, open folds "
                          "identities (test identities unseen)")
  sweep.add_argument("--cv", type=int, default=None, metavar="K",
                     help="K-fold cross-validation (K >= 3) of the raw VoxCeleb1-layout corpus given by --root: the "
                          "videos of all its splits are dealt into K folds stratified by identity (whole "
                          "identities with --split open); round k tests on fold k, selects checkpoints on fold "
                          "k+1 mod K and trains on the rest. Writes OUT/folds/fold<k>/ (the fold corpora: "
                          "symlinks and an iden_split.txt), OUT/fold<k>/ (an ordinary resumable sweep per round) "
                          "and OUT/cv.json, cv.md (per row: mean and 95%% interval over folds x seeds, per-fold "
                          "means, the pooled-query MRR, the row selected on validation) (default: none, one sweep)")


def _add_demo(sub) -> None:
  demo = _parser(sub, "demo", help="generate -> prepare -> train -> analyze on the built-in synthetic corpus",
                 epilog=TRAIN_EPILOG)
  demo.add_argument("--workdir", default="runs/demo", help="folder for the corpus (data/) and the run (run/)")
  demo.add_argument("--config", default="synthetic",
                    help=f"config name ({config_names()}), NAME:tiny, or path.py[:variant]")
  demo.add_argument("--identities", type=int, default=24, help="number of synthetic identities")
  demo.add_argument("--seed", type=int, default=0, help="seed of the generated corpus")


def _mrr_chance(labels) -> float:
  """Chance MRR of cross-modal retrieval among `labels`: each query ranks all items, its label's count relevant."""
  import numpy as np
  from mmvae.metrics import chance
  _, index, counts = np.unique(np.asarray(labels), return_inverse=True, return_counts=True)
  return float(np.mean([chance.mrr(len(index), int(counts[i])) for i in index]))


def _with_chance(value, chance_value) -> str:
  return f"{value:.3f} ({value / chance_value:.1f}x chance {chance_value:.3f})" if chance_value else f"{value:.3f}"


def train_summary(final: dict, workdir, data_dir) -> str:
  """Where the run's files are and its headline numbers (validation MRR beside chance)."""
  workdir = pathlib.Path(workdir)
  stages = final.get("stages") or []
  run = pathlib.Path(stages[-1]["run"]) if stages else workdir  # a stage-wise run: its last stage's folder
  ckpt = run / "checkpoints"
  best = final.get("best_step")
  lines = [f"mmvae train: step {final['step']} done in {final['elapsed_seconds'] / 60:.1f} min -> {workdir}"]
  if stages:
    lines.append(f"  stages       {workdir / 'stages.json'}: " + "; ".join(
        f"{r['stage']}: +{','.join(r['new'])} ({r['seconds_per_iteration'] * 1e3:.3g} ms/iteration)" for r in stages))
  lines += [f"  checkpoints  {ckpt / 'last'} (newest: step {final['step']})"
            + (f", {ckpt / 'best'} (step {best})" if best is not None else ""),
            f"  metrics      {run / 'metrics.jsonl'}, {workdir / 'final.json'}, TensorBoard {run / 'tb'}"]
  val = final.get("validation")
  pairs = [k for k in sorted(val or {}) if k.startswith("mrr_") and "_to_" in k]
  if pairs:
    from mmvae import data
    from mmvae.analysis import markdown
    chance_value = _mrr_chance(data.Dataset(data_dir).column("validation", "label"))
    names = list(dict.fromkeys(n for k in pairs for n in k[len("mrr_"):].split("_to_")))
    label = markdown.display_labels(names)
    for i, key in enumerate(pairs):
      q, g = key[len("mrr_"):].split("_to_")
      head = "  validation   " if i == 0 else " " * 15
      lines.append(f"{head}{label.get(q, q)} -> {label.get(g, g)} MRR {_with_chance(val[key], chance_value)}"
                   + (f" at step {final['step']}" if i == 0 else ""))
  if "loss" in (final.get("losses") or {}):
    lines.append(f"  train loss   {final['losses']['loss']:.4g} (last step)")
  lines.append(f"  next         mmvae analyze --workdir {workdir}")
  return "\n".join(lines)


def previous_report(report_dir: pathlib.Path, given: bool = True) -> dict | None:
  """The metrics.json of the report in `report_dir` (None when there is none, {} when unreadable); ValueError when
  a folder named by --out (`given`) holds files but no report, so a report would be mixed into someone's files."""
  import json
  if not report_dir.exists():
    return None
  if not report_dir.is_dir():
    raise ValueError(f"--out {report_dir} is a file; give a folder for the report")
  try:
    recorded = json.loads((report_dir / "metrics.json").read_text())
    return recorded if isinstance(recorded, dict) else {}
  except (OSError, ValueError):
    reported = ("report.md", "latents.npz", "metrics.json")
    if not given or any((report_dir / name).exists() for name in reported) or not any(report_dir.iterdir()):
      return {}  # WORKDIR/report, an unfinished or unreadable report, or an empty folder
    raise ValueError(f"--out {report_dir} holds files that are not an mmvae report; give a new or empty "
                     "folder") from None


def replaced_line(previous: dict | None, metrics: dict, report_dir) -> str:
  """One line naming the report just replaced when it was made from another checkpoint, split or dataset."""
  if not previous:
    return ""
  fields = (("analysis.step", "checkpoint"), ("analysis.split", "split"), ("dataset.fingerprint", "dataset"))
  changed = [what for key, what in fields if previous.get(key) is not None and previous.get(key) != metrics.get(key)]
  if not changed:
    return ""
  old = [f"checkpoint {previous['analysis.checkpoint']}" if previous.get("analysis.checkpoint") else "",
         f"split {previous['analysis.split']}" if previous.get("analysis.split") else "",
         f"dataset {previous['dataset.path']}" if previous.get("dataset.path") else ""]
  what = " and ".join([", ".join(changed[:-1]), changed[-1]] if len(changed) > 1 else changed)
  return f"mmvae analyze: replaced the report in {report_dir} made from another {what} (it was: " \
         f"{', '.join(o for o in old if o)})"


def analyze_summary(metrics: dict, workdir, checkpoint: str, split: str, report=None) -> str:
  """Where the report is (default WORKDIR/report) and the cross-modal retrieval numbers beside chance."""
  report = pathlib.Path(report) if report is not None else pathlib.Path(workdir) / "report"
  lines = [f"mmvae analyze: {checkpoint} checkpoint, {split} split: {metrics['examples']} examples of "
           f"{metrics['identities']} identities",
           f"  report       {report / 'report.md'}", f"  metrics      {report / 'metrics.json'}"]
  from mmvae.analysis import markdown
  names = list(metrics.get("modalities") or ())
  display = markdown.display_labels(names)
  for q, g in itertools.permutations(names, 2):  # every ordered pair of modalities
    value = metrics.get(f"retrieval.{q}_to_{g}.mrr")
    if value is not None:
      lines.append(f"  {display[q]} -> {display[g]} MRR "
                   f"{_with_chance(value, metrics.get(f'retrieval.{q}_to_{g}.mrr_chance'))}")
  for q, g in itertools.permutations(names, 2):
    value = metrics.get(f"coherence.{q}_to_{g}.accuracy")
    if value is not None:
      lines.append(f"  {display[g]} from {display[q]}: coherence "
                   f"{_with_chance(value, metrics.get(f'coherence.{q}_to_{g}.accuracy_chance'))}")
  if "coherence.joint.accuracy" in metrics:
    joint = _with_chance(metrics["coherence.joint.accuracy"], metrics.get("coherence.joint.accuracy_chance"))
    lines.append(f"  joint coherence {joint}")
  for key in sorted(k for k in metrics if k.startswith("likelihood.iwae_k")):
    lines.append(f"  test log p(x) {metrics[key]:.1f} nats per example (IWAE, K={key[len('likelihood.iwae_k'):]})")
  return "\n".join(lines)


def split_overrides(argv: Sequence[str]) -> tuple[list[str], list[str]]:
  """(other arguments, ['a.b=value', ...]) from a command line holding --config.a.b=value or --config.a.b value."""
  rest, overrides = [], []
  args = iter(argv)
  for arg in args:
    if arg == "--":  # everything after it is positional
      rest += [arg, *args]
      break
    if not arg.startswith("--config."):
      rest.append(arg)
      continue
    key, sep, value = arg.removeprefix("--config.").partition("=")
    if not sep:
      value = next(args, None)
      if value is None or value.startswith("--"):
        raise ValueError(f"config override {arg} needs a value: {arg}=VALUE or {arg} VALUE")
    overrides.append(f"{key}={value}")
  return rest, overrides


def _error_text(e: Exception) -> str:
  # str(KeyError('x')) is "'x'": show the message itself.
  return str(e.args[0]) if isinstance(e, KeyError) and e.args else str(e)


def main(argv=None) -> int:
  argv = sys.argv[1:] if argv is None else list(argv)
  parser = build_parser(with_corpora="prep" in argv)
  try:
    rest, overrides = split_overrides(argv)
  except ValueError as e:
    parser.error(str(e))
  args = parser.parse_args(rest)
  if overrides and args.command not in CONFIG_COMMANDS:
    parser.error(f"--config.KEY overrides apply to the commands that take --config ({', '.join(CONFIG_COMMANDS)}), "
                 f"not to {args.command}")
  try:
    if args.command == "prep":
      from mmvae import config as config_lib
      if not hasattr(args, "config"):  # a corpus whose preparation reads no config (prep features)
        if overrides:
          raise ValueError(f"prep {args.corpus} takes no --config.KEY overrides: it reads no config")
        _run_prep(args, None)
      else:
        _run_prep(args, config_lib.load(args.config, overrides))
    elif args.command == "train":
      from mmvae import config as config_lib
      config = config_lib.load(args.config, overrides)
      from mmvae.train import entry
      for flag, env in (("coordinator", "MMVAE_COORDINATOR"), ("num_processes", "MMVAE_NUM_PROCESSES"),
                        ("process_id", "MMVAE_PROCESS_ID")):
        if getattr(args, flag) is not None:  # read by parallel.maybe_initialize_distributed
          os.environ[env] = str(getattr(args, flag))
      final = entry.train(config, args.data, args.workdir, allow_data_change=args.allow_data_change,
                          init_from=args.init_from)
      import jax
      if jax.process_index() == 0:
        print(train_summary(final, args.workdir, args.data), flush=True)
    elif args.command == "analyze":
      from mmvae.analysis import report
      out = pathlib.Path(args.out) if args.out is not None else pathlib.Path(args.workdir) / "report"
      previous = previous_report(out, given=args.out is not None)  # what the report to be replaced was made from
      metrics = report.analyze(args.workdir, data_dir=args.data, split=args.split, which=args.checkpoint,
                               report_dir=out)
      replaced = replaced_line(previous, metrics, out)
      if replaced:
        print(replaced, flush=True)
      print(analyze_summary(metrics, args.workdir, args.checkpoint, args.split, out), flush=True)
    elif args.command == "embed":
      from mmvae import embed
      embed.export(args.workdir, args.modality, args.out, data_dir=args.data, splits=args.splits,
                   which=args.checkpoint)
    elif args.command == "index" and args.add:
      from mmvae import index
      got = index.add(args.add, text=args.text, wav=args.wav, image=args.image, video=args.video,
                      entry_id=args.entry_id,
                      label=args.label, identity=args.identity)
      print(f"mmvae index: added {got['modality']} entry {got['id']!r} to {args.add}", flush=True)
    elif args.command == "index":
      from mmvae import index
      if not args.workdir or not args.out or args.wav or args.image or args.video or args.text is not None:
        raise ValueError("mmvae index builds with --workdir RUN --out INDEX, or adds one entry with --add INDEX "
                         "and one of --wav, --image, --video or --text")
      index.build(args.workdir, args.out, data_dir=args.data, splits=args.splits, force=args.index_kind,
                  which=args.checkpoint)
    elif args.command == "query":
      from mmvae import index
      index.run_query(args.index, text=args.text, wav=args.wav, image=args.image, video=args.video,
                      id=args.entry_id, of=args.of, modality=args.modality, k=args.k, as_json=args.json)
    elif args.command == "serve":
      from mmvae import serve
      serve.run(args.index, host=args.host, port=args.port, max_upload_mb=args.max_upload_mb, k=args.k,
                audio_root=args.audio_root)
    elif args.command == "extract":
      from data_prep import pretrained
      pretrained.extract(args.name, args.root, args.out, corpus=args.corpus, data=args.data)
    elif args.command == "generate":
      from mmvae.analysis import from_wav
      from_wav.generate_face_from_wav(args.workdir, args.wav, args.out, which=args.checkpoint)
    elif args.command == "sweep":
      import shlex
      if args.cv is not None:
        if args.data is not None:
          raise ValueError("--cv needs --root, a raw VoxCeleb1-layout corpus, not --data: the folds re-split its "
                           "videos and each fold is prepared on its own")
        from mmvae import cv
        results = cv.run(args.sweep, args.out, root=args.root, k=args.cv, seeds=args.seeds, rows=args.rows,
                         parallel=args.parallel, command=f"mmvae {shlex.join(argv)}", policy=args.split)
        return 1 if results["failed_runs"] else 0
      from mmvae import sweep
      results = sweep.run(args.sweep, args.out, data=args.data, root=args.root, parallel=args.parallel,
                          seeds=args.seeds, rows=args.rows, split=args.split, command=f"mmvae {shlex.join(argv)}")
      if any(row["failed"] for row in results["rows"]):
        return 1
    elif args.command == "demo":
      from mmvae import demo
      demo.run(args.workdir, config=args.config, identities=args.identities, seed=args.seed, overrides=overrides)
  except KeyboardInterrupt:  # Ctrl-C where no step is in flight (train stops its loop itself: exit 130 too)
    if os.environ.get("MMVAE_DEBUG"):
      raise
    what = INTERRUPTED.get(args.command, "rerun the same command")
    print(f"mmvae {args.command}: interrupted; {what}", flush=True)
    return 128 + signal.SIGINT
  except (FileNotFoundError, ValueError, KeyError, TypeError) as e:
    # Bad input, bad config: one clear line, not a traceback. MMVAE_DEBUG=1 shows the traceback.
    if os.environ.get("MMVAE_DEBUG"):
      raise
    print(f"mmvae {args.command}: error: {_error_text(e)}", file=sys.stderr)
    return 2
  except OSError as e:  # a write the file system refused where no writer said more (mmvae/write_errors.py)
    from mmvae import write_errors
    code = write_errors.error_code(e)
    if code is None or os.environ.get("MMVAE_DEBUG"):
      raise
    where = e.filename if e.filename is not None else "a file"
    line = (write_errors.message(code, where) if code in write_errors.NO_SPACE + (errno.EROFS,)
            else f"{where}: {os.strerror(code)}")
    print(f"mmvae {args.command}: error: {line}", file=sys.stderr)
    return 2
  return 0


if __name__ == "__main__":
  sys.exit(main())
