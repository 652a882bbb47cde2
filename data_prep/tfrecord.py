"""TFRecord files without TensorFlow: the framing (both CRC32Cs verified; gzip accepted) and a minimal protobuf
decoder for tf.train.Example and tf.train.SequenceExample (the messages YouTube-8M uses; data_prep.yt8m reads them)."""

import gzip
import os
import zlib
from typing import Iterator, NamedTuple

import numpy as np

_GZIP_MAGIC = b"\x1f\x8b"

# ---------------------------------------------------------------------------------------------- crc32c

_POLY = 0x82F63B78  # Castagnoli, reflected
_MASK32 = 0xFFFFFFFF


def _byte_table() -> list[int]:
  table = []
  for i in range(256):
    c = i
    for _ in range(8):
      c = (c >> 1) ^ _POLY if c & 1 else c >> 1
    table.append(c)
  return table


_TABLE = _byte_table()
_TABLE_NP = np.array(_TABLE, np.uint32)
# Slicing-by-4: _SLICES[k][b] is the register after byte b followed by k zero bytes (one word per step).
_SLICES = [_TABLE_NP]
for _ in range(3):
  _SLICES.append((_SLICES[-1] >> 8) ^ _TABLE_NP[_SLICES[-1] & 0xFF])
_NUMPY_FROM = 2048  # bytes; shorter inputs go through the plain byte loop
_BITS = (np.arange(256)[:, None] >> np.arange(8)) & 1  # [256, 8] bits of every byte value
_SHIFT_TABLES: list[np.ndarray] = []  # [4, 256] uint32 per j: the register after 2**j zero bytes, by byte of it


def _crc_loop(data, register: int) -> int:
  for b in data:
    register = _TABLE[(register ^ b) & 0xFF] ^ (register >> 8)
  return register


def _shift(tables: np.ndarray, registers: np.ndarray) -> np.ndarray:
  """Registers advanced over the zero bytes `tables` stands for (linear over GF(2): one lookup per byte)."""
  return (tables[0][registers & 0xFF] ^ tables[1][(registers >> 8) & 0xFF]
          ^ tables[2][(registers >> 16) & 0xFF] ^ tables[3][registers >> 24])


def _tables_of(columns: np.ndarray) -> np.ndarray:
  """[4, 256] byte lookup tables of the linear map whose images of the 32 unit registers are `columns`."""
  return np.stack([np.bitwise_xor.reduce(np.where(_BITS, columns[8 * q:8 * q + 8], 0), axis=1).astype(np.uint32)
                   for q in range(4)])


def _shift_tables(j: int) -> np.ndarray:
  """Lookup tables that advance a register over 2**j zero bytes (made by squaring, cached)."""
  if not _SHIFT_TABLES:
    units = np.left_shift(np.uint32(1), np.arange(32, dtype=np.uint32))
    _SHIFT_TABLES.append(_tables_of(_TABLE_NP[units & 0xFF] ^ (units >> 8)))
  while len(_SHIFT_TABLES) <= j:
    previous = _SHIFT_TABLES[-1]
    units = np.left_shift(np.uint32(1), np.arange(32, dtype=np.uint32))
    _SHIFT_TABLES.append(_tables_of(_shift(previous, _shift(previous, units))))
  return _SHIFT_TABLES[j]


