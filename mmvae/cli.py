"""The `mmvae` command: prep, train, analyze, generate, demo. Logic lives in the modules it calls."""

import argparse
import sys


def _add_prep(sub) -> None:
  prep = sub.add_parser("prep", help="prepare a raw corpus into a TFDS array_record dataset")
  corpora = prep.add_subparsers(dest="corpus", required=True, metavar="CORPUS")

  vox = corpora.add_parser("voxceleb1", help="VoxCeleb1 layout: wav/, faces/, vox1_meta.csv, iden_split.txt")
  vox.add_argument("--root", required=True, help="corpus root holding wav/, a face folder and the split/meta files")
  vox.add_argument("--out", required=True, help="output folder for the prepared dataset and manifest.json")
  vox.add_argument("--config", default="reference", help="experiment config whose input settings to follow")
  vox.add_argument("--strict", action="store_true", help="fail on the first bad file instead of skipping it")
  vox.add_argument("--workers", type=int, default=0, help="worker processes (default: all cores)")
  vox.add_argument("--split", choices=("closed", "open"), default="closed",
                   help="closed: iden_split.txt as given (test: new utterances of seen identities); open: the "
                        "identities with Set=test in vox1_meta.csv (id10270-id10309) are held out, all their "
                        "utterances in test; the others keep iden_split train/validation and their iden_split test "
                        "utterances go to validation (nothing dropped)")

  avd = corpora.add_parser("avdigits", help="FSDD recordings paired with MNIST digits of the same class")
  avd.add_argument("--fsdd", required=True, help="FSDD root (holding recordings/)")
  avd.add_argument("--mnist", required=True, help="folder with t10k-images-idx3-ubyte.gz and t10k-labels-idx1-ubyte.gz")
  avd.add_argument("--out", required=True)
  avd.add_argument("--config", default="avdigits")
  avd.add_argument("--seed", type=int, default=0, help="seed of the audio-image pairing")
  avd.add_argument("--strict", action="store_true")
  avd.add_argument("--workers", type=int, default=0)

  syn = corpora.add_parser("synthetic", help="generate the built-in synthetic corpus and prepare it")
  syn.add_argument("--out", required=True, help="output folder; the raw corpus goes to OUT/raw")
  syn.add_argument("--identities", type=int, default=24)
  syn.add_argument("--seed", type=int, default=0)
  syn.add_argument("--split", choices=("closed", "open"), default="closed",
                   help="closed: new videos of seen identities in test; open: unseen identities in test")
  syn.add_argument("--config", default="synthetic")
  syn.add_argument("--workers", type=int, default=0)


def _run_prep(args) -> None:
  from data_prep import prepare
  if args.corpus == "voxceleb1":
    prepare.prepare_voxceleb1(args.root, args.out, config=args.config, strict=args.strict, workers=args.workers,
                              split_policy=args.split)
  elif args.corpus == "avdigits":
    prepare.prepare_avdigits(args.fsdd, args.mnist, args.out, config=args.config, seed=args.seed,
                             strict=args.strict, workers=args.workers)
  else:
    prepare.prepare_synthetic(args.out, identities=args.identities, seed=args.seed, split=args.split,
                              config=args.config, workers=args.workers)


