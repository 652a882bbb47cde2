"""Data parallelism over the same pure step: `jit` over a 1-D NamedSharding mesh (default), or `jax.pmap`.

Multi-host: every process runs the same command and calls `jax.distributed.initialize()` before touching
devices (see `maybe_initialize_distributed`); each process then feeds only its own rows of every global
batch (`Runner.local_slice`). Both modes map over the devices of all processes, in process order, so
process p's rows sit on its own devices: `jit` gets them via `make_array_from_process_local_data`,
`pmap` (given the global device list, as JAX asks of multi-process runs) via its host-local inputs.
Proven on CPU with 2 processes x 2 devices against 1 x 4 (tests/mmvae/train/test_multihost.py).
"""

import atexit
import ctypes
import functools
import os
import signal
import sys
import threading
import time

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
    from jax._src.lib import _jax  # pylint: disable=g-import-not-at-top
    # JAX's client takes a callback for a failed runtime, which jax.distributed.initialize does not pass on; its
    # default logs a fatal error with a native stack trace. (jaxlib 0.10 cannot hand the callback its status and
    # ends in a 2-line std::terminate instead, which the abort handler below turns into the mmvae line.)
    real = _jax.get_distributed_runtime_client
    def client(*args, **kwargs):  # another jaxlib may not take the callback: then JAX's default stays
      try:
        return real(*args, missed_heartbeat_callback=_runtime_failed, **kwargs)
      except TypeError:
        return real(*args, **kwargs)

    _jax.get_distributed_runtime_client = client
    try:
      jax.distributed.initialize(coordinator_address=coordinator,
                                 num_processes=int(num_processes) if num_processes else None,
                                 process_id=int(process_id) if process_id else None)
    finally:
      _jax.get_distributed_runtime_client = real
    _Watchdog().start()
    if jax.process_index() != 0:
      _on_native_abort()
  return True


# A process whose heartbeat has not changed for this long is lost, and the others stop with one line. JAX's own
# check aborts with a native stack trace, after minutes; this one acts first.
LOST_AFTER_S = float(os.environ.get("MMVAE_LOST_PROCESS_TIMEOUT", "15"))
BEAT_S = 1.0
EXIT_LOST_PROCESS = 1
_saved_step = [lambda: None]  # what the lost-process line reports as saved (set by the trainer)
_lost = threading.Event()
_ended = threading.Event()  # this process is past its collectives: it no longer watches (set at exit too)
atexit.register(_ended.set)  # before JAX's own shutdown (registered earlier, run later), which stops the store


def training_ended() -> None:
  """This process left training (done, or failed): the others stop counting it as lost, and it stops watching."""
  if _ended.is_set() or not jax.distributed.is_initialized():
    return
  _ended.set()
  from jax._src import distributed  # pylint: disable=g-import-not-at-top
  try:
    distributed.global_state.client.key_value_set(f"mmvae/ended/{jax.process_index()}", "1", allow_overwrite=True)
  except Exception:  # pylint: disable=broad-except  (the store is gone already)
    pass


def on_lost_process(saved_step) -> None:
  """saved_step(): the newest step saved to the workdir (None: none yet), named when another process is lost."""
  _saved_step[0] = saved_step


def lost_process_line(who: str, why: str) -> str:
  """The one line printed when another process of the run is gone."""
  try:
    step = _saved_step[0]()
  except Exception:  # pylint: disable=broad-except  (the line must be printed whatever the state)
    step = None
  saved = f"last saved step {step}" if step is not None else "no step saved yet"
  n = jax.process_count()
  return (f"mmvae train: error: lost {who} ({why}); {saved}; rerun {'both' if n == 2 else f'all {n}'} processes "
          "to resume")


def _exit_lost(who: str, why: str) -> None:
  """Prints the line and ends this process at once (os._exit: no native abort, no shutdown barrier to wait on)."""
  _lost.set()
  try:
    sys.stdout.flush()
    sys.stderr.write(lost_process_line(who, why) + "\n")
    sys.stderr.flush()
  finally:
    os._exit(EXIT_LOST_PROCESS)


def _runtime_failed(*_status) -> None:
  """JAX's distributed client found the run broken (a process stopped answering): the one line, exit 1."""
  _exit_lost("process 0, the coordinator" if jax.process_index() != 0 else "another process",
             "JAX's distributed runtime failed")


_abort_handler = []  # the ctypes callback, kept alive


