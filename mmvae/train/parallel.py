"""Data parallelism over the same pure step: `jit` over a 1-D NamedSharding mesh (default), or `jax.pmap`.

Multi-host: every process runs the same command and calls `jax.distributed.initialize()` before touching
devices (see `maybe_initialize_distributed`); each process then feeds only its own rows of every global
batch (`Runner.local_slice`). Both modes map over the devices of all processes, in process order, so
process p's rows sit on its own devices: `jit` gets them via `make_array_from_process_local_data`,
`pmap` (given the global device list, as JAX asks of multi-process runs) via its host-local inputs.
Proven on CPU with 2 processes x 2 devices against 1 x 4 (tests/mmvae/train/test_multihost.py).
"""

import functools
import os

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from mmvae.train import step as step_lib

AXIS = "batch"
MODES = ("pmap", "sharded")


def _env(*names: str):
  """The first of the environment variables `names` that is set and not empty."""
  return next((os.environ[n] for n in names if os.environ.get(n)), None)


def maybe_initialize_distributed() -> bool:
  """Calls jax.distributed.initialize() once, when the environment asks for a multi-process launch.

  MMVAE_COORDINATOR (or JAX_COORDINATOR_ADDRESS) = HOST:PORT of process 0, MMVAE_NUM_PROCESSES (or
  JAX_NUM_PROCESSES) and MMVAE_PROCESS_ID (or JAX_PROCESS_ID); JAX reads only the address itself, so
  a plain launch (several processes on localhost, or hosts without a cluster manager) needs all three.
  MMVAE_DISTRIBUTED=1 alone leaves them to JAX's cluster detection (SLURM, Open MPI, TPU pods).
  """
  coordinator = _env("MMVAE_COORDINATOR", "JAX_COORDINATOR_ADDRESS")
  if os.environ.get("MMVAE_DISTRIBUTED") != "1" and not coordinator:
    return False
  if not jax.distributed.is_initialized():
    num_processes = _env("MMVAE_NUM_PROCESSES", "JAX_NUM_PROCESSES")
    process_id = _env("MMVAE_PROCESS_ID", "JAX_PROCESS_ID")
    jax.distributed.initialize(coordinator_address=coordinator,
                               num_processes=int(num_processes) if num_processes else None,
                               process_id=int(process_id) if process_id else None)
  return True


def process_major(devices) -> list:
  """`devices` ordered by process, then id: process p's devices hold global-batch rows local_slice() of p."""
  return sorted(devices, key=lambda d: (d.process_index, d.id))


def _scan_steps(step_fn, state, batches_K, positions_K, axis_name=None):
  """step_fn applied to K batches in turn (a lax.scan): (final state, metrics stacked over the K steps)."""
  kwargs = {} if axis_name is None else {"axis_name": axis_name}
  return jax.lax.scan(lambda s, xs: step_fn(s, *xs, **kwargs), state, (batches_K, positions_K))


def check_batch_size(global_batch: int, num_devices: int) -> None:
  """The global batch must split evenly over every device of every host."""
  if global_batch < 1 or global_batch % num_devices:
    raise ValueError(f"config.train.batch_size={global_batch} must be a positive multiple of the device count "
                     f"({num_devices}); try --config.train.batch_size={max(1, global_batch // num_devices) * num_devices or num_devices}")


