"""The `mmvae` command: prep, train, analyze, embed, generate, sweep, demo. Logic lives in the modules it calls."""

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
CONFIG_NAMES = "reference, conv, synthetic, avdigits, voxceleb1, msvae_public, mcvs, temporal"  # experiments/configs/ (a test keeps this true)


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


def _add_config(parser, default: str) -> None:
  parser.add_argument("--config", default=default,
                      help=f"experiment config whose input settings to follow: a name ({CONFIG_NAMES}), NAME:tiny, "
                           "or path.py[:variant]")


def _add_beam(parser) -> None:
  parser.add_argument("--beam", action="store_true",
                      help="extract and write the shards on Apache Beam (pip install 'mmvae[beam]'); alone: the local "
                           "DirectRunner with 2 worker processes; the same dataset and fingerprint as without")
  parser.add_argument("--beam-options", default=None, metavar="OPTIONS",
                      help='Beam pipeline options, implying --beam, e.g. --beam-options="--runner=FlinkRunner '
                           '--flink_master=HOST:8081 --environment_type=PROCESS ..."; on a cluster, OUT\'s parent and '
                           "the corpus must be on a file system every worker mounts at the same path (default: none)")


def _add_prep(sub) -> None:
  prep = _parser(sub, "prep", help="prepare a raw corpus into a TFDS array_record dataset", epilog=PREP_EPILOG)
  corpora = prep.add_subparsers(dest="corpus", required=True, metavar="CORPUS")

  vox = _parser(corpora, "voxceleb1", help="VoxCeleb1 layout: wav/, faces/, vox1_meta.csv, iden_split.txt",
                epilog=PREP_EPILOG)
  vox.add_argument("--root", required=True, help="corpus root holding wav/, a face folder and the split/meta files")
  vox.add_argument("--out", required=True, help="output folder for the prepared dataset and manifest.json")
  _add_config(vox, "voxceleb1")
  vox.add_argument("--strict", action="store_true", help="fail on the first bad file instead of skipping it")
  vox.add_argument("--workers", type=int, default=0, help="worker processes (default: 0, all cores)")
  _add_beam(vox)
  vox.add_argument("--split", choices=("closed", "open"), default="closed",
                   help="closed: iden_split.txt as given (test: new utterances of seen identities); open: the "
                        "identities with Set=test in vox1_meta.csv (id10270-id10309) are held out, all their "
                        "utterances in test; the others keep iden_split train/validation and their iden_split test "
                        "utterances go to validation (nothing dropped)")

  fold = _parser(corpora, "folder", help="your own data: ROOT/<person>/<clip>.wav with face frames in "
                 "ROOT/<person>/<clip>/*.jpg or ROOT/<person>/faces/*.jpg", epilog=PREP_EPILOG,
                 description="One identity per folder ROOT/<person>/; each <clip>.wav is one example. Faces: "
                             "ROOT/<person>/<clip>/*.jpg (.jpeg, .png) when that folder holds any, else "
                             "ROOT/<person>/faces/*.jpg. An optional ROOT/<person>/<clip>.txt for every clip becomes "
                             "a `text` modality. Splits: seeded, per person, by group (a --videos video, else the "
                             "clip): no video in two splits, every person in train.")
  fold.add_argument("--root", required=True, help="folder holding one folder per person")
  fold.add_argument("--out", required=True, help="output folder for the prepared dataset and manifest.json")
  _add_config(fold, "voxceleb1")
  fold.add_argument("--videos", default=None, metavar="CSV",
                    help="a CSV with the header clip,video (clip = <person>/<clip>, .wav optional): the clips of one "
                         "video always go to one split; unlisted clips are groups of their own (default: none)")
  fold.add_argument("--split-seed", type=int, default=0, help="seed of the split of each person's groups")
  fold.add_argument("--validation-fraction", type=float, default=0.2,
                    help="share of each person's groups in validation (rounded, at least 1 while a train group "
                         "remains; 0: none)")
  fold.add_argument("--test-fraction", type=float, default=0.2,
                    help="share of each person's groups in test (rounded, at least 1 while a train group remains; "
                         "0: none)")
  fold.add_argument("--strict", action="store_true", help="fail on the first unreadable file instead of skipping it")
  fold.add_argument("--workers", type=int, default=0, help="worker processes (default: 0, all cores)")
  _add_beam(fold)

  avd = _parser(corpora, "avdigits", help="FSDD recordings paired with MNIST digits of the same class",
                epilog=PREP_EPILOG)
  avd.add_argument("--fsdd", required=True, help="FSDD root (holding recordings/)")
  avd.add_argument("--mnist", required=True, help="folder with t10k-images-idx3-ubyte.gz and t10k-labels-idx1-ubyte.gz")
  avd.add_argument("--out", required=True, help="output folder for the prepared dataset and manifest.json")
  _add_config(avd, "avdigits")
  avd.add_argument("--seed", type=int, default=0, help="seed of the audio-image pairing")
  avd.add_argument("--strict", action="store_true", help="fail on the first bad file instead of skipping it")
  avd.add_argument("--workers", type=int, default=0, help="worker processes (default: 0, all cores)")
  _add_beam(avd)

  mmd = _parser(corpora, "mmdigits", help="multi-modal digits: FSDD audio, MNIST image, text, video and point cloud "
                "of the same class, imbalanced training classes", epilog=PREP_EPILOG)
  mmd.add_argument("--fsdd", required=True, help="FSDD root (holding recordings/)")
  mmd.add_argument("--mnist", required=True, help="folder with t10k-images-idx3-ubyte.gz and t10k-labels-idx1-ubyte.gz")
  mmd.add_argument("--out", required=True, help="output folder for the prepared dataset and manifest.json")
  _add_config(mmd, "mcvs")
  mmd.add_argument("--seed", type=int, default=0,
                   help="seed of the pairing, the rendered videos and point clouds, and the class imbalance")
  mmd.add_argument("--strict", action="store_true", help="fail on the first bad file instead of skipping it")
  mmd.add_argument("--workers", type=int, default=0, help="worker processes (default: 0, all cores)")
  _add_beam(mmd)

  syn = _parser(corpora, "synthetic", help="generate the built-in synthetic corpus and prepare it",
                epilog=PREP_EPILOG)
  syn.add_argument("--out", required=True, help="output folder; the raw corpus goes to OUT/raw")
  syn.add_argument("--identities", type=int, default=24, help="number of synthetic identities")
  syn.add_argument("--seed", type=int, default=0, help="seed of the generated corpus")
  syn.add_argument("--split", choices=("closed", "open"), default="closed",
                   help="closed: new videos of seen identities in test; open: unseen identities in test")
  _add_config(syn, "synthetic")
  syn.add_argument("--workers", type=int, default=0, help="worker processes (default: 0, all cores)")
  _add_beam(syn)
  syn.add_argument("--video", action="store_true",
                   help="also write each utterance's lip-synced face frames at 25 fps (the mouth opens with the "
                        "voice's loudness; OUT/raw/unzippedIntervalFaces/, VoxCeleb1's per-utterance layout) and "
                        "prepare the frame sequences audio_frames and face_frames beside audio and face "
                        "(data.video_fps, data.sequence_steps); the WAVs and stills are those without --video")

  feat = _parser(corpora, "features", help="precomputed per-modality features (XMedia style) -> vector modalities; "
                 "or, with --join, a prepared dataset plus one precomputed modality matched by example id",
                 description="With --root: rows per split are the anchor's items; every other modality gives each row "
                             "an item of the row's class (a seeded cyclic order: each item used once before any is "
                             "reused). Labels: the sorted original labels -> 0..C-1. With --join DATA_DIR: every "
                             "example of DATA_DIR as it is, plus modality --name from --embeddings (matched by the "
                             "example's id, stored as given); --anchor, --rename, --seed and --no-standardize apply "
                             "to --root only.")
  feat_source = feat.add_mutually_exclusive_group(required=True)
  feat_source.add_argument("--root",
                           help="folder of feature files, per modality and split (train, test; validation "
                                "optional): MOD_SPLIT.npz holding arrays features [N, D] and labels [N], or "
                                "MOD_SPLIT_features.npy and MOD_SPLIT_labels.npy")
  feat_source.add_argument("--join", metavar="DATA_DIR",
                           help="a prepared dataset to copy whole (every split, modality and per-example field) with "
                                "one more modality, --name, looked up by example id in --embeddings")
  feat.add_argument("--out", required=True, help="output folder for the prepared dataset and manifest.json")
  feat.add_argument("--anchor", default=None,
                    help="modality whose items are the rows of every split (default: per split, the one with the "
                         "most items; ties: the first name in sorted order)")
  feat.add_argument("--rename", action="append", default=None, metavar="OLD=NEW",
                    help="rename a modality, e.g. 3d=pointcloud (names must be Python identifiers: they are config "
                         "keys); repeatable (default: none)")
  feat.add_argument("--seed", type=int, default=0, help="seed of the other modalities' cyclic orders")
  feat.add_argument("--no-standardize", dest="standardize", action="store_false",
                    help="store the features as given (default: z-score each modality with its train split's "
                         "mean and std)")
  feat.add_argument("--embeddings", default=None, metavar="PATH",
                    help="with --join: an .npz holding ids [N] (str) and embeddings [N, D] float (as `mmvae embed` "
                         "writes), or a folder of per-example .npy files named by example id (ID.npy, e.g. "
                         "id10001/1zcIwhmdeo4/00001.wav.npy); [D] arrays -> a vector modality, [L, D] -> a sequence "
                         "modality; stored as given (default: none; required with --join)")
  feat.add_argument("--name", default=None,
                    help="with --join: name of the new modality, a Python identifier that is not already a modality "
                         "or a per-example field (default: none; required with --join)")
  feat.add_argument("--drop-missing", action="store_true",
                    help="with --join: leave out the examples that have no embedding (counted in the manifest's "
                         "notes) instead of failing")

  yt8m = _parser(corpora, "yt8m", help="YouTube-8M TFRecords (frame-level -> sequence modalities rgb, audio; "
                 "video-level -> vector modalities mean_rgb, mean_audio), read without TensorFlow",
                 description="Label: the first label id of each video (YouTube-8M is multi-label), indexing the "
                             "sorted first-label ids; unlabeled videos are skipped. Splits: train* -> train, "
                             "valid* -> validation, test* -> test by file name; files named otherwise: sha256 of "
                             "the video id (80/10/10).")
  yt8m.add_argument("--records", required=True, action="append", metavar="GLOB",
                    help="TFRecord files, a quoted glob pattern (** recursive; gzip-compressed files accepted); "
                         "repeatable; all frame-level or all video-level")
  yt8m.add_argument("--out", required=True, help="output folder for the prepared dataset and manifest.json")
  yt8m.add_argument("--max-steps", type=int, default=300,
                    help="frame-level: seconds stored per video (T); longer videos are truncated")