def _on_native_abort() -> None:
  """In processes other than 0: JAX's native abort when the coordinator is gone -> the one line and exit 1 (Linux).

  When process 0 (which runs the coordination service) dies, the others' distributed client aborts within a
  second (a fatal log, then abort()), before the watchdog can see it: its native lines are printed, then this
  handler prints the mmvae line and exits. Process 0 needs none: the watchdog acts before JAX's own check.
  """
  try:
    libc = ctypes.CDLL(None)
  except OSError:
    return
  handler_t = ctypes.CFUNCTYPE(None, ctypes.c_int)

  def on_abort(_signum):
    _exit_lost("process 0, the coordinator", "JAX's distributed runtime aborted: its native lines above")

  _abort_handler.append(handler_t(on_abort))
  libc.signal.restype, libc.signal.argtypes = ctypes.c_void_p, [ctypes.c_int, handler_t]
  libc.signal(signal.SIGABRT, _abort_handler[0])


class _Watchdog(threading.Thread):
  """Each process bumps its counter in JAX's key-value store every BEAT_S and watches the others' counters.

  A counter unchanged for LOST_AFTER_S names its process as lost; a store that cannot be reached means process 0
  (which runs it) is gone. Either way this process prints one line and exits, instead of waiting in a collective.
  """

  def __init__(self):
    super().__init__(name="mmvae-lost-process-watchdog", daemon=True)
    from jax._src import distributed  # pylint: disable=g-import-not-at-top  (the client jax.distributed made)
    self.client, self.me, self.n = distributed.global_state.client, jax.process_index(), jax.process_count()

  def _get(self, key: str):
    """The key's value, or None when it is not set; raises when the store cannot be reached."""
    try:
      return self.client.key_value_try_get(key)
    except Exception as e:  # pylint: disable=broad-except
      if "NOT_FOUND" in str(e) or "not found" in str(e).lower():
        return None
      raise

  def run(self) -> None:
    seen, count, unreachable_since = {}, 0, None
    while not _ended.is_set():
      now = time.monotonic()
      try:
        count += 1
        self.client.key_value_set(f"mmvae/heartbeat/{self.me}", str(count), allow_overwrite=True)
        for p in range(self.n):
          if p == self.me or self._get(f"mmvae/ended/{p}") is not None:
            continue
          value = self._get(f"mmvae/heartbeat/{p}")
          if seen.get(p, (None,))[0] != value:
            seen[p] = (value, now)
          elif now - seen[p][1] > LOST_AFTER_S and not _ended.is_set():
            _exit_lost(f"process {p}", f"no heartbeat for {LOST_AFTER_S:g} s: killed, crashed or unreachable")
        unreachable_since = None
      except Exception:  # pylint: disable=broad-except  (the store is gone: process 0 with it)
        unreachable_since = unreachable_since or now
        if self.me != 0 and now - unreachable_since > min(LOST_AFTER_S, 3 * BEAT_S) and not _ended.is_set():
          _exit_lost("process 0, the coordinator", "its coordination service stopped answering")
      time.sleep(BEAT_S)


def wait_if_lost_process(error: BaseException) -> None:
  """After an error in a multi-process run: when it may come from a lost process (a failed collective), gives the
  watchdog the time to confirm it (it then prints its line and exits); returns otherwise."""
  if jax.process_count() == 1 or isinstance(error, (ValueError, KeyError, TypeError, FileNotFoundError)):
    return
  deadline = time.monotonic() + LOST_AFTER_S + 3 * BEAT_S
  while time.monotonic() < deadline and not _lost.is_set():
    time.sleep(0.2)


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
    fn = self._fn = functools.partial(step_lib.train_step, graphdef, tx, config)
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

  def step_flop(self, state, batch: dict) -> tuple[float, int]:
    """(FLOPs, bytes) of one global step and its global batch, from XLA's cost analysis of the lowered global
    step (no compilation), so every device count and mode gives the same FLOPs. 'sharded' lowers its own step
    (traced once for both); 'pmap' lowers the plain step on the global shapes."""
    local, positions = self._local(batch)
    rows = lambda x: (x.shape[0] * jax.process_count(),) + x.shape[1:]  # noqa: E731
    if self.mode == "pmap":
      spec = lambda x: jax.ShapeDtypeStruct(rows(x), x.dtype)  # noqa: E731
      state = jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape[1:], x.dtype), state)  # one device's copy
      step = jax.jit(self._fn)
    else:
      spec = lambda x: jax.ShapeDtypeStruct(rows(x), x.dtype, sharding=self._split)  # noqa: E731
      step = self._step
    cost = step.lower(state, {k: spec(v) for k, v in local.items()}, spec(positions)).cost_analysis()
    cost = cost[0] if isinstance(cost, (list, tuple)) else cost or {}
    return float(cost.get("flops", 0.0)), sum(v.nbytes for v in local.values()) * jax.process_count()

  def lower(self, state, batch: dict):
    """The lowered step for cost analysis (FLOPs)."""
    return self._step.lower(state, *self._inputs(batch))
