"""A reader of PyTorch's legacy (non-zip) checkpoint format, without PyTorch: tensors come back as NumPy arrays.

The layout `torch.save(..., _use_new_zipfile_serialization=False)` writes, one after another in one file:
  1. pickle: the magic number 0x1950a86a20f9469cfc6c
  2. pickle: the protocol version, 1001
  3. pickle: sys_info, {'protocol_version': 1001, 'little_endian': True, 'type_sizes': {...}}
  4. pickle: the saved object. A tensor is `torch._utils._rebuild_tensor_v2(storage, offset, size, stride,
     requires_grad, backward_hooks)` and its storage a persistent id ('storage', torch.FloatStorage (a class),
     key, location, numel, view_metadata); several tensors may share one storage (e.g. cuDNN's flat LSTM weights).
  5. pickle: the list of storage keys, in the order their bytes follow
  6. per key: int64 numel, then numel * element size raw bytes, little-endian.
Only the globals a tensor checkpoint needs are resolved (collections.OrderedDict, the tensor and parameter
rebuilders, torch.*Storage): anything else is a one-line ValueError, so no code in the file ever runs.
"""

import collections
import pathlib
import pickle
import struct

import numpy as np

MAGIC_NUMBER = 0x1950a86a20f9469cfc6c
PROTOCOL_VERSION = 1001

# torch.<Name>Storage -> NumPy dtype; bfloat16 has none in NumPy: its 16 bits widen to float32 exactly.
STORAGE_DTYPES = {
    "DoubleStorage": np.dtype("<f8"), "FloatStorage": np.dtype("<f4"), "HalfStorage": np.dtype("<f2"),
    "BFloat16Storage": np.dtype("<u2"), "LongStorage": np.dtype("<i8"), "IntStorage": np.dtype("<i4"),
    "ShortStorage": np.dtype("<i2"), "CharStorage": np.dtype("i1"), "ByteStorage": np.dtype("u1"),
    "BoolStorage": np.dtype("?"),
}


class _StorageType:
  def __init__(self, name: str):
    self.name = name
    self.dtype = STORAGE_DTYPES[name]


class _Storage:
  """A storage named in the object pickle; its array arrives after the object (step 6)."""

  def __init__(self, type_: _StorageType, key: str, numel: int):
    self.type, self.key, self.numel = type_, key, numel
    self.array: np.ndarray | None = None  # [numel] once read
    self.view: tuple | None = None  # (root _Storage, offset, size) for an old-style storage view


class _TensorRef:
  """A tensor whose storage bytes are not read yet: resolved into an ndarray when they are."""

  def __init__(self, storage: _Storage, offset: int, size, stride):
    self.storage, self.offset, self.size, self.stride = storage, int(offset), tuple(size), tuple(stride)

  def resolve(self) -> np.ndarray:
    storage, offset = self.storage, self.offset
    if storage.view is not None:
      storage, extra, _ = storage.view
      offset += extra
    flat = storage.array
    if not self.size:
      x = flat[offset:offset + 1].reshape(())
    else:
      itemsize = flat.dtype.itemsize
      span = 1 + sum((n - 1) * s for n, s in zip(self.size, self.stride)) if all(self.size) else 0
      if offset + span > len(flat):
        raise ValueError(f"a tensor of size {list(self.size)} at offset {offset} runs past its storage "
                         f"{storage.key!r} of {len(flat)} elements")
      x = np.lib.stride_tricks.as_strided(flat[offset:], self.size, [s * itemsize for s in self.stride])
    x = np.array(x)  # a contiguous copy, detached from the storage
    if storage.type.name == "BFloat16Storage":
      x = (x.astype(np.uint32) << 16).view(np.float32)
    return x


def _rebuild_tensor_v2(storage, storage_offset, size, stride, requires_grad=False, backward_hooks=None,
                       metadata=None):
  del requires_grad, backward_hooks, metadata
  return _TensorRef(storage, storage_offset, size, stride)


def _rebuild_tensor(storage, storage_offset, size, stride):
  return _TensorRef(storage, storage_offset, size, stride)


def _rebuild_parameter(data, requires_grad=False, backward_hooks=None):
  del requires_grad, backward_hooks
  return data


_GLOBALS = {
    ("collections", "OrderedDict"): collections.OrderedDict,
    ("torch._utils", "_rebuild_tensor_v2"): _rebuild_tensor_v2,
    ("torch._utils", "_rebuild_tensor"): _rebuild_tensor,
    ("torch._utils", "_rebuild_parameter"): _rebuild_parameter,
}


