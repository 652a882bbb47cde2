"""The pure train step over (graphdef, state): loss, gradients, gradient averaging, Adam update."""

import functools

import jax
import jax.numpy as jnp
import optax
from flax import nnx
from jax import lax

from mmvae import zoo
from mmvae.train import checkpoints as ckpt_lib

# Tags folded into the step key so the per-example stream and the per-step stream never collide.
_EXAMPLE_STREAM, _STEP_STREAM = 0, 1
_AUGMENT_TAG = 2  # folded into an example's key for its augmentation draws


SCHEDULES = ("cosine", "constant")


def check_schedule(train_cfg) -> None:
  """ValueError naming the key when the learning-rate schedule is unknown or its settings are out of range."""
  if train_cfg.lr_schedule not in SCHEDULES:
    raise ValueError(f"config.train.lr_schedule={train_cfg.lr_schedule!r} is unknown; use 'cosine' or 'constant'")
  if train_cfg.warmup_steps < 0:
    raise ValueError(f"config.train.warmup_steps={train_cfg.warmup_steps} must be >= 0 (0: no warmup)")


def check_augment(train_cfg) -> None:
  """ValueError naming the key when a face augmentation's setting is out of range (a config without it: off)."""
  jitter, crop, blur = (float(train_cfg.get(k, off)) for k, off in
                        (("face_color_jitter", 0.0), ("face_crop_scale", 1.0), ("face_blur", 0.0)))
  if not 0.0 <= jitter <= 1.0:
    raise ValueError(f"config.train.face_color_jitter={jitter} must be in [0, 1] (0: off)")
  if not 0.0 < crop <= 1.0:
    raise ValueError(f"config.train.face_crop_scale={crop} must be in (0, 1] (1: off)")
  if not 0.0 <= blur < float("inf"):
    raise ValueError(f"config.train.face_blur={blur} must be a finite sigma >= 0 pixels (0: off)")


def make_schedule(train_cfg):
  """Linear warmup from 0, then a cosine decay to 0 at num_steps or a constant rate."""
  check_schedule(train_cfg)
  lr = train_cfg.learning_rate
  warmup = max(0, int(train_cfg.warmup_steps))
  if train_cfg.lr_schedule == "cosine":
    schedule = optax.warmup_cosine_decay_schedule(
        0.0, lr, warmup_steps=warmup, decay_steps=max(train_cfg.num_steps, warmup + 1), end_value=0.0)
  else:  # constant
    schedule = optax.join_schedules([optax.linear_schedule(0.0, lr, warmup), optax.constant_schedule(lr)], [warmup])
  return schedule


def make_optimizer(train_cfg, model=None) -> optax.GradientTransformation:
  """Adam (AdamW when weight_decay > 0) on the warmup schedule, after global-norm clipping (grad_clip <= 0: none).

  model: when it freezes parameters (a staged model's `trainable(name)`), Adam keeps state for and updates
  only the trainable ones (optax.multi_transform), so a stage costs no optimizer work on the frozen rest.
  """
  schedule = make_schedule(train_cfg)
  parts = [optax.clip_by_global_norm(train_cfg.grad_clip)] if train_cfg.grad_clip > 0 else []
  decay = float(train_cfg.get("weight_decay", 0.0))
  if decay < 0:
    raise ValueError(f"config.train.weight_decay={decay} must be >= 0")
  tx = optax.chain(*parts, optax.adamw(schedule, weight_decay=decay) if decay > 0 else optax.adam(schedule))
  mask = trainable_mask(*nnx.split(model, nnx.Param)) if model is not None else None
  if mask is None:
    return tx
  labels = jax.tree.map(lambda keep: "train" if keep else "frozen", mask)
  return optax.multi_transform({"train": tx, "frozen": optax.set_to_zero()}, labels)


def init_state(model, tx):
  """(graphdef, state) with state = {'params', 'opt_state', 'step'}: a plain pytree pmap can carry."""
  graphdef, params = nnx.split(model, nnx.Param)
  return graphdef, {"params": params, "opt_state": tx.init(params), "step": jnp.zeros((), jnp.int32)}


def example_keys(seed: int, step, positions_B):
  """One key per example from (seed, step, global position in the global batch): device-independent."""
  step_key = jax.random.fold_in(jax.random.fold_in(jax.random.key(seed), _EXAMPLE_STREAM), step)
  return jax.vmap(lambda p: jax.random.fold_in(step_key, p))(positions_B)


def step_key(seed: int, step):
  """A key shared by the whole step (e.g. the sliced-Wasserstein directions)."""
  return jax.random.fold_in(jax.random.fold_in(jax.random.key(seed), _STEP_STREAM), step)


def loss_and_metrics(graphdef, params, batch, positions_B, step, config, axis_name=None, noise_step=None):
  """The loss of a (local) batch under params, with the step's per-example randomness."""
  model = nnx.merge(graphdef, params)
  noise_step = step if noise_step is None else noise_step
  keys_B = example_keys(config.train.seed, noise_step, positions_B)
  return zoo.of(config).loss(model, batch, keys_B, step_key(config.train.seed, noise_step), step, config.loss,
                            axis_name)


