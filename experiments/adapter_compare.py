"""An audio adapter into a frozen pretrained image space against the same audio encoder trained end to end (AV-digits).

  python experiments/adapter_compare.py --data DATA --out runs/adapter [--steps 3000] [--seeds 0 1 2]

DATA is a prepared AV-digits dataset (`mmvae prep avdigits`). The steps, each an ordinary mmvae run or
command, in OUT:
  space/         the pretrained space: a contrastive image-text model (CLIP-like; no audio is seen)
  space.npz      `mmvae embed --modality image` of every example: the pretrained image embeddings
  joined/        `mmvae prep features --join DATA --embeddings space.npz --name image_space`
  end_to_end_S/  contrastive audio + image, both encoders trained (seed S)
  adapter_S/     contrastive audio + image_space with model.frozen_target=image_space: only the audio
                 encoder (the adapter) trains, into the frozen image space (seed S)
and prints audio->image mAP@50 (the M-CVS paper's map_top@50) of both, mean over seeds, with chance.
"""

import argparse
import json
import pathlib

import numpy as np

from mmvae import config as config_lib

KEY = "map_top@50"
TARGET = "image_space"


def _config(steps: int, seed: int, overrides=()):
  return config_lib.load("avdigits", ["model.kind=contrastive", f"train.num_steps={steps}", f"train.seed={seed}",
                                      "train.eval_every=500", "train.checkpoint_every=500", *overrides])


def _run(config, data, workdir: pathlib.Path) -> dict:
  """Trains (or resumes) and analyses one run; its metrics."""
  from mmvae.analysis import report
  from mmvae.train import entry
  if not (workdir / "report" / "metrics.json").is_file():
    entry.train(config, data, workdir)
    report.analyze(workdir)
  return json.loads((workdir / "report" / "metrics.json").read_text())


def compare(data, out, steps: int = 3000, seeds=(0, 1, 2)) -> tuple[str, dict]:
  """(markdown, summary) of the experiment; finished steps in OUT are reused."""
  from data_prep import join
  from mmvae import embed
  out = pathlib.Path(out)
  space = _run(_config(steps, 0, ["data.modalities=('image', 'text')"]), data, out / "space")
  if not (out / "space.npz").is_file():
    embed.export(out / "space", "image", out / "space.npz")
  if not (out / "joined" / "manifest.json").is_file():
    join.join_embeddings(data, out / "space.npz", TARGET, out / "joined")
  z = _config(steps, 0).model.latent_dim
  rows = []
  for seed in seeds:
    e2e = _run(_config(steps, seed, ["data.modalities=('audio', 'image')"]), data, out / f"end_to_end_{seed}")
    adapter = _run(_config(steps, seed, [f"data.modalities=('audio', '{TARGET}')", f"model.frozen_target={TARGET}",
                                         f"model.latent_dim={z}"]), out / "joined", out / f"adapter_{seed}")
    rows.append({"seed": seed, "e2e": e2e[f"retrieval.audio_to_image.{KEY}"],
                 "adapter": adapter[f"retrieval.audio_to_{TARGET}.{KEY}"],
                 "e2e_back": e2e[f"retrieval.image_to_audio.{KEY}"],
                 "adapter_back": adapter[f"retrieval.{TARGET}_to_audio.{KEY}"],
                 "chance": e2e[f"retrieval.audio_to_image.{KEY}_chance"]})
  mean = {k: float(np.mean([r[k] for r in rows])) for k in ("e2e", "adapter", "e2e_back", "adapter_back", "chance")}
  mean["ratio"] = mean["adapter"] / mean["e2e"]
  mean["space_image_to_text"] = space[f"retrieval.image_to_text.{KEY}"]
  lines = ["# Audio adapter into a frozen image space vs end to end (AV-digits, mAP@50)", "",
           f"Pretrained space: a contrastive image-text model, image->text mAP@50 {mean['space_image_to_text']:.3f}. "
           f"{steps} steps per run; chance {mean['chance']:.3f}.", "",
           "| seed | audio->image end to end | audio->image adapter | image->audio end to end | image->audio adapter |",
           "|---:|---:|---:|---:|---:|"]
  lines += [f"| {r['seed']} | {r['e2e']:.3f} | {r['adapter']:.3f} | {r['e2e_back']:.3f} | {r['adapter_back']:.3f} |"
            for r in rows]
  lines += [f"| mean | {mean['e2e']:.3f} | {mean['adapter']:.3f} | {mean['e2e_back']:.3f} | "
            f"{mean['adapter_back']:.3f} |", "",
            f"The adapter reaches {100 * mean['ratio']:.1f}% of end-to-end audio->image mAP@50."]
  return "\n".join(lines) + "\n", mean


def main(argv=None):
  p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  p.add_argument("--data", required=True, help="prepared AV-digits dataset (mmvae prep avdigits)")
  p.add_argument("--out", required=True, help="folder for the runs, the embeddings and the joined dataset")
  p.add_argument("--steps", type=int, default=3000, help="training steps per run (default: 3000)")
  p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2], help="training seeds (default: 0 1 2)")
  args = p.parse_args(argv)
  text, _ = compare(args.data, args.out, args.steps, tuple(args.seeds))
  print(text)
  (pathlib.Path(args.out) / "adapter_compare.md").write_text(text)


if __name__ == "__main__":
  main()