class _Unpickler(pickle.Unpickler):
  def __init__(self, f, storages: dict):
    super().__init__(f, encoding="latin1")
    self.storages = storages

  def find_class(self, module, name):
    if (module, name) in _GLOBALS:
      return _GLOBALS[(module, name)]
    if module == "torch" and name in STORAGE_DTYPES:
      return _StorageType(name)
    raise pickle.UnpicklingError(f"global {module}.{name} is not part of a tensor checkpoint")

  def persistent_load(self, pid):
    if not (isinstance(pid, tuple) and len(pid) == 6 and pid[0] == "storage"):
      raise pickle.UnpicklingError(f"unknown persistent id {pid!r:.80}")
    _, type_, key, _location, numel, view = pid
    if not isinstance(type_, _StorageType):
      raise pickle.UnpicklingError(f"storage {key!r} has type {type_!r:.60}, not a torch.*Storage")
    key = str(key)
    if key not in self.storages:
      self.storages[key] = _Storage(type_, key, int(numel))
    root = self.storages[key]
    if view is None:
      return root
    view_key, offset, size = view  # an old-style view into the root storage
    if view_key not in self.storages:
      self.storages[view_key] = _Storage(type_, view_key, int(size))
      self.storages[view_key].view = (root, int(offset), int(size))
    return self.storages[view_key]


def _resolve(obj):
  if isinstance(obj, _TensorRef):
    return obj.resolve()
  if isinstance(obj, dict):
    out = type(obj)() if isinstance(obj, collections.OrderedDict) else {}
    for k, v in obj.items():
      out[k] = _resolve(v)
    return out
  if isinstance(obj, (list, tuple)):
    return type(obj)(_resolve(v) for v in obj)
  return obj


def load(path):
  """The object saved in PATH (a legacy PyTorch checkpoint) with every tensor an ndarray; ValueError otherwise."""
  path = pathlib.Path(path)
  try:
    with open(path, "rb") as f:
      def header(what):
        try:
          return pickle.load(f)
        except Exception as e:  # pylint: disable=broad-except
          raise ValueError(f"{path}: not a legacy PyTorch checkpoint ({what} unreadable: {e})") from None
      magic = header("magic number")
      if magic != MAGIC_NUMBER:
        zipped = path.read_bytes()[:2] == b"PK"
        raise ValueError(f"{path}: not a legacy PyTorch checkpoint (magic number {magic!r:.40})"
                         + ("; it is the zip format of torch >= 1.6" if zipped else ""))
      version = header("protocol version")
      if version != PROTOCOL_VERSION:
        raise ValueError(f"{path}: legacy checkpoint protocol {version!r:.40}; this reader knows {PROTOCOL_VERSION}")
      sys_info = header("sys_info")
      if not isinstance(sys_info, dict) or not sys_info.get("little_endian", False):
        raise ValueError(f"{path}: sys_info {sys_info!r:.80}: only little-endian checkpoints are read")
      storages: dict[str, _Storage] = {}
      try:
        obj = _Unpickler(f, storages).load()
        keys = pickle.load(f)
      except (pickle.UnpicklingError, EOFError, AttributeError, TypeError, KeyError) as e:
        raise ValueError(f"{path}: cannot read the checkpoint object: {e}") from None
      for key in keys:
        key = str(key)
        if key not in storages:
          raise ValueError(f"{path}: storage key {key!r} follows the object but no tensor names it")
        storage = storages[key]
        head = f.read(8)
        if len(head) != 8:
          raise ValueError(f"{path}: truncated before storage {key!r}")
        (numel,) = struct.unpack("<q", head)
        nbytes = numel * storage.type.dtype.itemsize
        raw = f.read(nbytes)
        if len(raw) != nbytes:
          raise ValueError(f"{path}: storage {key!r} holds {len(raw)} of its {nbytes} bytes (truncated)")
        storage.array = np.frombuffer(raw, storage.type.dtype)
  except OSError as e:
    raise ValueError(f"cannot read {path}: {e.strerror or e}") from None
  missing = [s.key for s in storages.values() if s.view is None and s.array is None]
  if missing:
    raise ValueError(f"{path}: storages {missing[:3]} are named by tensors but absent from the file")
  return _resolve(obj)


def read_arrays(path) -> dict[str, np.ndarray]:
  """{dotted name: ndarray} of every tensor in PATH, e.g. 'model_state.lstm.weight_ih_l0'."""
  out: dict[str, np.ndarray] = {}

  def walk(obj, prefix):
    if isinstance(obj, np.ndarray):
      out[prefix] = obj
    elif isinstance(obj, dict):
      for k, v in obj.items():
        walk(v, f"{prefix}.{k}" if prefix else str(k))
    elif isinstance(obj, (list, tuple)):
      for i, v in enumerate(obj):
        walk(v, f"{prefix}.{i}" if prefix else str(i))

  walk(load(path), "")
  return out
