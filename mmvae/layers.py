"""Building blocks every model and modality kind shares: MLP, set and conv encoders, decoder heads, initialisation."""

import math

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

_DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16}


def compute_dtype(name: str):
  """The JAX dtype of config.model.dtype."""
  if name not in _DTYPES:
    raise ValueError(f"config.model.dtype={name!r} is not supported; use one of {sorted(_DTYPES)}")
  return _DTYPES[name]


def decoder_widths(model_cfg) -> tuple[int, ...]:
  """A decoder trunk's widths from z outwards: config.model.decoder_hidden, else config.model.hidden reversed."""
  widths = tuple(int(w) for w in (model_cfg.get("decoder_hidden", ()) or tuple(reversed(model_cfg.hidden))))
  if not widths or min(widths) < 1:
    raise ValueError(f"config.model.decoder_hidden={widths} needs widths >= 1 (or () to mirror model.hidden)")
  return widths


class MLPEncoder(nnx.Module):
  """Flattens the input and maps it through an MLP to (mu, logvar) of q(z|x)."""

  def __init__(self, in_shape, hidden, latent_dim, dtype, rngs: nnx.Rngs):
    widths = (math.prod(in_shape),) + tuple(hidden)
    self.layers = nnx.List([nnx.Linear(a, b, dtype=dtype, rngs=rngs) for a, b in zip(widths[:-1], widths[1:])])
    self.head = nnx.Linear(widths[-1], 2 * latent_dim, dtype=dtype, rngs=rngs)
    self.dtype = dtype

  def __call__(self, x_BxD):
    h_BxH = x_BxD.reshape(x_BxD.shape[0], -1).astype(self.dtype)
    for layer in self.layers:
      h_BxH = nnx.relu(layer(h_BxH))
    mu_BxZ, logvar_BxZ = jnp.split(self.head(h_BxH).astype(jnp.float32), 2, axis=-1)
    return mu_BxZ, logvar_BxZ


_POOLS = {"mean": jnp.mean, "max": jnp.max}


class SetEncoder(nnx.Module):
  """A shared MLP on each element of [B, N, ...], pooled over N, then an MLPEncoder to (mu, logvar).

  The elements are a clip's frames or a cloud's points. Each pool in `pools` ('mean', 'max') gives one
  vector; they are concatenated. With pools=('max',) the output does not depend on the order of the
  elements (PointNet's symmetric function).
  """

  def __init__(self, element_dim, element_hidden, pools, hidden, latent_dim, dtype, rngs: nnx.Rngs):
    unknown = [p for p in pools if p not in _POOLS]
    if not pools or unknown:
      raise ValueError(f"SetEncoder pools={tuple(pools)} must name one or more of {sorted(_POOLS)}")
    widths = (int(element_dim),) + tuple(element_hidden)
    self.element = nnx.List([nnx.Linear(a, b, dtype=dtype, rngs=rngs) for a, b in zip(widths[:-1], widths[1:])])
    self.pools = tuple(pools)
    self.after = MLPEncoder((len(self.pools) * widths[-1],), hidden, latent_dim, dtype, rngs)
    self.dtype = dtype

  def __call__(self, x_BxNxD):
    h_BxNxH = x_BxNxD.reshape(x_BxNxD.shape[0], x_BxNxD.shape[1], -1).astype(self.dtype)
    for layer in self.element:
      h_BxNxH = nnx.relu(layer(h_BxNxH))
    return self.after(jnp.concatenate([_POOLS[p](h_BxNxH, axis=1) for p in self.pools], axis=-1))


# XLA CPU runs a convolution on one thread and a matmul on every core (README, Layers and speed). On the backends in
# CONV_AS_MATMUL a 2-D convolution y[p, q] = sum_{r, c} x[s p + r - top, s q + c - left] @ k[r, c] is computed with
# one matmul, the same multiply-adds to float rounding, in whichever of two forms keeps less in memory:
# - patches: the Kh*Kw shifted windows of x side by side, [B*Ho*Wo, Kh*Kw*I], times k as a [Kh*Kw*I, O] matrix
#   (any stride; Kh*Kw times x's channels, so used when O >= I or the stride is not 1);
# - shifted outputs: x [B*H*W, I] times every tap's [I, O] side by side, then the taps' [.., O] slices of the
#   product shifted and added (stride 1 only; Kh*Kw times the output's channels, so used when O < I).
# Their gradients are matmuls and shifted slices too.
CONV_AS_MATMUL = frozenset({"cpu"})