def build_parser() -> argparse.ArgumentParser:
  parser = argparse.ArgumentParser(
      prog="mmvae", description="Multimodal VAEs for voices and faces: prepare, train, analyze, generate.")
  sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
  _add_prep(sub)

  train = sub.add_parser(
      "train", help="train an MS-VAE (resumes from WORKDIR if it holds checkpoints)",
      epilog="Any config key can be overridden: --config.train.batch_size=256 --config.parallel=sharded")
  train.add_argument("--config", required=True,
                     help="config name (reference, conv, synthetic, avdigits) or path.py[:variant]")
  train.add_argument("--data", required=True, help="prepared dataset folder (holding manifest.json)")
  train.add_argument("--workdir", required=True, help="run folder: checkpoints, metrics.jsonl, final.json")
  train.add_argument("--from", dest="init_from", default=None, metavar="CHECKPOINT",
                     help="start a new run from the parameters of a kept checkpoint of another run "
                          "(WORKDIR/checkpoints/last/N or best/N), e.g. to retry with a lower learning rate; the "
                          "optimizer and the step start fresh, so the whole schedule runs")
  train.add_argument("--allow-data-change", action="store_true",
                     help="resume a run on a dataset other than the one it started on (compared by the "
                          "fingerprint in manifest.json; recorded in run.json); refused otherwise")

  analyze = sub.add_parser("analyze", help="retrieval metrics, t-SNE, DBSCAN, generated faces -> WORKDIR/report/")
  analyze.add_argument("--workdir", required=True)
  analyze.add_argument("--data", default=None, help="prepared dataset (default: the one the run trained on)")
  analyze.add_argument("--split", default="test")

  generate = sub.add_parser("generate", help="generate one modality from the other with a trained run")
  gen_sub = generate.add_subparsers(dest="target", required=True, metavar="TARGET")
  face = gen_sub.add_parser("face", help="a face from a voice (one WAV file)")
  face.add_argument("--workdir", required=True)
  face.add_argument("--wav", required=True)
  face.add_argument("--out", required=True, help="PNG file to write")

  sweep = sub.add_parser(
      "sweep", help="train and analyse a grid of configs x seeds -> OUT/results.md and results.json (resumable)",
      epilog="A sweep file (experiments/sweeps/NAME.py) returns {'rows': [{'name', 'config', 'overrides'}], "
             "'seeds': [...], 'metrics': [...]} from get_sweep(). Rerunning the same command skips finished runs.")
  sweep.add_argument("--sweep", required=True, help="sweep name (experiments/sweeps/NAME.py) or path.py")
  sweep.add_argument("--out", required=True, help="output folder: runs/<row>/seed<s>/, data/, results.{md,json}")
  source = sweep.add_mutually_exclusive_group(required=True)
  source.add_argument("--data", help="one prepared dataset for every row")
  source.add_argument("--root", help="raw VoxCeleb1 root: prepared once per distinct data section into OUT/data/")
  sweep.add_argument("--parallel", type=int, default=0, help="runs at once (default: half the cores)")
  sweep.add_argument("--seeds", default=None, help="comma-separated training seeds (default: the sweep's)")
  sweep.add_argument("--rows", default=None, help="comma-separated row names to run (default: all)")
  sweep.add_argument("--split", default="test", help="split every run is analysed on")

  demo = sub.add_parser("demo", help="generate -> prepare -> train -> analyze on the built-in synthetic corpus")
  demo.add_argument("--workdir", default="runs/demo")
  demo.add_argument("--config", default="synthetic")
  demo.add_argument("--identities", type=int, default=24)
  demo.add_argument("--seed", type=int, default=0)
  return parser


def main(argv=None) -> int:
  argv = sys.argv[1:] if argv is None else list(argv)
  parser = build_parser()
  args, extra = parser.parse_known_args(argv)
  overrides = [a for a in extra if a.startswith("--config.")]
  unknown = [a for a in extra if not a.startswith("--config.")]
  if unknown or (overrides and args.command not in ("train", "demo")):
    parser.error(f"unrecognised arguments: {' '.join(unknown or overrides)}")
  try:
    if args.command == "prep":
      _run_prep(args)
    elif args.command == "train":
      from mmvae import config as config_lib
      config = config_lib.load(args.config, overrides)
      from mmvae.train import trainer
      trainer.train(config, args.data, args.workdir, allow_data_change=args.allow_data_change,
                    init_from=args.init_from)
    elif args.command == "analyze":
      from mmvae.analysis import report
      report.analyze(args.workdir, data_dir=args.data, split=args.split)
    elif args.command == "generate":
      from mmvae.analysis import generation
      generation.generate_face_from_wav(args.workdir, args.wav, args.out)
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
  except (FileNotFoundError, ValueError, KeyError, TypeError) as e:
    # Bad input, bad config: one clear line, not a traceback. MMVAE_DEBUG=1 shows the traceback.
    import os
    if os.environ.get("MMVAE_DEBUG"):
      raise
    print(f"mmvae {args.command}: error: {e}", file=sys.stderr)
    return 2
  return 0


if __name__ == "__main__":
  sys.exit(main())
