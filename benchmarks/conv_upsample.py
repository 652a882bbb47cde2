"""Speed of the conv config's upsampling (decoder) and stride-2 (encoder) convolutions per variant on this machine.

  python benchmarks/conv_upsample.py [--batch 64] [--repeats 3] [--layers] [--encoder] [--step] [--json PATH]

Prints one table per part:
- heads: forward + backward (gradient of every parameter and of the input) of one ConvHead at the conv config's
  shapes (audio [297, 512], face [64, 64, 3], channels 32-256), per model.upsample variant; 'transpose' and
  'resize' as ConvHead computes them on a CPU (by output phases, each a matmul: layers.conv2d), by phases with
  XLA's convolutions ('(XLA conv)') and as XLA's own ops ('(XLA op)');
- --layers: the same for each upsampling layer alone (the kernel gradient of XLA CPU's transposed convolution is
  the slow part);
- --encoder: each stride-2 3x3 encoder convolution as layers.conv2d computes it on a CPU (patches @ kernel), as
  XLA's strided convolution, as space-to-depth + a 2x2 stride-1 convolution (the same function), and in NCHW
  layout;
- --step: the conv config's whole train step (forward, backward, Adam) per variant.
GFLOP are XLA's cost analysis of the compiled program (what the machine is asked to do, so a variant that does
more multiply-adds shows them); the time is the median of --repeats calls after one warm-up call.
"""

import argparse
import json
import math
import time

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from mmvae import layers

AUDIO = (297, 512)
FACE = (64, 64, 3)
CHANNELS = (32, 64, 128, 256)
HIDDEN = 512  # the conv config's decoder trunk width in front of the heads (model.hidden reversed)


def _time(fn, args, repeats):
  """(median wall seconds, median CPU seconds of this process, XLA GFLOP) of jitted fn(*args)."""
  compiled = jax.jit(fn).lower(*args).compile()
  cost = compiled.cost_analysis()
  cost = cost[0] if isinstance(cost, (list, tuple)) else cost
  jax.block_until_ready(compiled(*args))
  times, cpu = [], []
  for _ in range(repeats):
    t, c = time.perf_counter(), time.process_time()
    jax.block_until_ready(compiled(*args))
    times.append(time.perf_counter() - t)
    cpu.append(time.process_time() - c)
  return float(np.median(times)), float(np.median(cpu)), float(cost.get("flops", 0.0)) / 1e9


def _numbers(s, cs, gf):
  return {"ms": 1e3 * s, "cpu_ms": 1e3 * cs, "gflop": gf, "gflop_per_s": gf / s, "gflop_per_cpu_s": gf / cs}


def _fwd_bwd(module, x):
  """A function of (params, x) giving the gradients of sum(out^2)/2 wrt both: one forward + backward."""
  graphdef, params = nnx.split(module)

  def loss(p, x):
    return 0.5 * jnp.sum(jnp.square(nnx.merge(graphdef, p)(x)))
  return jax.grad(loss, argnums=(0, 1)), params


# (label, model.upsample, computed by phases, convolutions as matmuls): 'transpose' and 'resize' as ConvHead computes
# them on a CPU (one convolution per output phase at the input's resolution, layers.upsample2_by_phases, each a
# matmul, layers.conv2d), by phases with XLA's convolutions, and as XLA's own transposed convolution /
# resize-then-convolve (what ConvHead did before, and does on other backends).
VARIANTS = [("transpose", "transpose", True, True), ("transpose (XLA conv)", "transpose", True, False),
            ("transpose (XLA op)", "transpose", False, False), ("resize", "resize", True, True),
            ("resize (XLA conv)", "resize", True, False), ("resize (XLA op)", "resize", False, False),
            ("subpixel", "subpixel", False, True), ("subpixel (XLA conv)", "subpixel", False, False)]


class _ByPhases:
  """Within the block, ConvHead computes 'transpose' and 'resize' by phases (phases) and every 2-D convolution as a
  matmul (matmul) on this backend, or not."""

  def __init__(self, phases: bool, matmul: bool = True):
    self.on = {"UPSAMPLE_BY_PHASES": phases, "CONV_AS_MATMUL": matmul}

  def __enter__(self):
    self.saved = {name: getattr(layers, name) for name in self.on}
    for name, on in self.on.items():
      setattr(layers, name, frozenset({jax.default_backend()}) if on else frozenset())

  def __exit__(self, *exc):
    for name, value in self.saved.items():
      setattr(layers, name, value)


def heads(batch, repeats):
  rows = []
  for name, shape in (("audio", AUDIO), ("face", FACE)):
    h = jnp.asarray(np.random.default_rng(0).normal(size=(batch, HIDDEN)), jnp.float32)
    for label, mode, phases, matmul in VARIANTS:
      head = layers.ConvHead(HIDDEN, shape, CHANNELS, jnp.float32, nnx.Rngs(0), upsample=mode)
      fn, params = _fwd_bwd(head, h)
      with _ByPhases(phases, matmul):
        s, cs, gf = _time(fn, (params, h), repeats)
      rows.append({"part": f"head {name}", "variant": label, **_numbers(s, cs, gf)})
  return rows