def shifted_matmul(x_BxHxWxI, terms, out_hw):
  """{key: y} with y[b, p, q] = sum over key's terms (dr, dc, k_IxO) of x[b, p + dr, q + dc] @ k (zero outside x),
  y of shape [B, Ho, Wo, O] (out_hw = (Ho, Wo)): one matmul of x by every term's kernel side by side, then shifted
  adds of the product's [.., O] slices. `terms` is a list of (key, dr, dc, k_IxO), all k of one shape."""
  b, h, w, i = x_BxHxWxI.shape
  ho, wo = out_hw
  o = terms[0][3].shape[-1]
  kernel = jnp.concatenate([k for *_, k in terms], -1)  # [I, n*O]
  u = (x_BxHxWxI.reshape(b * h * w, i) @ kernel).reshape(b, h, w, len(terms), o)
  drs, dcs = [t[1] for t in terms], [t[2] for t in terms]
  lo_r, lo_c = max(0, -min(drs)), max(0, -min(dcs))
  hi_r, hi_c = max(0, ho + max(drs) - h), max(0, wo + max(dcs) - w)
  u = jnp.pad(u, ((0, 0), (lo_r, hi_r), (lo_c, hi_c), (0, 0), (0, 0)))
  out = {}
  for n, (key, dr, dc, _) in enumerate(terms):
    term = u[:, lo_r + dr:lo_r + dr + ho, lo_c + dc:lo_c + dc + wo, n]
    out[key] = term if key not in out else out[key] + term
  return out


def conv2d(x_BxHxWxI, kernel_KhxKwxIxO, strides=(1, 1), padding="SAME"):
  """jax.lax.conv_general_dilated(x, kernel, strides, padding) with NHWC inputs and an HWIO kernel (padding 'SAME',
  'VALID' or ((top, bottom), (left, right)), each >= 0); one matmul on the backends in CONV_AS_MATMUL."""
  kh, kw, i, o = kernel_KhxKwxIxO.shape
  strides = tuple(strides)
  if isinstance(padding, str):
    padding = jax.lax.padtype_to_pads(x_BxHxWxI.shape[1:3], (kh, kw), strides, padding)
  (top, bottom), (left, right) = padding
  if min(top, bottom, left, right) < 0:  # XLA CPU convolves wrongly with one (openxla/xla#48713)
    raise ValueError(f"conv2d pads by >= 0, got {padding}")
  if jax.default_backend() not in CONV_AS_MATMUL:
    return jax.lax.conv_general_dilated(x_BxHxWxI, kernel_KhxKwxIxO, strides, padding,
                                        dimension_numbers=("NHWC", "HWIO", "NHWC"))
  b, h, w, _ = x_BxHxWxI.shape
  sh, sw = strides
  ho, wo = (h + top + bottom - kh) // sh + 1, (w + left + right - kw) // sw + 1
  if strides == (1, 1) and o < i:
    terms = [(0, r - top, c - left, kernel_KhxKwxIxO[r, c]) for r in range(kh) for c in range(kw)]
    return shifted_matmul(x_BxHxWxI, terms, (ho, wo))[0]
  x = jnp.pad(x_BxHxWxI, ((0, 0), (top, bottom), (left, right), (0, 0)))
  windows = [x[:, r:r + sh * (ho - 1) + 1:sh, c:c + sw * (wo - 1) + 1:sw] for r in range(kh) for c in range(kw)]
  patches = windows[0] if len(windows) == 1 else jnp.concatenate(windows, -1)  # channel (r*Kw + c)*I + i
  y = patches.reshape(b * ho * wo, kh * kw * i) @ kernel_KhxKwxIxO.reshape(kh * kw * i, o)
  return y.reshape(b, ho, wo, o)


