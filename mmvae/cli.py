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
    prepare.prepare_voxceleb1(args.root, args.out, config=args.config, strict=args.strict, workers=args.workers)
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
      trainer.train(config, args.data, args.workdir)
    elif args.command == "analyze":
      from mmvae.analysis import report
      report.analyze(args.workdir, data_dir=args.data, split=args.split)
    elif args.command == "generate":
      from mmvae.analysis import generation
      generation.generate_face_from_wav(args.workdir, args.wav, args.out)
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