class Runner:
  """Places the train state on devices and runs the step in 'sharded' (the default) or 'pmap' mode."""

  def __init__(self, graphdef, tx, config, mode: str, devices=None):
    if mode not in MODES:
      raise ValueError(f"config.parallel={mode!r} is unknown; use one of {MODES}")
    self.mode = mode
    self.devices = list(devices) if devices is not None else process_major(jax.devices())
    self.local_devices = [d for d in self.devices if d.process_index == jax.process_index()]
    check_batch_size(config.train.batch_size, len(self.devices))
    self.global_batch = config.train.batch_size
    self.local_batch = self.global_batch // jax.process_count()
    fn = functools.partial(step_lib.train_step, graphdef, tx, config)
    block = functools.partial(_scan_steps, fn)
    if mode == "pmap":
      # Per-device copies of this process's devices stacked on a leading axis, as pmap expects them. pmap
      # gets every process's devices (the same list everywhere): given only the local ones, a multi-process
      # run would average gradients over this process's devices alone.
      self._stacked = NamedSharding(Mesh(np.array(self.local_devices), (AXIS,)), PartitionSpec(AXIS))
      self._step = jax.pmap(functools.partial(fn, axis_name=AXIS), axis_name=AXIS, devices=self.devices,
                            donate_argnums=(0,))
      self._block = jax.pmap(functools.partial(block, axis_name=AXIS), axis_name=AXIS, devices=self.devices,
                             donate_argnums=(0,))
    else:
      self.mesh = Mesh(np.array(self.devices), (AXIS,))
      self._replicated = NamedSharding(self.mesh, PartitionSpec())
      self._split = NamedSharding(self.mesh, PartitionSpec(AXIS))
      self._step = jax.jit(fn, in_shardings=(self._replicated, self._split, self._split),
                           out_shardings=(self._replicated, self._replicated), donate_argnums=(0,))
      self._split_k = NamedSharding(self.mesh, PartitionSpec(None, AXIS))  # [K steps, batch, ...]
      self._block = jax.jit(block, in_shardings=(self._replicated, self._split_k, self._split_k),
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
    if self.mode == "pmap":  # the first local device's copy, read on the host: no device program per leaf
      return jax.tree.map(lambda x: np.asarray(x.addressable_data(0))[0], state)
    return jax.tree.map(np.asarray, jax.device_get(state))

  def _shard(self, x, steps: bool = False):
    """This process's rows [B, ...] (steps: [K, B, ...]) laid out for the step: split over the devices."""
    if self.mode == "pmap":  # [devices, B / devices, ...] (steps: [devices, K, B / devices, ...])
      n = len(self.local_devices)
      if steps:
        return np.moveaxis(x.reshape((x.shape[0], n, -1) + x.shape[2:]), 1, 0)
      return x.reshape((n, -1) + x.shape[1:])
    return jax.make_array_from_process_local_data(self._split_k if steps else self._split, x)

  def _local(self, batch: dict):
    """(batch, positions) of this process's rows of the global batch, as NumPy arrays."""
    rows = self.local_slice()
    local = {k: np.asarray(v)[rows] if np.shape(v)[0] == self.global_batch else np.asarray(v)
             for k, v in batch.items()}
    return local, np.arange(self.global_batch, dtype=np.int32)[rows]

  def _inputs(self, batch: dict):
    """(batch, positions) of this process's rows of the global batch, laid out for the step."""
    local, positions = self._local(batch)
    return {k: self._shard(v) for k, v in local.items()}, self._shard(positions)

  def _block_inputs(self, batches: list):
    """(batches, positions) of K global batches stacked on a leading step axis, laid out for `steps`."""
    locals_, positions = zip(*(self._local(b) for b in batches))
    stacked = {k: np.stack([b[k] for b in locals_]) for k in locals_[0]}
    return {k: self._shard(v, steps=True) for k, v in stacked.items()}, self._shard(np.stack(positions), steps=True)

  def steps(self, state, batches: list):
    """K updates in one dispatch (a lax.scan over K global batches): the state of K `step` calls, and each
    step's metrics stacked on a leading axis of K. Saves the per-step dispatch and host work at small batch."""
    state, metrics = self._block(state, *self._block_inputs(batches))
    if self.mode == "pmap":
      metrics = jax.tree.map(lambda x: x[0], metrics)
    return state, metrics

  def step(self, state, batch: dict):
    """Runs one update on the global batch (this process's rows of it); metrics stay on device."""
    state, metrics = self._step(state, *self._inputs(batch))
    if self.mode == "pmap":
      metrics = jax.tree.map(lambda x: x[0], metrics)
    return state, metrics

  def lower(self, state, batch: dict):
    """The lowered step for cost analysis (FLOPs)."""
    return self._step.lower(state, *self._inputs(batch))