def _layer(mode, phases, cin, cout, rng):
  """(kernel, apply(kernel, x)) of one upsampling layer, as ConvHead computes it (bias left out)."""
  dn = ("NHWC", "HWIO", "NHWC")
  if phases:
    k = jnp.asarray(rng.normal(size=(3, 3, cin, cout)) / math.sqrt(9 * cin), jnp.float32)
    return k, lambda k, x: layers.upsample2_by_phases(x, k, None, mode)
  if mode == "transpose":
    k = jnp.asarray(rng.normal(size=(3, 3, cin, cout)) / math.sqrt(9 * cin), jnp.float32)
    return k, lambda k, x: jax.lax.conv_transpose(x, k, (2, 2), "SAME", dimension_numbers=dn)
  k = jnp.asarray(rng.normal(size=(3, 3, cin, (4 if mode == "subpixel" else 1) * cout)) / math.sqrt(9 * cin),
                  jnp.float32)
  if mode == "resize":
    return k, lambda k, x: jax.lax.conv_general_dilated(layers.resize_nearest2(x), k, (1, 1), "SAME",
                                                        dimension_numbers=dn)
  return k, lambda k, x: layers.depth_to_space(layers.conv2d(x, k, (1, 1), "SAME"), 2)


def upsample_layers(batch, repeats, shape=AUDIO):
  """Each upsampling layer of a head (default the audio one, the larger) alone: forward + kernel and input grads."""
  rows = []
  h, w = -(-shape[0] // 16), -(-shape[1] // 16)
  ins = tuple(reversed(CHANNELS))
  outs = tuple(reversed(CHANNELS[:-1])) + ((shape[2],) if len(shape) == 3 else (1,))
  rng = np.random.default_rng(0)
  for cin, cout in zip(ins, outs):
    x = jnp.asarray(rng.normal(size=(batch, h, w, cin)), jnp.float32)
    for label, mode, phases, matmul in VARIANTS:
      k, apply = _layer(mode, phases, cin, cout, rng)
      grad = jax.grad(lambda k, x, apply=apply: 0.5 * jnp.sum(jnp.square(apply(k, x))), argnums=(0, 1))
      with _ByPhases(phases, matmul):
        s, cs, gf = _time(grad, (k, x), repeats)
      rows.append({"part": f"up {h}x{w} {cin}->{cout}", "variant": label, **_numbers(s, cs, gf)})
    h, w = 2 * h, 2 * w
  return rows


def _conv_nhwc(x, k):
  return jax.lax.conv_general_dilated(x, k, (2, 2), "SAME", dimension_numbers=("NHWC", "HWIO", "NHWC"))


def _conv_nchw(x, k):
  return jax.lax.conv_general_dilated(x, k, (2, 2), "SAME", dimension_numbers=("NCHW", "OIHW", "NCHW"))


def _conv_s2d(x, k):
  """The stride-2 3x3 SAME convolution as space-to-depth (2x2 blocks) + a 2x2 stride-1 convolution."""
  b, hh, ww, c = x.shape
  # SAME at stride 2 with a 3x3 kernel pads (top, bottom) = (p // 2, p - p // 2), p = max(3 - (2 - H % 2) ..)
  ph = max((-(-hh // 2) - 1) * 2 + 3 - hh, 0)
  pw = max((-(-ww // 2) - 1) * 2 + 3 - ww, 0)
  x = jnp.pad(x, ((0, 0), (ph // 2, ph - ph // 2 + 1), (pw // 2, pw - pw // 2 + 1), (0, 0)))
  oh, ow = -(-hh // 2), -(-ww // 2)
  x = x[:, :2 * (oh + 1), :2 * (ow + 1)]
  s = x.reshape(b, oh + 1, 2, ow + 1, 2, c).transpose(0, 1, 3, 2, 4, 5).reshape(b, oh + 1, ow + 1, 4 * c)
  k4 = jnp.pad(k, ((0, 1), (0, 1), (0, 0), (0, 0)))  # 3x3 -> 4x4, the extra taps zero
  k2 = k4.reshape(2, 2, 2, 2, c, k.shape[-1]).transpose(0, 2, 1, 3, 4, 5).reshape(2, 2, 4 * c, k.shape[-1])
  return jax.lax.conv_general_dilated(s, k2, (1, 1), "VALID", dimension_numbers=("NHWC", "HWIO", "NHWC"))


def encoder_layers(batch, repeats):
  """Each stride-2 convolution of the audio encoder ([297, 512] as one channel), forward + both gradients."""
  rows = []
  h, w, c = AUDIO[0], AUDIO[1], 1
  rng = np.random.default_rng(0)
  for cout in CHANNELS:
    x = jnp.asarray(rng.normal(size=(batch, h, w, c)), jnp.float32)
    k = jnp.asarray(rng.normal(size=(3, 3, c, cout)) / math.sqrt(9 * c), jnp.float32)
    ref = _conv_nhwc(x, k)
    assert np.allclose(_conv_s2d(x, k), ref, atol=1e-3 * float(jnp.abs(ref).max())), "space-to-depth differs"
    variants = {"patches @ kernel": (lambda x, k: layers.conv2d(x, k, (2, 2), "SAME"), x, k),
                "strided NHWC": (_conv_nhwc, x, k), "space-to-depth": (_conv_s2d, x, k),
                "strided NCHW": (_conv_nchw, x.transpose(0, 3, 1, 2), k.transpose(3, 2, 0, 1))}
    for name, (f, xi, ki) in variants.items():
      g = jax.grad(lambda k, x, f=f: 0.5 * jnp.sum(jnp.square(f(x, k))), argnums=(0, 1))
      s, cs, gf = _time(g, (ki, xi), repeats)
      rows.append({"part": f"enc {h}x{w} {c}->{cout}", "variant": name, **_numbers(s, cs, gf)})
    h, w, c = -(-h // 2), -(-w // 2), cout
  return rows


def train_steps(batch, repeats, variants):
  """The conv config's whole train step (forward, backward, Adam; as train_throughput.py builds it) per variant."""
  from mmvae import config as config_lib
  from mmvae import modalities, zoo
  from mmvae.train import parallel
  from mmvae.train import step as step_lib
  rows = []
  rng = np.random.default_rng(0)
  for mode in variants:
    cfg = config_lib.load("conv", [f"train.batch_size={batch}", f"model.upsample.audio={mode}",
                                   f"model.upsample.face={mode}"])
    specs = {"audio": modalities.Modality("audio", "spectrogram", AUDIO, "float32"),
             "face": modalities.Modality("face", "image", (1, *FACE), "uint8")}
    arrays = {"audio": rng.normal(size=(batch, *AUDIO)).astype(np.float32),
              "face": rng.uniform(size=(batch, *FACE)).astype(np.float32)}
    model = zoo.of(cfg).build(cfg, specs, seed=0, num_classes=0)
    tx = step_lib.make_optimizer(cfg.train)
    graphdef, state = step_lib.init_state(model, tx)
    runner = parallel.Runner(graphdef, tx, cfg, "sharded")
    dev_state = runner.put_state(jax.tree.map(np.asarray, state))
    cost = runner.lower(dev_state, arrays).compile().cost_analysis()
    cost = cost[0] if isinstance(cost, (list, tuple)) else cost
    dev_state, m = runner.step(dev_state, arrays)  # compile and warm up
    jax.block_until_ready(m)
    times, cpu = [], []
    for _ in range(repeats):
      t, c = time.perf_counter(), time.process_time()
      dev_state, m = runner.step(dev_state, arrays)
      jax.block_until_ready((dev_state, m))
      times.append(time.perf_counter() - t)
      cpu.append(time.process_time() - c)
    s, cs = float(np.median(times)), float(np.median(cpu))
    gf = float(cost.get("flops", 0.0)) * len(runner.devices) / 1e9
    rows.append({"part": f"conv step b{batch}", "variant": mode, **_numbers(s, cs, gf)})
  return rows


def main(argv=None):
  ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  ap.add_argument("--batch", type=int, default=64)
  ap.add_argument("--repeats", type=int, default=3)
  ap.add_argument("--layers", action="store_true", help="each upsampling layer of the audio head alone")
  ap.add_argument("--encoder", action="store_true", help="each stride-2 encoder convolution, three ways")
  ap.add_argument("--step", action="store_true", help="the conv config's whole train step per variant")
  ap.add_argument("--step-variants", default=",".join(layers.UPSAMPLES))
  ap.add_argument("--no-heads", action="store_true")
  ap.add_argument("--json", help="also write the rows as JSON here")
  args = ap.parse_args(argv)
  print(f"{jax.devices()[0].device_kind}, batch {args.batch}, median of {args.repeats}")
  print(f"{'part':<26} {'variant':<19} {'ms':>9} {'CPU ms':>9} {'GFLOP':>8} {'GFLOP/s':>8} {'GFLOP/CPU-s':>11}")
  rows = []
  parts = ([] if args.no_heads else [heads]) + ([upsample_layers] if args.layers else []) \
      + ([encoder_layers] if args.encoder else [])
  parts += [lambda b, r: train_steps(b, r, args.step_variants.split(","))] if args.step else []
  for part in parts:
    for row in part(args.batch, args.repeats):
      print(f"{row['part']:<26} {row['variant']:<19} {row['ms']:>9.1f} {row['cpu_ms']:>9.1f} {row['gflop']:>8.2f} "
            f"{row['gflop_per_s']:>8.1f} {row['gflop_per_cpu_s']:>11.1f}", flush=True)
      rows.append(row)
  if args.json:
    with open(args.json, "w") as f:
      json.dump(rows, f, indent=1)


if __name__ == "__main__":
  main()
