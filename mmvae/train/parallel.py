"""Data parallelism over the same pure step: `jax.pmap` with lax.pmean, or `jit` over a 1-D NamedSharding mesh.

Multi-host: set MMVAE_DISTRIBUTED=1 (or JAX_COORDINATOR_ADDRESS, as cluster launchers do) and every
process calls `jax.distributed.initialize()` before touching devices; each process then feeds its
own slice of the global batch (see `Runner.local_slice`).
"""

import functools
import os

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from mmvae.train import step as step_lib

AXIS = "batch"
MODES = ("pmap", "sharded")


def maybe_initialize_distributed() -> bool:
  """Calls jax.distributed.initialize() only when a multi-host launch asks for it via the environment."""
  if os.environ.get("MMVAE_DISTRIBUTED") == "1" or os.environ.get("JAX_COORDINATOR_ADDRESS"):
    if not getattr(maybe_initialize_distributed, "done", False):
      jax.distributed.initialize()
      maybe_initialize_distributed.done = True
    return True
  return False


def check_batch_size(global_batch: int, num_devices: int) -> None:
  """The global batch must split evenly over every device of every host."""
  if global_batch < 1 or global_batch % num_devices:
    raise ValueError(f"config.train.batch_size={global_batch} must be a positive multiple of the device count "
                     f"({num_devices}); try --config.train.batch_size={max(1, global_batch // num_devices) * num_devices or num_devices}")


class Runner:
  """Places the train state on devices and runs the step in 'pmap' or 'sharded' mode."""

  def __init__(self, graphdef, tx, config, mode: str, devices=None):
    if mode not in MODES:
      raise ValueError(f"config.parallel={mode!r} is unknown; use one of {MODES}")
    self.mode = mode
    self.devices = list(devices) if devices is not None else jax.devices()
    self.local_devices = [d for d in self.devices if d.process_index == jax.process_index()]
    check_batch_size(config.train.batch_size, len(self.devices))
    self.global_batch = config.train.batch_size
    self.local_batch = self.global_batch // jax.process_count()
    fn = functools.partial(step_lib.train_step, graphdef, tx, config)
    if mode == "pmap":
      # Per-device copies stacked on a leading axis, as pmap expects them.
      self._stacked = NamedSharding(Mesh(np.array(self.local_devices), (AXIS,)), PartitionSpec(AXIS))
      self._step = jax.pmap(functools.partial(fn, axis_name=AXIS), axis_name=AXIS, devices=self.local_devices,
                            donate_argnums=(0,))
    else:
      self.mesh = Mesh(np.array(self.devices), (AXIS,))
      self._replicated = NamedSharding(self.mesh, PartitionSpec())
      self._split = NamedSharding(self.mesh, PartitionSpec(AXIS))
      self._step = jax.jit(fn, in_shardings=(self._replicated, self._split, self._split),
                           out_shardings=(self._replicated, self._replicated), donate_argnums=(0,))

  def local_slice(self) -> slice:
    """This process's rows of the global batch."""
    start = jax.process_index() * self.local_batch
    return slice(start, start + self.local_batch)

  def put_state(self, state):
    """Replicates a host state on every device."""
    if self.mode == "pmap":
      n = len(self.local_devices)
      stacked = jax.tree.map(lambda x: np.broadcast_to(np.asarray(x), (n,) + np.shape(x)), state)
      return jax.device_put(stacked, self._stacked)
    return jax.device_put(state, self._replicated)

  def host_state(self, state):
    """One copy of the state as NumPy arrays."""
    if self.mode == "pmap":
      state = jax.tree.map(lambda x: x[0], state)
    return jax.tree.map(np.asarray, jax.device_get(state))

  def _shard(self, x):
    if self.mode == "pmap":
      return x.reshape((len(self.local_devices), -1) + x.shape[1:])
    return jax.make_array_from_process_local_data(self._split, x)

  def step(self, state, batch: dict):
    """Runs one update on the global batch (this process's rows of it); metrics stay on device."""
    rows = self.local_slice()
    local = {k: np.asarray(v)[rows] if np.shape(v)[0] == self.global_batch else np.asarray(v)
             for k, v in batch.items()}
    positions = np.arange(self.global_batch, dtype=np.int32)[rows]
    state, metrics = self._step(state, {k: self._shard(v) for k, v in local.items()}, self._shard(positions))
    if self.mode == "pmap":
      metrics = jax.tree.map(lambda x: x[0], metrics)
    return state, metrics

  def lower(self, state, batch: dict):
    """The lowered step for cost analysis (FLOPs)."""
    positions = np.arange(self.global_batch, dtype=np.int32)
    local = {k: self._shard(np.asarray(v)) for k, v in batch.items()}
    return self._step.lower(state, local, self._shard(positions))
