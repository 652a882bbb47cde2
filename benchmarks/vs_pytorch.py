"""mmvae's train step against the same step in PyTorch eager, on the public MS-VAE (config msvae_public).

  python benchmarks/vs_pytorch.py [--batch-sizes 10,64,256,1024] [--steps 50] [--json FILE]
                                  [--steps-per-dispatch K|auto]

Both sides run one Adam step of the same loss (visual 512-d and audio 128-d vectors; summed squared
self and cross reconstruction errors, KL to N(0, I), squared L2 between the two posterior samples) on
the same random batches, from the same initial parameters (mmvae's seed 0, copied into PyTorch).
PyTorch draws its noise with torch.randn each step; mmvae from its per-example keys.

mmvae runs through parallel.Runner ('sharded', one device), K steps per dispatch: by default the
trainer's 'auto' (trainer.auto_steps_for: from the step's FLOPs and msvae_public's cadence), or
--steps-per-dispatch K. 'blocked' is the median of steps timed one by one (each waited for); 'pipelined'
is steps dispatched back to back, waited for once, total / steps.
GFLOP/s is from XLA's cost analysis of the compiled step; % of peak is against the faster of a jitted
jnp.dot and torch.mm of two 2048 x 2048 float32 matrices (the fastest of 10), measured in the same run.
Every row times the optimizer bound, PyTorch and mmvae in turn --repeats times (default 3) and keeps each one's
fastest figure, since on a shared machine other work only ever slows a figure down.
The bounds are what mmvae could reach at most: 'Adam' is batch / the time of the optimizer update alone
(the same optimizer and steps per dispatch, fixed gradients: streaming parameters and both moments through
memory), 'roofline' adds the step's FLOPs at the jnp.dot peak; 'roofline/torch' is the largest
mmvae/torch ratio those two allow, and 'of roofline' is how much of it mmvae reaches (the roofline's step time over
its own, which does not depend on PyTorch).
Needs PyTorch: pip install -e '.[bench]'.
"""

import argparse
import json
import os
import statistics
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx

from mmvae import config as config_lib
from mmvae import modalities, zoo
from mmvae.train import parallel, trainer
from mmvae.train import step as step_lib

try:
  import torch
  from torch import nn
except ImportError:  # the bench extra; main() says how to install it
  torch = nn = None

CONFIG = "msvae_public"
SHAPES = {"visual": (512,), "audio": (128,)}
POOL = 4  # batches of random data, cycled


def specs() -> dict:
  """The two vector modalities of msvae_public, visual first (its noise key is index 0)."""
  return {m: modalities.Modality(m, "vector", s, "float32") for m, s in SHAPES.items()}


def check_config(cfg) -> None:
  """The PyTorch step implements this config's objective only: fail loudly if the config drifts."""
  lc, tc = cfg.loss, cfg.train
  expect = {"loss.likelihood": (lc.likelihood, "sse"), "loss.learn_sigma": (lc.learn_sigma, False),
            "loss.wasserstein": (lc.wasserstein, "sample_l2"), "loss.kl_anneal_steps": (lc.kl_anneal_steps, 0),
            "loss.num_samples": (lc.num_samples, 1), "train.grad_clip": (tc.grad_clip, 0.0),
            "train.warmup_steps": (tc.warmup_steps, 0), "train.lr_schedule": (tc.lr_schedule, "constant"),
            "train.weight_decay": (tc.get("weight_decay", 0.0), 0.0), "train.face_flip": (tc.face_flip, False)}
  for name in ("self_recon_weight", "cross_recon_weight", "kl_weight", "wasserstein_weight"):
    expect[f"loss.{name}"] = (lc[name], 1.0)
  for name in ("identity_weight", "infonce_weight", "triplet_weight"):
    expect[f"loss.{name}"] = (lc[name], 0.0)
  wrong = [f"{k}={v!r} (the PyTorch step assumes {want!r})" for k, (v, want) in expect.items() if v != want]
  if wrong:
    raise ValueError(f"config {cfg.name} no longer matches the PyTorch step: {'; '.join(wrong)}")