def apply_conv(conv: nnx.Conv, x):
  """conv(x) for an un-dilated, ungrouped 2-D nnx.Conv with zero padding, through conv2d (so as a matmul on the
  backends in CONV_AS_MATMUL); the layer's dtype promotion and bias as nnx.Conv applies them."""
  strides = (conv.strides,) * 2 if isinstance(conv.strides, int) else tuple(conv.strides)
  plain = (len(conv.kernel_size) == 2 and conv.feature_group_count == 1 and conv.mask is None
           and conv.padding in ("SAME", "VALID") and conv.kernel_dilation in (1, (1, 1))
           and conv.input_dilation in (1, (1, 1)))
  if jax.default_backend() not in CONV_AS_MATMUL or not plain:
    return conv(x)
  kernel = conv.kernel[...]
  bias = None if conv.bias is None else conv.bias[...]
  x, kernel, bias = conv.promote_dtype((x, kernel, bias), dtype=conv.dtype)
  y = conv2d(x, kernel, strides, conv.padding)
  return y if bias is None else y + bias


class ConvEncoder(nnx.Module):
  """Stride-2 3x3 convolutions over an image [H, W, C] (or a spectrogram [T, F] as one channel)."""

  def __init__(self, in_shape, channels, latent_dim, dtype, rngs: nnx.Rngs, pool_time: bool):
    if len(in_shape) not in (2, 3):
      raise ValueError(f"a conv encoder needs a [T, F] spectrogram or an [S, S, C] image, got shape {in_shape}; "
                       "use the 'mlp' encoder (config.model.encoders) for vector inputs")
    self.add_channel = len(in_shape) == 2
    h, w, c = (*in_shape, 1) if self.add_channel else in_shape
    convs = []
    for ch in channels:
      convs.append(nnx.Conv(c, ch, (3, 3), strides=(2, 2), padding="SAME", dtype=dtype, rngs=rngs))
      h, w, c = -(-h // 2), -(-w // 2), ch
    self.convs = nnx.List(convs)
    # Spectrograms are averaged over time (as in VGGVox) so the head does not grow with the clip length.
    self.pool_time = pool_time
    flat = (w * c) if pool_time else (h * w * c)
    self.head = nnx.Linear(flat, 2 * latent_dim, dtype=dtype, rngs=rngs)
    self.dtype = dtype

  def __call__(self, x_BxHxW):
    h = x_BxHxW.astype(self.dtype)
    if self.add_channel:
      h = h[..., None]
    for conv in self.convs:
      h = nnx.relu(apply_conv(conv, h))
    if self.pool_time:
      h = h.mean(axis=1)
    mu_BxZ, logvar_BxZ = jnp.split(self.head(h.reshape(h.shape[0], -1)).astype(jnp.float32), 2, axis=-1)
    return mu_BxZ, logvar_BxZ


class MLPHead(nnx.Module):
  """One linear map from the shared trunk to a flattened output of `out_shape`."""

  def __init__(self, in_dim, out_shape, dtype, rngs: nnx.Rngs):
    self.out_shape = tuple(out_shape)
    self.linear = nnx.Linear(in_dim, math.prod(out_shape), dtype=dtype, rngs=rngs)

  def __call__(self, h_BxH):
    return self.linear(h_BxH).astype(jnp.float32).reshape((h_BxH.shape[0],) + self.out_shape)


# How a conv head doubles its grid (config.model.upsample, per modality): 'transpose' (a stride-2 transposed
# convolution), 'resize' (nearest-neighbour x2, then a 3x3 convolution) or 'subpixel' (a 3x3 convolution to 4x
# the channels, then depth-to-space). XLA CPU computes a transposed convolution's kernel gradient at 2-10 GFLOP/s,
# so on a CPU 'transpose' and 'resize' run by output phases (upsample2_by_phases; benchmarks/conv_upsample.py
# times both ways). A head not named stays 'transpose'. Under an
# image's sigmoid output, 'resize' and 'subpixel' collapse on AV-digits with a conv image decoder (300 steps,
# validation image log-lik: transpose -848, resize -2404, subpixel -2422): their pre-activations run far negative
# and the flat sigmoid passes no gradient. With config.model.output.image='linear' resize reaches -180 and transpose
# -257 (README, "Layers and speed").
UPSAMPLES = ("transpose", "resize", "subpixel")
DEFAULT_UPSAMPLE = "transpose"


def upsample_of(model_cfg, name: str) -> str:
  """config.model.upsample[name], else DEFAULT_UPSAMPLE; 'transpose' for a config written before the key existed."""
  table = model_cfg.get("upsample")
  if table is None:  # a stored config.json of an older mmvae: its conv heads were transposed convolutions
    return "transpose"
  choice = table.get(name, DEFAULT_UPSAMPLE)
  if choice not in UPSAMPLES:
    raise ValueError(f"config.model.upsample.{name}={choice!r} is not supported; use one of {', '.join(UPSAMPLES)}")
  return choice


def depth_to_space(x_BxHxWxC, r: int):
  """[B, H, W, r*r*C] -> [B, r*H, r*W, C]: channel (i*r + j)*C + c goes to pixel (r*h + i, r*w + j), channel c."""
  b, h, w, c = x_BxHxWxC.shape
  x = x_BxHxWxC.reshape(b, h, w, r, r, c // (r * r)).transpose(0, 1, 3, 2, 4, 5)
  return x.reshape(b, h * r, w * r, c // (r * r))


def resize_nearest2(x_BxHxWxC):
  """[B, H, W, C] -> [B, 2H, 2W, C], each pixel repeated 2x2 (jax.image.resize 'nearest' at scale 2)."""
  b, h, w, c = x_BxHxWxC.shape
  return jnp.broadcast_to(x_BxHxWxC[:, :, None, :, None], (b, h, 2, w, 2, c)).reshape(b, 2 * h, 2 * w, c)


# The initial spread of 'resize' and 'subpixel' layers. A stride-2 transposed 3x3 convolution reaches each output
# pixel through 9/4 of its taps on average, so at Flax's default (variance 1/fan_in over all 9 taps) its output
# variance is about 1/4 of its input's; a plain 3x3 convolution keeps it. Initialised at the default, 'resize'
# and 'subpixel' heads started with 6-7x the transposed head's output spread (3 layers; tests/mmvae/
# test_upsample.py). Variance 1/(4 fan_in) starts every variant alike; it did not stop the collapse on AV-digits
# described at UPSAMPLES.
UPSAMPLE_INIT = nnx.initializers.variance_scaling(0.25, "fan_in", "truncated_normal")


def _icnr(init):
  """ICNR (Aitken et al. 2017): a sub-pixel kernel [3, 3, in, 4 out] whose four sub-pixel positions share one
  [3, 3, in, out] draw of `init`, so that at initialisation conv + depth-to-space equals nearest-neighbour resize
  then convolution (no checkerboard at the start); the four copies then train apart."""

  def icnr(key, shape, dtype=jnp.float32):
    *window, fan_in, wide = shape
    return jnp.tile(init(key, (*window, fan_in, wide // 4), dtype), (1,) * len(window) + (1, 4))
  return icnr


# Both x2 upsamplings of a 3x3 kernel, computed at the input's resolution (XLA CPU; the same function to float
# rounding, with the same parameters). Output row 2h+a (phase a) sees input rows h+d, d in (-1, 0, 1), through some
# of the kernel's three taps: PHASE_TAPS[mode][a][d + 1] lists them (per axis; a 2-D phase takes the outer product).
# - 'resize': a 3x3 SAME convolution of the nearest-neighbour x2 grid. Its taps 0, 1, 2 at output row 2h read grid
#   rows 2h-1, 2h, 2h+1, copies of input rows h-1, h, h: phase 0 reads tap 0 at offset -1 and taps 1+2 (summed) at
#   0; at row 2h+1 they read copies of h, h, h+1: phase 1 reads taps 0+1 at 0 and tap 2 at +1.
#   Four 2x2 convolutions: 4/9 of the multiply-adds of convolving the x2 grid.
# - 'transpose': Flax's stride-2 SAME ConvTranspose (transpose_kernel=False) sends input row h to output rows 2h,
#   2h+1, 2h+2 through taps 2, 1, 0; so phase 0 reads tap 0 at offset -1 and tap 2 at 0, phase 1 tap 1 at 0.
#   Four convolutions of 2x2, 2x1, 1x2 and 1x1 taps: the transposed convolution's own multiply-adds, without XLA
#   CPU's slow kernel gradient of a transposed convolution.
UPSAMPLE_BY_PHASES = frozenset({"cpu"})  # the backends that compute 'transpose' and 'resize' by phases
PHASE_TAPS = {
    "resize": (((0,), (1, 2), ()), ((), (0, 1), (2,))),
    "transpose": (((0,), (2,), ()), ((), (1,), ())),
}


def _phase_kernel(kernel_3x3xIxO, mode: str, a: int, b: int):
  """The kernel phase (a, b) applies at the input's resolution: [3, 3, I, O] over offsets (-1, 0, 1) per axis."""
  taps = np.zeros((2, 3, 3), np.float32)  # [phase, offset, tap]
  for phase, per_offset in enumerate(PHASE_TAPS[mode]):
    for d, used in enumerate(per_offset):
      taps[phase, d, list(used)] = 1.0
  return jnp.einsum("di,ej,ijco->deco", taps[a], taps[b], kernel_3x3xIxO)  # summed in the kernel's own dtype


def _offsets(mode: str, a: int) -> tuple[int, int]:
  """The first and last input offset (-1, 0 or 1) phase a reads along one axis."""
  used = [d - 1 for d, taps in enumerate(PHASE_TAPS[mode][a]) if taps]
  return used[0], used[-1]


def upsample2_by_phases(x_BxHxWxI, kernel_3x3xIxO, bias_O, mode: str):
  """[B, H, W, I] -> [B, 2H, 2W, O]: the 'resize' or 'transpose' x2 upsampling of ConvHead, computed at the input's
  resolution: output phase (a, b) (pixels (2h + a, 2w + b)) is a small convolution of x with the phase's taps
  (PHASE_TAPS), and the four phases are interleaved (depth-to-space). With few output channels (an output layer:
  1 or 3) all phases' taps are one matmul of x and shifted adds (shifted_matmul); otherwise each phase is its own
  conv2d, which XLA CPU runs faster at these widths. The phases' tap sums are made in the kernel's dtype (the
  float32 parameters) and then cast to x's (the compute dtype)."""
  b, h, w, _ = x_BxHxWxI.shape
  o = kernel_3x3xIxO.shape[-1]
  windows = {}  # phase -> (its kernel over the offsets it reads, (first, last) row offset, (first, last) column)
  for i in range(2):
    for j in range(2):
      (r0, r1), (c0, c1) = _offsets(mode, i), _offsets(mode, j)
      k = _phase_kernel(kernel_3x3xIxO, mode, i, j)[r0 + 1:r1 + 2, c0 + 1:c1 + 2].astype(x_BxHxWxI.dtype)
      windows[i, j] = (k, (r0, r1), (c0, c1))
  if 4 * o <= 16:
    phases = shifted_matmul(x_BxHxWxI, [(p, r0 + r, c0 + c, k[r, c]) for p, (k, (r0, _), (c0, _)) in windows.items()
                                        for r in range(k.shape[0]) for c in range(k.shape[1])], (h, w))
  else:
    phases = {p: conv2d(x_BxHxWxI, k, (1, 1), ((-r0, r1), (-c0, c1))) for p, (k, (r0, r1), (c0, c1)) in windows.items()}
  y = jnp.stack([jnp.stack([phases[i, j] for j in range(2)], 3) for i in range(2)], 2)  # [B, H, 2, W, 2, O]
  y = y.reshape(b, 2 * h, 2 * w, o)
  return y if bias_O is None else y + bias_O


class ConvHead(nnx.Module):
  """Upsampling x2 per layer from a small grid up to [H, W, C], cropped to size (T=297 is no power of 2).

  upsample: 'transpose', 'resize' or 'subpixel' (see UPSAMPLES); every one doubles the grid with a 3x3 kernel.
  """

  def __init__(self, in_dim, out_shape, channels, dtype, rngs: nnx.Rngs, upsample: str = "transpose"):
    if upsample not in UPSAMPLES:
      raise ValueError(f"config.model.upsample={upsample!r} is not supported; use one of {', '.join(UPSAMPLES)}")
    self.out_shape = tuple(out_shape)
    self.squeeze = len(out_shape) == 2
    h, w, c = (*out_shape, 1) if self.squeeze else out_shape
    n = len(channels)
    self.grid = (-(-h // 2**n), -(-w // 2**n), channels[-1])
    # The audio encoders pool over time, so z carries no timing: a spectrogram head maps z to one
    # frequency profile, broadcast over time plus a learned time-frequency bias (a full [T, F, C]
    # linear would hold ~80M weights for 297x512).
    self.time_invariant = self.squeeze
    out = math.prod(self.grid[1:]) if self.time_invariant else math.prod(self.grid)
    self.linear = nnx.Linear(in_dim, out, dtype=dtype, rngs=rngs)
    if self.time_invariant:
      # Zero on purpose, like any bias: the head starts as the plain broadcast profile.
      self.grid_bias = nnx.Param(jnp.zeros(self.grid, jnp.float32))
    outs = tuple(reversed(channels[:-1])) + (c,)
    ins = tuple(reversed(channels))
    self.upsample = upsample
    # 'deconvs' for every kind, so a stored 'transpose' run keeps its parameter names.
    if upsample == "transpose":
      self.deconvs = nnx.List([nnx.ConvTranspose(a, b, (3, 3), strides=(2, 2), padding="SAME", dtype=dtype, rngs=rngs)
                               for a, b in zip(ins, outs)])
    else:
      wide = 4 if upsample == "subpixel" else 1
      init = _icnr(UPSAMPLE_INIT) if upsample == "subpixel" else UPSAMPLE_INIT
      self.deconvs = nnx.List([nnx.Conv(a, wide * b, (3, 3), padding="SAME", kernel_init=init, dtype=dtype,
                                        rngs=rngs) for a, b in zip(ins, outs)])
    self.hw = (h, w)

  def _up(self, conv, g):
    if self.upsample == "subpixel":
      return depth_to_space(apply_conv(conv, g), 2)
    if jax.default_backend() in UPSAMPLE_BY_PHASES:  # the same function, faster on XLA CPU (README, speed)
      dtype = conv.dtype or g.dtype  # taps summed in the parameters' float32, then cast as the layer casts them
      bias = None if conv.bias is None else conv.bias[...].astype(dtype)
      return upsample2_by_phases(g.astype(dtype), conv.kernel[...], bias, self.upsample)
    return conv(g) if self.upsample == "transpose" else conv(resize_nearest2(g))

  def __call__(self, h_BxH):
    if self.time_invariant:
      g = self.linear(h_BxH).reshape((h_BxH.shape[0], 1) + self.grid[1:]) + self.grid_bias[...].astype(h_BxH.dtype)
    else:
      g = self.linear(h_BxH).reshape((h_BxH.shape[0],) + self.grid)
    g = nnx.relu(g)
    for i, deconv in enumerate(self.deconvs):
      g = self._up(deconv, g)
      if i < len(self.deconvs) - 1:
        g = nnx.relu(g)
    g = g[:, :self.hw[0], :self.hw[1]].astype(jnp.float32)
    return g[..., 0] if self.squeeze else g


# XLA's default CPU optimisation passes take seconds to compile the random-number programs of a
# large model; for a one-off initialisation the unoptimised program runs in a fraction of that.
_INIT_COMPILER_OPTIONS = {"xla_backend_optimization_level": 0, "xla_llvm_disable_expensive_passes": True}


def init_module(build, seed: int):
  """The module `build(rngs)` returns, each parameter drawn by its own layer's Flax initialiser.

  Every parameter kind starts as its layer declares (by default: Linear/Conv kernels LeCun-normal,
  biases zero, LayerNorm/BatchNorm scales one), and a parameter a module creates from a value (the
  zero log-sigma offsets, the zero grid bias) keeps that value. Keys come from nnx.Rngs(params=seed),
  so the draw depends on the seed and the module's structure, not on the device set.

  Start-up stays fast: the structure is traced once abstractly (config errors surface there, nothing
  allocated) and all initialisers run in one jitted program, compiled once instead of once per shape.
  """
  if isinstance(jnp.zeros(()), jax.core.Tracer):  # inside an eval_shape or jit: part of that program
    return build(nnx.Rngs(params=seed))
  graphdef, _ = nnx.split(nnx.eval_shape(lambda: build(nnx.Rngs(params=seed))))
  options = _INIT_COMPILER_OPTIONS if jax.default_backend() == "cpu" else None
  state = jax.jit(lambda: nnx.state(build(nnx.Rngs(params=seed))), compiler_options=options)()
  return nnx.merge(graphdef, state)