def augment(batch, seed: int, step, positions_B, train_cfg, specs: dict):
  """Training-time augmentation: every modality's kind hook `augment(x_B, flip_B, train_cfg, keys_B)` (the image
  kind mirrors left-right under train.face_flip and crops, blurs and colour-jitters under train.face_crop_scale,
  face_blur and face_color_jitter; the points kind turns clouds under train.rotate_points; a kind reads its own
  train.* options, most kinds return x as it is).

  One fair coin and one key per example from its (seed, step, global position) key, so it does not depend
  on the device count; the modalities of a pair share them. The batch itself when no kind changed anything.
  """
  keys_B = jax.vmap(lambda k: jax.random.fold_in(k, _AUGMENT_TAG))(example_keys(seed, step, positions_B))
  flip_B = jax.vmap(jax.random.bernoulli)(keys_B)
  draw_B = jax.vmap(lambda k: jax.random.fold_in(k, 1))(keys_B)  # independent of the coin
  out = {k: specs[k].kind_module.augment(v, flip_B, train_cfg, draw_B) if k in specs else v
         for k, v in batch.items()}
  return batch if all(out[k] is v for k, v in batch.items()) else out


def grads_and_metrics(graphdef, config, params, batch, positions_B, step, axis_name=None):
  """Gradients of the global-batch loss and its metrics; under pmap averaged over devices."""
  specs = getattr(nnx.merge(graphdef, params), "specs", {})  # static, read while tracing; a model may keep none
  batch = augment(batch, config.train.seed, step, positions_B, config.train, specs)
  grad_fn = jax.value_and_grad(
      lambda p: loss_and_metrics(graphdef, p, batch, positions_B, step, config, axis_name), has_aux=True)
  (_, metrics), grads = grad_fn(params)
  if axis_name is not None:
    # Every device holds an equal share of the global batch, so the mean of means is the global mean.
    grads = lax.pmean(grads, axis_name)
    metrics = lax.pmean(metrics, axis_name)
  metrics["grad_norm"] = optax.global_norm(grads)
  return grads, metrics


def trainable_mask(graphdef, params):
  """None when every parameter trains; else a tree of bools from the model's `trainable(name)` (a staged model).

  The names are the checkpoint's dotted parameter names; the decision is static (made while tracing).
  """
  model = nnx.merge(graphdef, params)
  if not isinstance(model, zoo.Trainable):
    return None
  return jax.tree_util.tree_map_with_path(lambda path, _: bool(model.trainable(ckpt_lib.param_name(path))), params)


def _frozen_to_zero(tree, mask):
  """`tree` with the leaves of frozen parameters replaced by zeros (XLA then drops their gradient work)."""
  return tree if mask is None else jax.tree.map(lambda x, keep: x if keep else jnp.zeros_like(x), tree, mask)


def train_step(graphdef, tx, config, state, batch, positions_B, axis_name=None):
  """One Adam update on the batch; a pure function of (state, batch) for pmap or jit.

  Frozen parameters (a model's `trainable(name)` is False) get zero gradients (their Adam moments, if the
  optimizer keeps any, do not move; XLA drops their backward work) and are not updated: bit-identical.
  """
  grads, metrics = grads_and_metrics(graphdef, config, state["params"], batch, positions_B, state["step"], axis_name)
  mask = trainable_mask(graphdef, state["params"])
  grads = _frozen_to_zero(grads, mask)
  if mask is not None:  # the norm of what trains (summing the frozen zeros would cost a pass over them)
    metrics["grad_norm"] = optax.global_norm([g for g, keep in zip(jax.tree.leaves(grads), jax.tree.leaves(mask))
                                              if keep])
  updates, opt_state = tx.update(grads, state["opt_state"], state["params"])
  if mask is None:
    params = optax.apply_updates(state["params"], updates)
  else:  # a frozen parameter is passed through untouched (bit-identical, no work), whatever the optimizer
    params = jax.tree.map(lambda p, u, keep: jnp.asarray(p + u).astype(jnp.asarray(p).dtype) if keep else p,
                          state["params"], updates, mask)
  return {"params": params, "opt_state": opt_state, "step": state["step"] + 1}, metrics


def eval_metrics(graphdef, params, batch, positions_B, config):
  """Loss terms (full KL weight, fixed noise) and posterior means of a validation batch."""
  model = nnx.merge(graphdef, params)
  # The same noise at every evaluation and the annealing finished, so validation losses compare across steps.
  full_kl = jnp.int32(max(1, config.loss.kl_anneal_steps))
  _, metrics = loss_and_metrics(graphdef, params, batch, positions_B, full_kl, config, noise_step=jnp.int32(2**31 - 1))
  means = {m: model.encode(m, batch[m])[0] for m in batch if m != "label"}
  return metrics, means


def make_eval_fn(graphdef, config):
  """A jitted eval_metrics for one device."""
  return jax.jit(functools.partial(eval_metrics, graphdef, config=config))