def build(batch_size: int):
  """(config, mmvae model) of msvae_public at this batch size, parameters from seed 0."""
  cfg = config_lib.load(CONFIG, [f"train.batch_size={batch_size}"])
  check_config(cfg)
  return cfg, zoo.of(cfg).build(cfg, specs(), seed=0, num_classes=0)


# --- PyTorch -------------------------------------------------------------------------------------


def _linear(layer):
  """A torch Linear holding a copy of an nnx.Linear (kernel [in, out] -> weight [out, in])."""
  kernel = np.asarray(layer.kernel[...], np.float32)
  out = nn.Linear(*kernel.shape)
  with torch.no_grad():
    out.weight.copy_(torch.from_numpy(kernel.T.copy()))
    out.bias.copy_(torch.from_numpy(np.array(layer.bias[...], np.float32)))
  return out


def _mlp(layers) -> "nn.Sequential":
  """Linear + ReLU for each layer."""
  return nn.Sequential(*[m for layer in layers for m in (_linear(layer), nn.ReLU())])


def linear_pairs(model, tmodel):
  """(name, nnx.Linear, torch Linear) of every layer of an mmvae MSVAE and its PyTorch copy."""
  for m in model.specs:
    enc, tenc = model.encoders[m], tmodel["encoders"][m]
    for i, layer in enumerate(enc.layers):
      yield f"encoders.{m}.layers.{i}", layer, tenc["layers"][2 * i]
    yield f"encoders.{m}.head", enc.head, tenc["head"]
  for i, layer in enumerate(model.decoder.trunk):
    yield f"decoder.trunk.{i}", layer, tmodel["trunk"][2 * i]
  for m in model.specs:
    yield f"decoder.heads.{m}", model.decoder.heads[m].linear, tmodel["heads"][m]


def torch_model_from_mmvae(model) -> "nn.ModuleDict":
  """The same MS-VAE in PyTorch with mmvae's current parameters copied in (float32, on the CPU).

  {'encoders': {m: {'layers': Linear+ReLU..., 'head': Linear to 2Z}}, 'trunk': Linear+ReLU...,
  'heads': {m: Linear}}, modalities in the model's order. decoder.log_sigma_offset is left out:
  the 'sse' loss does not read it.
  """
  names = list(model.specs)
  tmodel = nn.ModuleDict({
      "encoders": nn.ModuleDict({m: nn.ModuleDict({"layers": _mlp(model.encoders[m].layers),
                                                   "head": _linear(model.encoders[m].head)}) for m in names}),
      "trunk": _mlp(model.decoder.trunk),
      "heads": nn.ModuleDict({m: _linear(model.decoder.heads[m].linear) for m in names})})
  return tmodel


def torch_loss(tmodel, batch: dict, eps: dict):
  """(total, {term: value}) of msvae_public's loss: batch {m: [B, D]} and eps {m: [B, Z]} as torch tensors."""
  names = list(tmodel["heads"].keys())
  post, z, terms = {}, {}, {}
  for m in names:
    enc = tmodel["encoders"][m]
    mu, logvar = enc["head"](enc["layers"](batch[m])).chunk(2, dim=-1)
    post[m] = (mu, logvar)
    z[m] = mu + torch.exp(0.5 * logvar) * eps[m]
  for m in names:
    h = tmodel["trunk"](z[m])
    for n in names:
      terms[f"recon_{n}_from_{m}"] = ((tmodel["heads"][n](h) - batch[n])**2).sum(-1).mean()
    mu, logvar = post[m]
    terms[f"kl_{m}"] = (0.5 * (torch.exp(logvar) + mu**2 - 1.0 - logvar).sum(-1)).mean()
  a, v = names
  terms["wasserstein"] = ((z[a] - z[v])**2).sum(-1).mean()
  total = sum(terms.values())
  return total, terms


def torch_optimizer(tmodel, cfg):
  """torch Adam with optax.adam's constants (b1 0.9, b2 0.999, eps 1e-8) at the config's learning rate."""
  return torch.optim.Adam(tmodel.parameters(), lr=cfg.train.learning_rate, betas=(0.9, 0.999), eps=1e-8,
                          foreach=True)


