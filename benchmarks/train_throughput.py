"""Train-step throughput of the reference and conv configs: step time, samples/s, FLOPs, data wait.

  python benchmarks/train_throughput.py --batch-sizes 8,32 --steps 10 [--tiny] [--data DIR]
  python benchmarks/train_throughput.py --trainer --batch-sizes 1024 --steps 200
  python benchmarks/train_throughput.py --configs avdigits --data DIR --set model.kind=mopoe --json rows.json

FLOPs per sample come from XLA's cost analysis of the compiled step (forward + backward + Adam).
The data wait is the time blocked on the batch iterator over the total, with a prefetching
iterator over in-memory random arrays (or a prepared dataset via --data, through mmvae.data.Batches).

--trainer also runs the whole trainer (mmvae.train.entry.train: the prepared-dataset reader,
logging at the config's log_every, one validation and one checkpoint in the run, as with the config's
own cadence of one of each per eval_every steps) on a synthetic corpus prepared for the config, and
prints its samples/s beside the bare step's and their ratio. --repeats R times the two in turn R times and keeps
each one's fastest figure (on a shared machine other work only slows a figure down).

--set KEY=VALUE (repeatable) overrides every measured config (e.g. a sweep row's overrides); --json PATH
writes the rows as a JSON list, each with config, batch, step_ms, gflop_per_step, gflop_per_s and
peak_gflop_per_s (a jitted float32 jnp.dot of --peak-size, measured in the same run) among its fields.
"""

import argparse
import json
import pathlib
import tempfile
import time

import jax
import jax.numpy as jnp
import numpy as np

from mmvae import config as config_lib
from mmvae import modalities, zoo
from mmvae.train import parallel
from mmvae.train import step as step_lib


def _shapes(cfg):
  d = cfg.data
  frames = 1 + (d.segment_samples - int(d.sample_rate * d.window_ms / 1000)) // int(d.sample_rate * d.hop_ms / 1000)
  audio = (d.n_bins,) if d.time_average else (frames, d.n_bins)
  return {"audio": audio, "face": (d.face_size, d.face_size, 1 if d.grayscale else 3)}


def _specs(shapes):
  """The modalities a dataset of these model shapes declares: audio a spectrogram, face one image frame."""
  return {"audio": modalities.Modality("audio", "spectrogram", shapes["audio"], "float32"),
          "face": modalities.Modality("face", "image", (1, *shapes["face"]), "uint8")}


def _random_batches(shapes, batch_size, seed=0):
  rng = np.random.default_rng(seed)
  pool = {m: rng.uniform(size=(4 * batch_size,) + s).astype(np.float32) for m, s in shapes.items()}
  step = 0
  while True:
    idx = (np.arange(batch_size) + step * batch_size) % (4 * batch_size)
    yield {m: pool[m][idx] for m in pool}
    step += 1


def matmul_peak(n: int = 2048, reps: int = 10) -> float:
  """GFLOP/s of a jitted float32 n x n jnp.dot, the fastest of reps (the roofline's peak, as vs_pytorch.py measures
  it: other work on the machine only lowers it)."""
  rng = np.random.default_rng(0)
  a, b = (jax.device_put(rng.standard_normal((n, n), dtype=np.float32)) for _ in range(2))
  dot = jax.jit(jnp.dot)
  jax.block_until_ready(dot(a, b))
  times = []
  for _ in range(reps):
    t = time.perf_counter()
    jax.block_until_ready(dot(a, b))
    times.append(time.perf_counter() - t)
  return 2.0 * n**3 / min(times) / 1e9


def measure(name, batch_size, steps, tiny, data_dir=None, mode="sharded", data_workers=-1, overrides=()):
  cfg = config_lib.load(f"{name}:tiny" if tiny else name, [f"train.batch_size={batch_size}",
                                                           f"train.data_workers={data_workers}", *overrides])
  if data_dir:
    from mmvae import data
    dataset = data.Dataset(data_dir)
    dataset.check_config(cfg)
    specs = dataset.modalities(cfg.data.modalities)
    it = data.Batches(dataset, "train", batch_size, seed=0, prefetch=cfg.train.prefetch,
                      workers=data.worker_count(cfg.train.data_workers, dataset, "train"))
  else:
    shapes = _shapes(cfg)
    specs = _specs(shapes)
    it = _random_batches(shapes, batch_size)
  model = zoo.of(cfg).build(cfg, specs, seed=0, num_classes=0)
  tx = step_lib.make_optimizer(cfg.train)
  graphdef, state = step_lib.init_state(model, tx)
  runner = parallel.Runner(graphdef, tx, cfg, mode)
  dev_state = runner.put_state(jax.tree.map(np.asarray, state))
  first = next(it)
  cost = runner.lower(dev_state, first).compile().cost_analysis()
  cost = cost[0] if isinstance(cost, (list, tuple)) else cost
  # The cost is of one device's program in both modes (pmap, and jit once SPMD-partitioned): scale to all devices.
  flops = float(cost.get("flops", 0.0)) * len(runner.devices)
  dev_state, m = runner.step(dev_state, first)  # compile and warm up
  jax.block_until_ready(m)
  wait = 0.0
  t0 = time.perf_counter()
  for _ in range(steps):
    t = time.perf_counter()
    batch = next(it)
    wait += time.perf_counter() - t
    dev_state, m = runner.step(dev_state, batch)
  jax.block_until_ready((dev_state, m))
  total = time.perf_counter() - t0
  if hasattr(it, "close"):
    it.close()
  step_s = total / steps
  return {"config": cfg.name, "batch": batch_size, "step_ms": 1000 * step_s, "samples_per_s": batch_size / step_s,
          "mflop_per_sample": flops / batch_size / 1e6, "gflop_per_step": flops / 1e9,
          "gflop_per_s": flops / step_s / 1e9,
          "data_wait": wait / total}