def _run_prep(args, config) -> None:
  if args.corpus == "features" and args.join is not None:
    from data_prep import features
    given = [flag for flag, value in (("--anchor", args.anchor), ("--rename", args.rename),
                                      ("--seed", args.seed != 0 or None),
                                      ("--no-standardize", not args.standardize or None)) if value is not None]
    if given:
      raise ValueError(f"{', '.join(given)} appl{'ies' if len(given) == 1 else 'y'} to --root, not to --join")
    absent = [flag for flag, value in (("--embeddings", args.embeddings), ("--name", args.name)) if value is None]
    if absent:
      raise ValueError(f"--join needs {' and '.join(absent)}")
    features.join_embeddings(args.join, args.embeddings, args.name, args.out, drop_missing=args.drop_missing)
    return
  if args.corpus == "features":
    given = [flag for flag, value in (("--embeddings", args.embeddings), ("--name", args.name),
                                      ("--drop-missing", args.drop_missing or None)) if value is not None]
    if given:
      raise ValueError(f"{', '.join(given)} appl{'ies' if len(given) == 1 else 'y'} to --join, not to --root")
    from data_prep import features
    features.prepare_features(args.root, args.out, seed=args.seed, anchor=args.anchor, rename=args.rename,
                              standardize=args.standardize)
    return
  if args.corpus == "yt8m":
    from data_prep import yt8m
    yt8m.prepare_yt8m(args.records, args.out, max_steps=args.max_steps)
    return
  from data_prep import prepare
  beam = None
  if args.beam or args.beam_options is not None:
    import importlib.util
    if importlib.util.find_spec("apache_beam") is None:  # before any work
      raise ValueError(prepare.BEAM_MISSING)
    beam = args.beam_options or ""  # "": beam_prep.DEFAULT_OPTIONS
  if args.corpus == "voxceleb1":
    prepare.prepare_voxceleb1(args.root, args.out, config=config, strict=args.strict, workers=args.workers,
                              split_policy=args.split, beam_options=beam)
  elif args.corpus == "folder":
    from data_prep import folder
    folder.prepare_folder(args.root, args.out, config=config, videos=args.videos, split_seed=args.split_seed,
                          validation_fraction=args.validation_fraction, test_fraction=args.test_fraction,
                          strict=args.strict, workers=args.workers, beam_options=beam)
  elif args.corpus == "avdigits":
    prepare.prepare_avdigits(args.fsdd, args.mnist, args.out, config=config, seed=args.seed,
                             strict=args.strict, workers=args.workers, beam_options=beam)
  elif args.corpus == "mmdigits":
    prepare.prepare_mmdigits(args.fsdd, args.mnist, args.out, config=config, seed=args.seed,
                             strict=args.strict, workers=args.workers, beam_options=beam)
  else:
    prepare.prepare_synthetic(args.out, identities=args.identities, seed=args.seed, split=args.split,
                              config=config, workers=args.workers, video=args.video, beam_options=beam)