def torch_step(tmodel, opt, batch: dict, eps: dict):
  """One Adam step; the loss (a tensor)."""
  opt.zero_grad(set_to_none=True)
  loss, _ = torch_loss(tmodel, batch, eps)
  loss.backward()
  opt.step()
  return loss


# --- timing --------------------------------------------------------------------------------------


def _sync(device):
  if device.type == "cuda":
    torch.cuda.synchronize(device)


def _best_time(fn, reps: int) -> float:
  """The fastest of reps calls: the peak is a bound, and other work on the machine only lowers it."""
  times = []
  for _ in range(reps):
    t = time.perf_counter()
    fn()
    times.append(time.perf_counter() - t)
  return min(times)


def matmul_peaks(n: int, reps: int, torch_device) -> dict:
  """GFLOP/s of an n x n float32 matmul in JAX (jitted jnp.dot) and in torch.mm, the fastest of reps."""
  rng = np.random.default_rng(0)
  a, b = (rng.standard_normal((n, n), dtype=np.float32) for _ in range(2))
  flops = 2.0 * n**3
  ja, jb = jax.device_put(a), jax.device_put(b)
  dot = jax.jit(jnp.dot)
  jax.block_until_ready(dot(ja, jb))
  jax_s = _best_time(lambda: jax.block_until_ready(dot(ja, jb)), reps)
  ta, tb = torch.from_numpy(a).to(torch_device), torch.from_numpy(b).to(torch_device)

  def mm():
    torch.mm(ta, tb)
    _sync(torch_device)

  mm()
  torch_s = _best_time(mm, reps)
  return {"jax": flops / jax_s / 1e9, "torch": flops / torch_s / 1e9}


def optimizer_seconds(cfg, model, per_dispatch: int, reps: int) -> float:
  """Seconds per step of the step's own optimizer update alone (fixed gradients, no forward or backward),
  K updates per call in a lax.scan with donated state, as the step runs them: a floor under any step time."""
  tx = step_lib.make_optimizer(cfg.train)
  _, state = step_lib.init_state(model, tx)
  # Copies: the update below donates its buffers, and the model's own must survive for the next call.
  params, opt_state = jax.tree.map(jnp.copy, (state["params"], state["opt_state"]))
  grads = jax.tree.map(lambda x: jnp.full_like(x, 1e-3), params)
  k = max(1, per_dispatch)

  def updates(params, opt_state):
    def one(carry, _):
      p, o = carry
      u, o = tx.update(grads, o, p)
      return (optax.apply_updates(p, u), o), None
    return jax.lax.scan(one, (params, opt_state), None, length=k)[0]

  run = jax.jit(updates, donate_argnums=(0, 1))
  params, opt_state = run(params, opt_state)
  jax.block_until_ready(params)
  times = []
  for _ in range(reps):
    t = time.perf_counter()
    params, opt_state = run(params, opt_state)
    jax.block_until_ready(params)
    times.append(time.perf_counter() - t)
  return statistics.median(times) / k


def _pool(batch_size: int) -> list[dict]:
  """POOL random batches {m: float32 [B, D]}, the same for both frameworks."""
  rng = np.random.default_rng(0)
  return [{m: rng.standard_normal((batch_size,) + s, dtype=np.float32) for m, s in SHAPES.items()}
          for _ in range(POOL)]