def measure_trainer(name, batch_size, steps, tiny, data_dir, workdir, mode="sharded", data_workers=-1, overrides=()):
  """samples/s of the full trainer over `steps` steps (compilation excluded, as final.json times it)."""
  from mmvae.train import entry
  cfg = config_lib.load(f"{name}:tiny" if tiny else name,
                        [f"train.batch_size={batch_size}", f"train.num_steps={steps + 1}",
                         f"train.eval_every={steps + 1}", f"train.checkpoint_every={steps + 1}",
                         f"parallel={mode}", f"train.data_workers={data_workers}", *overrides])
  final = entry.train(cfg, data_dir, workdir)
  return {"trainer_samples_per_s": final["samples_per_second"], "trainer_data_wait": final["data_wait_fraction"],
          "trainer_steps_per_dispatch": final["steps_per_dispatch"]}


def prepared_synthetic(name, tiny, root) -> pathlib.Path:
  """A small synthetic corpus prepared with the config's input settings (8 identities)."""
  from data_prep import prepare
  out = pathlib.Path(root) / f"{name}{'-tiny' if tiny else ''}"
  if not (out / "manifest.json").is_file():
    prepare.prepare_synthetic(str(out), identities=8, seed=0, config=f"{name}:tiny" if tiny else name, workers=0)
  return out


def main(argv=None):
  p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  p.add_argument("--configs", default="reference,conv")
  p.add_argument("--batch-sizes", default="8,32")
  p.add_argument("--steps", type=int, default=10)
  p.add_argument("--tiny", action="store_true", help="tiny model variants (CPU smoke runs)")
  p.add_argument("--data", default=None, help="a prepared dataset to read batches from (must fit the config)")
  p.add_argument("--parallel", default="sharded", choices=parallel.MODES)
  p.add_argument("--data-workers", type=int, default=-1,
                 help="grain worker processes building batches from --data and in --trainer runs "
                      "(config.train.data_workers; default: -1, the config's auto choice)")
  p.add_argument("--trainer", action="store_true",
                 help="also run the full trainer loop on a synthetic corpus prepared for each config")
  p.add_argument("--work", default=None, help="where --trainer keeps its corpora and runs (default: a temporary folder)")
  p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                 help="a config override for every measured config (repeatable), e.g. --set model.kind=mopoe")
  p.add_argument("--json", default=None, metavar="PATH", help="also write the rows to PATH as a JSON list")
  p.add_argument("--peak-size", type=int, default=2048, help="n of the n x n jnp.dot that sets peak_gflop_per_s")
  p.add_argument("--repeats", type=int, default=1,
                 help="time the bare step (and --trainer's run) in turn this many times; each keeps its fastest")
  args = p.parse_args(argv)
  if args.repeats < 1:
    p.error("--repeats must be >= 1")
  print(f"devices: {jax.device_count()} x {jax.devices()[0].device_kind}; parallel={args.parallel}")
  peak = matmul_peak(args.peak_size)
  print(f"float32 jnp.dot {args.peak_size}^2: {peak:.1f} GFLOP/s" + (f"; overrides: {' '.join(args.set)}" if args.set else ""))
  cols = ("config", "batch", "step_ms", "samples_per_s", "mflop_per_sample", "gflop_per_s", "data_wait")
  if args.trainer:
    cols += ("trainer_samples_per_s", "trainer_vs_step", "trainer_data_wait", "trainer_steps_per_dispatch")
  print(" | ".join(f"{c:>16}" for c in cols))
  rows = []
  with tempfile.TemporaryDirectory(dir=args.work) as work:
    for name in args.configs.split(","):
      data_dir = args.data or (prepared_synthetic(name, args.tiny, work) if args.trainer else None)
      for b in (int(x) for x in args.batch_sizes.split(",")):
        # The bare step and the trainer timed in turn --repeats times; each keeps its fastest (other work on a
        # shared machine only ever slows a figure down).
        row, trainer = None, None
        for r in range(args.repeats):
          bare = measure(name, b, args.steps, args.tiny, args.data, args.parallel, args.data_workers, args.set)
          row = bare if row is None or bare["step_ms"] < row["step_ms"] else row
          if args.trainer:
            run = measure_trainer(name, b, args.steps, args.tiny, data_dir, pathlib.Path(work) / f"{name}-{b}-{r}",
                                  args.parallel, args.data_workers, args.set)
            better = trainer is None or run["trainer_samples_per_s"] > trainer["trainer_samples_per_s"]
            trainer = run if better else trainer
        row.update(peak_gflop_per_s=peak, overrides=list(args.set), repeats=args.repeats)
        if args.trainer:
          row.update(trainer)
          row["trainer_vs_step"] = row["trainer_samples_per_s"] / row["samples_per_s"]
        print(" | ".join(f"{row[c]:>16.4g}" if isinstance(row[c], float) else f"{row[c]:>16}" for c in cols),
              flush=True)
        rows.append(row)
        if args.json:  # rewritten after every row, so an interrupted run keeps what it measured
          pathlib.Path(args.json).write_text(json.dumps(rows, indent=1) + "\n")


if __name__ == "__main__":
  main()