def crc32c(data) -> int:
  """CRC-32C (Castagnoli) of `data` (bytes-like), as TFRecord uses it; table-driven, numpy for long inputs."""
  data = memoryview(data).cast("B")
  n = len(data)
  if n < _NUMPY_FROM:
    return _crc_loop(data, _MASK32) ^ _MASK32
  # The register is linear in the input: split the input into K blocks of L = 2**j bytes, run all blocks at
  # once from register 0 (a little-endian word per step, slicing-by-4), then fold neighbours pairwise (the left
  # one advanced over the right one's length). Leading zero bytes do not change a register that starts at 0,
  # so the input is zero-padded in front; the initial register 0xFFFFFFFF is the same as inverting the first
  # 4 bytes and starting from 0.
  j = max(6, (n.bit_length() + 1) // 2 - 3)
  size = 1 << j
  blocks = -(-n // size)
  buf = np.zeros(blocks * size, np.uint8)
  pad = blocks * size - n
  buf[pad:] = np.frombuffer(data, np.uint8)
  buf[pad:pad + 4] ^= 0xFF
  words = np.ascontiguousarray(buf.view("<u4").reshape(blocks, size // 4).T).astype(np.uint32)
  t0, t1, t2, t3 = _SLICES
  registers = np.zeros(blocks, np.uint32)
  for word in words:
    x = registers ^ word
    registers = t3[x & 0xFF] ^ t2[(x >> 8) & 0xFF] ^ t1[(x >> 16) & 0xFF] ^ t0[x >> 24]
  while len(registers) > 1:
    if len(registers) % 2:  # a leading all-zero block
      registers = np.concatenate([np.zeros(1, np.uint32), registers])
    registers = _shift(_shift_tables(j), registers[0::2]) ^ registers[1::2]
    j += 1
  return int(registers[0]) ^ _MASK32


def masked_crc32c(data) -> int:
  """TFRecord's masked CRC: ((crc >> 15) | (crc << 17)) + 0xa282ead8, modulo 2**32."""
  crc = crc32c(data)
  return ((((crc >> 15) | (crc << 17)) & _MASK32) + 0xA282EAD8) & _MASK32


# -------------------------------------------------------------------------------------------- TFRecord

def _header_error(path, offset: int, length_bytes: bytes, crc_bytes: bytes) -> str | None:
  if int.from_bytes(crc_bytes, "little") == masked_crc32c(length_bytes):
    return None
  if offset == 0:
    return (f"{path} is not a TFRecord file: the length CRC of its first record (byte 0) does not match "
            "(gzip-compressed files are read as such; other compressions are not)")
  return f"{path}: byte {offset}: corrupt TFRecord (the record length's CRC does not match)"


def _read_record(f, path, offset: int, size: int | None = None) -> tuple[bytes, int] | None:
  """(data, next offset) of the record at `offset` of open file f (positioned there); None at the file's end."""
  header = f.read(12)
  if not header:
    return None
  if len(header) < 12:
    if offset == 0:
      raise ValueError(f"{path} is not a TFRecord file, or a truncated one: {len(header)} bytes, shorter than "
                       "a record header (12)")
    raise ValueError(f"{path}: byte {offset}: truncated TFRecord: {len(header)} bytes left, a record header "
                     "needs 12")
  error = _header_error(path, offset, header[:8], header[8:])
  if error:
    raise ValueError(error)
  length = int.from_bytes(header[:8], "little")
  if size is not None and offset + 16 + length > size:
    raise ValueError(f"{path}: byte {offset}: truncated TFRecord: the record holds {length} bytes but the file "
                     f"ends at byte {size}")
  body = f.read(length + 4)
  if len(body) < length + 4:
    raise ValueError(f"{path}: byte {offset}: truncated TFRecord: the record holds {length} bytes but the file "
                     f"ends at byte {offset + 12 + len(body)}")
  data = body[:length]
  if int.from_bytes(body[length:], "little") != masked_crc32c(data):
    raise ValueError(f"{path}: byte {offset}: corrupt TFRecord (the CRC of its {length} data bytes does not match)")
  return data, offset + 16 + length


def is_gzip(path) -> bool:
  """Whether the file starts with gzip's magic bytes."""
  with open(path, "rb") as f:
    return f.read(2) == _GZIP_MAGIC


def read_records(path, name=None) -> Iterator[tuple[int, bytes]]:
  """(byte offset, data) of every record of one TFRecord file, streamed and CRC-verified; gzip is decompressed.

  Offsets of a gzip-compressed file count its decompressed bytes. `name` is the file named in errors.
  """
  name = name or path
  gz = is_gzip(path)
  try:
    with (gzip.open(path, "rb") if gz else open(path, "rb")) as f:
      size = None if gz else os.fstat(f.fileno()).st_size
      offset = 0
      while True:
        record = _read_record(f, name, offset, size)
        if record is None:
          return
        yield offset, record[0]
        offset = record[1]
  except (EOFError, gzip.BadGzipFile, zlib.error) as e:
    raise ValueError(f"{name}: damaged gzip data: {e}") from None


def read_record_at(f, path, offset: int) -> bytes:
  """The data of the record at `offset` of the open, uncompressed TFRecord file f, CRC-verified."""
  f.seek(offset)
  record = _read_record(f, path, offset)
  if record is None:
    raise ValueError(f"{path}: byte {offset}: no record there (the file changed while prep ran?)")
  return record[0]


# -------------------------------------------------------------------------------------------- protobuf

class Feature(NamedTuple):
  """A decoded tf.train.Feature: kind 'bytes' (list of bytes), 'float' (float32 array), 'int64' (list of int)."""

  kind: str
  value: object


def _varint(buf, pos: int) -> tuple[int, int]:
  result = shift = 0
  while True:
    if pos >= len(buf):
      raise ValueError("a varint runs past the end of its message")
    b = buf[pos]
    pos += 1
    result |= (b & 0x7F) << shift
    if not b & 0x80:
      return result, pos
    shift += 7
    if shift >= 70:
      raise ValueError("a varint is longer than 10 bytes")


def fields(buf) -> Iterator[tuple[int, int, object]]:
  """(field number, wire type, value) of a protobuf message: an int (varint), or bytes (fixed64, fixed32,
  length-delimited); unknown fields are returned like any other, for the caller to skip."""
  buf = memoryview(buf)
  pos, end = 0, len(buf)
  while pos < end:
    key, pos = _varint(buf, pos)
    number, wire = key >> 3, key & 7
    if wire == 0:
      value, pos = _varint(buf, pos)
    elif wire in (1, 5):
      width = 8 if wire == 1 else 4
      if pos + width > end:
        raise ValueError(f"field {number} runs past the end of its message")
      value, pos = buf[pos:pos + width], pos + width
    elif wire == 2:
      length, pos = _varint(buf, pos)
      if pos + length > end:
        raise ValueError(f"field {number} ({length} bytes) runs past the end of its message")
      value, pos = buf[pos:pos + length], pos + length
    else:
      raise ValueError(f"field {number} has wire type {wire} (groups are not supported)")
    if number == 0:
      raise ValueError("field number 0 is not valid protobuf")
    yield number, wire, value


def _int64(v: int) -> int:
  return v - (1 << 64) if v >= 1 << 63 else v


def parse_feature(buf) -> Feature:
  """tf.train.Feature {oneof bytes_list = 1, float_list = 2, int64_list = 3}; packed or unpacked lists."""
  kind, value = "bytes", []  # an empty Feature: no list set
  for number, wire, data in fields(buf):
    if number == 1 and wire == 2:
      kind, value = "bytes", [bytes(v) for n, w, v in fields(data) if n == 1 and w == 2]
    elif number == 2 and wire == 2:
      chunks = []
      for n, w, v in fields(data):
        if n == 1 and w == 2:
          if len(v) % 4:
            raise ValueError(f"a packed float list of {len(v)} bytes (not a multiple of 4)")
          chunks.append(np.frombuffer(v, "<f4"))
        elif n == 1 and w == 5:
          chunks.append(np.frombuffer(v, "<f4"))
      kind, value = "float", (np.concatenate(chunks) if chunks else np.zeros(0, "<f4")).astype(np.float32)
    elif number == 3 and wire == 2:
      ints = []
      for n, w, v in fields(data):
        if n == 1 and w == 0:
          ints.append(_int64(v))
        elif n == 1 and w == 2:
          pos = 0
          while pos < len(v):
            x, pos = _varint(v, pos)
            ints.append(_int64(x))
      kind, value = "int64", ints
  return Feature(kind, value)


def _map_entries(buf, field: int) -> Iterator[tuple[str, memoryview]]:
  """(key, value bytes) of a map<string, message> field: entries key = 1, value = 2."""
  for number, wire, entry in fields(buf):
    if number != field or wire != 2:
      continue
    key, value = "", memoryview(b"")
    for n, w, v in fields(entry):
      if n == 1 and w == 2:
        key = bytes(v).decode("utf-8", errors="replace")
      elif n == 2 and w == 2:
        value = v
    yield key, value


def parse_features(buf) -> dict[str, Feature]:
  """tf.train.Features {map<string, Feature> feature = 1}."""
  return {key: parse_feature(value) for key, value in _map_entries(buf, 1)}


def parse_example(buf) -> tuple[dict[str, Feature], dict[str, list[Feature]]]:
  """(features or context, feature lists) of a tf.train.Example (no lists) or tf.train.SequenceExample.

  Example {Features features = 1}; SequenceExample {Features context = 1; FeatureLists feature_lists = 2},
  FeatureLists {map<string, FeatureList> feature_list = 1}, FeatureList {repeated Feature feature = 1}.
  """
  context, lists = {}, {}
  for number, wire, value in fields(buf):
    if number == 1 and wire == 2:
      context.update(parse_features(value))
    elif number == 2 and wire == 2:
      for key, entry in _map_entries(value, 1):
        lists[key] = [parse_feature(v) for n, w, v in fields(entry) if n == 1 and w == 2]
  return context, lists