def _count(steps: int, step_s: float, budget_s: float, multiple: int = 1) -> int:
  """How many steps to time: `steps`, fewer when they would take over budget_s (at least 5); a multiple."""
  n = max(5, min(steps, int(budget_s / max(step_s, 1e-9))))
  return -(-n // multiple) * multiple


def time_torch(cfg, model, pool, steps: int, warmup: int, budget_s: float, device) -> dict:
  """Median seconds per PyTorch step (each synchronised) and the total / steps."""
  torch.manual_seed(0)
  tmodel = torch_model_from_mmvae(model).to(device)
  opt = torch_optimizer(tmodel, cfg)
  batches = [{m: torch.from_numpy(x).to(device) for m, x in b.items()} for b in pool]
  bsz, z_dim = cfg.train.batch_size, cfg.model.latent_dim

  def one(i):
    eps = {m: torch.randn(bsz, z_dim, device=device) for m in SHAPES}
    torch_step(tmodel, opt, batches[i % len(batches)], eps)
    _sync(device)

  for i in range(warmup):
    one(i)
  times, t_start, i = [], time.perf_counter(), 0
  while i < steps and (i < 5 or time.perf_counter() - t_start < budget_s):
    t = time.perf_counter()
    one(i)
    times.append(time.perf_counter() - t)
    i += 1
  return {"step_s": statistics.median(times), "steps": len(times)}


def time_mmvae(cfg, model, pool, steps: int, warmup: int, budget_s: float, per_dispatch: int) -> dict:
  """mmvae's step through parallel.Runner on one device: blocked and pipelined seconds per step, FLOPs."""
  tx = step_lib.make_optimizer(cfg.train)
  graphdef, state = step_lib.init_state(model, tx)
  runner = parallel.Runner(graphdef, tx, cfg, "sharded", devices=jax.devices()[:1])
  state = runner.put_state(jax.tree.map(np.asarray, state))
  cost = runner.lower(state, pool[0]).compile().cost_analysis()
  cost = cost[0] if isinstance(cost, (list, tuple)) else cost
  flops = float(cost.get("flops", 0.0))
  k = per_dispatch
  if k > 1:
    groups = [[pool[(j + i) % len(pool)] for i in range(k)] for j in range(len(pool))]
    dispatch = lambda s, j: runner.steps(s, groups[j % len(groups)])  # noqa: E731
  else:
    dispatch = lambda s, j: runner.step(s, pool[j % len(pool)])  # noqa: E731
  t = time.perf_counter()
  state, m = dispatch(state, 0)  # compiles (unless cached from the cost analysis)
  jax.block_until_ready((state, m))
  first_s = time.perf_counter() - t
  for j in range(max(1, warmup // k)):
    state, m = dispatch(state, j)
    jax.block_until_ready((state, m))
  times, t_start, j = [], time.perf_counter(), 0
  while j * k < steps and (j * k < 5 or time.perf_counter() - t_start < budget_s):
    t = time.perf_counter()
    state, m = dispatch(state, j)
    jax.block_until_ready((state, m))
    times.append(time.perf_counter() - t)
    j += 1
  blocked_s = statistics.median(times) / k
  n = _count(steps, blocked_s, budget_s, k)
  t = time.perf_counter()
  for j in range(n // k):
    state, m = dispatch(state, j)
  jax.block_until_ready((state, m))
  pipelined_s = (time.perf_counter() - t) / n
  return {"blocked_s": blocked_s, "pipelined_s": pipelined_s, "flops": flops, "blocked_steps": len(times) * k,
          "pipelined_steps": n, "first_step_s": first_s}


def dispatch_length(cfg, model, pool, per_dispatch) -> int:
  """K: an integer as given, or what the trainer's 'auto' picks for this config and batch on this platform."""
  if per_dispatch != "auto":
    return per_dispatch
  tx = step_lib.make_optimizer(cfg.train)
  graphdef, state = step_lib.init_state(model, tx)
  runner = parallel.Runner(graphdef, tx, cfg, "sharded", devices=jax.devices()[:1])
  return trainer.auto_steps_for(cfg, runner, runner.put_state(jax.tree.map(np.asarray, state)), pool[0])


def measure(batch_size: int, steps: int, warmup: int, budget_s: float, per_dispatch, peaks: dict,
            torch_device, optimizer_s, repeats: int = 1) -> dict:
  """One row of the table: both frameworks at this batch size, and the bounds the optimizer sets.

  per_dispatch: K or 'auto'. optimizer_s: a function of K timing the optimizer update alone (seconds per step).
  With repeats > 1 the optimizer, PyTorch and mmvae are timed in turn that many times and each keeps its fastest
  figure: a shared machine's other work only ever slows a figure down.
  """
  cfg, model = build(batch_size)
  pool = _pool(batch_size)
  per_dispatch = dispatch_length(cfg, model, pool, per_dispatch)
  runs = [(optimizer_s(per_dispatch), time_torch(cfg, model, pool, steps, warmup, budget_s, torch_device),
           time_mmvae(cfg, model, pool, steps, warmup, budget_s, per_dispatch)) for _ in range(max(1, repeats))]
  optimizer_s = min(r[0] for r in runs)
  tt = min((r[1] for r in runs), key=lambda t: t["step_s"])
  mt = {**runs[0][2], "blocked_s": min(r[2]["blocked_s"] for r in runs),
        "pipelined_s": min(r[2]["pipelined_s"] for r in runs)}
  best_s = min(mt["blocked_s"], mt["pipelined_s"])
  roofline_s = optimizer_s + mt["flops"] / (peaks["jax"] * 1e9)
  peak = max(peaks.values())
  gflops = mt["flops"] / best_s / 1e9
  return {
      "batch": batch_size,
      "torch_samples_per_s": batch_size / tt["step_s"],
      "mmvae_samples_per_s": batch_size / best_s,
      "mmvae_blocked_samples_per_s": batch_size / mt["blocked_s"],
      "mmvae_pipelined_samples_per_s": batch_size / mt["pipelined_s"],
      "ratio": tt["step_s"] / best_s,
      "mmvae_gflop_per_s": gflops,
      "torch_gflop_per_s": mt["flops"] / tt["step_s"] / 1e9,  # the same work, XLA's count
      "peak_gflop_per_s": peak,
      "jax_peak_gflop_per_s": peaks["jax"],
      "torch_peak_gflop_per_s": peaks["torch"],
      "percent_of_peak": 100.0 * gflops / peak,
      "torch_step_ms": 1000 * tt["step_s"],
      "mmvae_blocked_step_ms": 1000 * mt["blocked_s"],
      "mmvae_pipelined_step_ms": 1000 * mt["pipelined_s"],
      "mflop_per_step": mt["flops"] / 1e6,
      "torch_steps": tt["steps"],
      "mmvae_blocked_steps": mt["blocked_steps"],
      "mmvae_pipelined_steps": mt["pipelined_steps"],
      "mmvae_first_dispatch_s": mt["first_step_s"],
      "steps_per_dispatch": per_dispatch,
      # Upper bounds on mmvae's samples/s: the optimizer update alone, and that plus the step's FLOPs at the
      # jnp.dot peak (XLA's count includes the update's few FLOPs, so this one is an estimate).
      "optimizer_ms": 1000 * optimizer_s,
      "optimizer_bound_samples_per_s": batch_size / optimizer_s,
      "roofline_samples_per_s": batch_size / roofline_s,
      "roofline_ratio": tt["step_s"] / roofline_s,
      # How close mmvae is to its roofline: its ratio over roofline/torch, i.e. roofline step time / its own.
      "roofline_fraction": roofline_s / best_s,
  }


COLUMNS = (("batch", "batch", "d"), ("torch samples/s", "torch_samples_per_s", ".0f"),
           ("mmvae blocked", "mmvae_blocked_samples_per_s", ".0f"),
           ("mmvae pipelined", "mmvae_pipelined_samples_per_s", ".0f"), ("mmvae/torch", "ratio", ".2f"),
           ("mmvae GFLOP/s", "mmvae_gflop_per_s", ".1f"), ("% of peak", "percent_of_peak", ".1f"),
           ("bound: Adam", "optimizer_bound_samples_per_s", ".0f"), ("bound: roofline", "roofline_samples_per_s", ".0f"),
           ("roofline/torch", "roofline_ratio", ".2f"), ("of roofline", "roofline_fraction", ".0%"),
           ("K", "steps_per_dispatch", "d"))


def _per_dispatch(value: str):
  """--steps-per-dispatch: an integer >= 1 or 'auto'."""
  if value == "auto":
    return value
  if not value.isdigit() or int(value) < 1:
    raise argparse.ArgumentTypeError(f"{value!r} is not an integer >= 1 or 'auto'")
  return int(value)


def main(argv=None):
  p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  p.add_argument("--batch-sizes", default="10,64,256,1024")
  p.add_argument("--steps", type=int, default=50, help="timed steps per figure (fewer past --budget seconds)")
  p.add_argument("--warmup", type=int, default=3, help="untimed steps after compilation")
  p.add_argument("--budget", type=float, default=20.0, help="seconds per timed figure before it stops early")
  p.add_argument("--steps-per-dispatch", type=_per_dispatch, default="auto",
                 help="K > 1: mmvae runs K steps per call (Runner.steps), timed per call / K; 'auto' (default): "
                      "the trainer's default, K per batch size from the step's FLOPs")
  p.add_argument("--repeats", type=int, default=3,
                 help="time the optimizer bound, PyTorch and mmvae in turn this many times; each keeps its fastest")
  p.add_argument("--peak-size", type=int, default=2048, help="n of the n x n matmuls that set the peak")
  p.add_argument("--torch-device", default=None, help="default: cuda when available, else cpu")
  p.add_argument("--json", default=None, help="write the rows, one per batch size, to this file")
  p.add_argument("--matmul-precision", default="float32", choices=("float32", "tensorfloat32"),
                 help="GPU float32 matmuls in both frameworks: true float32 (PyTorch's default) or TF32")
  args = p.parse_args(argv)
  if torch is None:
    sys.exit("benchmarks/vs_pytorch.py needs PyTorch: pip install -e '.[bench]'")
  # The same arithmetic on both sides: XLA on GPU may use TF32 for float32 dots unless told otherwise.
  jax.config.update("jax_default_matmul_precision", args.matmul_precision)
  torch.backends.cuda.matmul.allow_tf32 = args.matmul_precision == "tensorfloat32"
  if args.steps_per_dispatch != 1 and not hasattr(parallel.Runner, "steps"):
    sys.exit(f"--steps-per-dispatch {args.steps_per_dispatch} needs parallel.Runner.steps, which this mmvae lacks")
  torch_device = torch.device(args.torch_device or ("cuda" if torch.cuda.is_available() else "cpu"))
  dev = jax.devices()[0]
  cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
  print(f"jax {jax.__version__}: {dev.platform} {dev.device_kind} (1 of {jax.device_count()} devices used); "
        f"torch {torch.__version__}: {torch_device}, {torch.get_num_threads()} intra-op / "
        f"{torch.get_num_interop_threads()} inter-op threads; {cpus} CPUs")
  peaks = matmul_peaks(args.peak_size, 10, torch_device)
  print(f"fp32 matmul {args.peak_size}^2: jax {peaks['jax']:.1f} GFLOP/s, torch {peaks['torch']:.1f} GFLOP/s; "
        f"peak = {max(peaks.values()):.1f}")
  cfg, model = build(10)
  optimizer_s = lambda k: optimizer_seconds(cfg, model, k, 20)  # noqa: E731
  k0 = 1 if args.steps_per_dispatch == "auto" else args.steps_per_dispatch
  print(f"optimizer update alone ({sum(x.size for x in jax.tree.leaves(nnx.state(model, nnx.Param)))} parameters, "
        f"steps-per-dispatch {k0}): {1000 * optimizer_s(k0):.2f} ms per step")
  print(f"config {CONFIG}; matmul precision {args.matmul_precision}; steps-per-dispatch {args.steps_per_dispatch}; samples/s = batch / step time "
        f"(torch and mmvae blocked: median step; pipelined: total / steps)")
  print(" | ".join(f"{name:>15}" for name, _, _ in COLUMNS), flush=True)
  rows = []
  for b in (int(x) for x in args.batch_sizes.split(",")):
    row = measure(b, args.steps, args.warmup, args.budget, args.steps_per_dispatch, peaks, torch_device, optimizer_s,
                  args.repeats)
    rows.append(row)
    print(" | ".join(f"{row[key]:>15{fmt}}" for _, key, fmt in COLUMNS), flush=True)
  if args.json:
    with open(args.json, "w") as f:
      json.dump(rows, f, indent=2)
    print(f"wrote {args.json}")


if __name__ == "__main__":
  main()
