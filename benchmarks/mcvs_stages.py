"""Time per iteration as modalities are added: M-CVS's stage k against CVS trained on the same k modalities.

  python benchmarks/mcvs_stages.py --data data/mmdigits [--config mcvs] [--tiny] [--steps 30] [--json] [--plot F.png]

For every k from 2 to the number of modalities of the plan: M-CVS's stage that brings the space to k
modalities (the new branch and its attention blocks train, everything else is frozen: forward only) and
CVS (model.plan=joint) on the first k modalities (every branch and every pair's block train), each the
bare jitted train step on real batches of the prepared dataset, compilation excluded, the fastest of
three windows of --steps steps (the M-CVS paper's Fig. 3). --plot draws both curves.
"""

import argparse
import itertools
import json
import time

import jax
import numpy as np

from mmvae import config as config_lib
from mmvae import data, zoo
from mmvae.train import parallel
from mmvae.train import stages
from mmvae.train import step as step_lib

REPEATS = 3


def _time_step(cfg, dataset, names, steps: int) -> tuple[float, int]:
  """(seconds per iteration, trainable parameters) of cfg's train step on batches of the modalities `names`."""
  specs = dataset.modalities(names)
  model = zoo.of(cfg).build(cfg, specs, seed=0, num_classes=len(dataset.manifest["identities"]))
  tx = step_lib.make_optimizer(cfg.train, model)
  graphdef, state = step_lib.init_state(model, tx)
  mask = step_lib.trainable_mask(graphdef, state["params"])
  trainable = sum(int(np.size(p)) for p, keep in zip(jax.tree.leaves(state["params"]), jax.tree.leaves(mask)) if keep)
  runner = parallel.Runner(graphdef, tx, cfg, "sharded")
  dev_state = runner.put_state(jax.tree.map(np.asarray, state))
  batches = [data.batch_at(dataset, "train", cfg.train.batch_size, seed=0, step=s, pairing=cfg.data.pairing,
                           modality_names=tuple(names)) for s in range(min(steps, 8))]
  dev_state, m = runner.step(dev_state, batches[0])  # compile and warm up
  jax.block_until_ready(m)
  best = float("inf")
  for _ in range(REPEATS):  # the fastest of a few windows: the least disturbed by the rest of the machine
    t0 = time.perf_counter()
    for i in range(steps):
      dev_state, m = runner.step(dev_state, batches[i % len(batches)])
    jax.block_until_ready((dev_state, m))
    best = min(best, (time.perf_counter() - t0) / steps)
  return best, trainable


def measure(config: str, data_dir, steps: int, batch_size: int | None = None) -> list[dict]:
  """One row per k: M-CVS stage and CVS seconds per iteration and trainable parameters."""
  dataset = data.Dataset(data_dir)
  base = config_lib.load(config, [f"train.batch_size={batch_size}"] if batch_size else [])
  dataset.check_config(base)
  names = tuple(dataset.modalities(base.data.get("modalities", ())))
  plan = zoo.of(base).stages(base, names)
  order = list(itertools.chain(*plan))
  rows = []
  for stage in range(1, len(plan) + 1):
    k = len(list(itertools.chain(*plan[:stage])))
    staged = stages.stage_config(base, plan, stage)  # as `mmvae train` runs it: the space's modalities only
    joint = config_lib.load(config, ["model.plan=joint", "model.stage=0"] +
                            ([f"train.batch_size={batch_size}"] if batch_size else []))
    joint.model.stages = (tuple(order[:k]),)
    joint.data.modalities = tuple(order[:k])
    m_s, m_p = _time_step(staged, dataset, order[:k], steps)
    c_s, c_p = _time_step(joint, dataset, order[:k], steps)
    rows.append({"modalities": k, "added": ",".join(plan[stage - 1]), "mcvs_ms": 1e3 * m_s, "cvs_ms": 1e3 * c_s,
                 "mcvs_vs_cvs": m_s / c_s, "mcvs_trainable": m_p, "cvs_trainable": c_p})
  return rows


def plot(rows: list[dict], path) -> None:
  import matplotlib
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt
  k = [r["modalities"] for r in rows]
  fig, ax = plt.subplots(figsize=(4.5, 3.2))
  ax.plot(k, [r["cvs_ms"] for r in rows], "o-", label="CVS (all trained together)")
  ax.plot(k, [r["mcvs_ms"] for r in rows], "s-", label="M-CVS (stage k)")
  ax.set_xlabel("modalities in the space")
  ax.set_ylabel("ms per iteration")
  ax.set_xticks(k)
  ax.legend()
  ax.set_title("time per iteration as modalities are added")
  fig.tight_layout()
  fig.savefig(path, dpi=120)
  plt.close(fig)


def main(argv=None):
  p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  p.add_argument("--data", required=True, help="a prepared dataset with the config's modalities (mmvae prep mmdigits)")
  p.add_argument("--config", default="mcvs", help="config name or path (default: mcvs)")
  p.add_argument("--tiny", action="store_true", help="the config's :tiny variant (a smoke run)")
  p.add_argument("--steps", type=int, default=30, help="timed steps per row (default: 30)")
  p.add_argument("--batch-size", type=int, default=None, help="global batch (default: the config's)")
  p.add_argument("--json", action="store_true", help="print one JSON object per row instead of the table")
  p.add_argument("--plot", default=None, help="write the figure (time per iteration against modalities) here")
  args = p.parse_args(argv)
  config = f"{args.config}:tiny" if args.tiny else args.config
  rows = measure(config, args.data, args.steps, args.batch_size)
  if args.json:
    for r in rows:
      print(json.dumps(r))
  else:
    print(f"devices: {jax.device_count()} x {jax.devices()[0].device_kind}; config {config}")
    cols = ("modalities", "added", "mcvs_ms", "cvs_ms", "mcvs_vs_cvs", "mcvs_trainable", "cvs_trainable")
    print(" | ".join(f"{c:>14}" for c in cols))
    for r in rows:
      print(" | ".join(f"{r[c]:>14.4g}" if isinstance(r[c], float) else f"{r[c]:>14}" for c in cols))
  if args.plot:
    plot(rows, args.plot)


if __name__ == "__main__":
  main()