def build_parser() -> argparse.ArgumentParser:
  parser = argparse.ArgumentParser(
      prog="mmvae", description="Multimodal VAEs for voices and faces: prepare, train, analyze, generate.",
      formatter_class=_HelpFormatter)
  parser.add_argument("--version", action="version", version=f"%(prog)s {mmvae.__version__}")
  sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
  _add_prep(sub)

  train = _parser(sub, "train", help="train a model of config.model.kind (resumes from WORKDIR if it holds "
                  "checkpoints)", epilog=TRAIN_EPILOG)
  train.add_argument("--config", required=True,
                     help=f"config name ({CONFIG_NAMES}), NAME:tiny, or path.py[:variant]")
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

  sweep = _parser(
      sub, "sweep", help="train and analyse a grid of configs x seeds -> OUT/results.md and results.json (resumable)",
      epilog="A sweep file (experiments/sweeps/NAME.py) returns {'rows': [{'name', 'config', 'overrides'}], "
             "'seeds': [...], 'metrics': [...]} from get_sweep(). Rerunning the same command skips finished runs.")
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
  sweep.add_argument("--split", default="test", help="split every run is analysed on")

  demo = _parser(sub, "demo", help="generate -> prepare -> train -> analyze on the built-in synthetic corpus",
                 epilog=TRAIN_EPILOG)
  demo.add_argument("--workdir", default="runs/demo", help="folder for the corpus (data/) and the run (run/)")
  demo.add_argument("--config", default="synthetic",
                    help=f"config name ({CONFIG_NAMES}), NAME:tiny, or path.py[:variant]")
  demo.add_argument("--identities", type=int, default=24, help="number of synthetic identities")
  demo.add_argument("--seed", type=int, default=0, help="seed of the generated corpus")
  return parser


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
  parser = build_parser()
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
    elif args.command == "generate":
      from mmvae.analysis import from_wav
      from_wav.generate_face_from_wav(args.workdir, args.wav, args.out, which=args.checkpoint)
    elif args.command == "sweep":
      import shlex
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
