"""The one atomic writer: a whole file or the previous one, never half of one, and no temporary left behind."""

import numpy as np
import pytest

from mmvae import files


def test_json_written_whole_with_a_final_newline(tmp_path):
  path = tmp_path / "a.json"
  files.write_json_atomic(path, {"b": 1, "a": [1, 2]}, indent=2, sort_keys=True)
  assert path.read_text() == '{\n  "a": [\n    1,\n    2\n  ],\n  "b": 1\n}\n'
  assert [p.name for p in tmp_path.iterdir()] == ["a.json"]


def test_a_failed_write_keeps_the_previous_file_and_leaves_no_temporary(tmp_path):
  path = tmp_path / "a.json"
  path.write_text("previous")
  with pytest.raises(TypeError):
    files.write_json_atomic(path, {"x": object()})  # not serialisable: fails before anything is written
  with pytest.raises(RuntimeError):
    with files.atomic(path) as f:
      f.write(b"half of a new file")
      raise RuntimeError("killed mid-write")
  assert path.read_text() == "previous"
  assert [p.name for p in tmp_path.iterdir()] == ["a.json"]


def test_binary_through_a_file_object(tmp_path):
  path = tmp_path / "x.npz"
  with files.atomic(path) as f:
    np.savez(f, a=np.arange(3))
  assert np.load(path)["a"].tolist() == [0, 1, 2]
  files.write_atomic(tmp_path / "t.txt", "é\n")
  assert (tmp_path / "t.txt").read_bytes() == "é\n".encode("utf-8")
  assert sorted(p.name for p in tmp_path.iterdir()) == ["t.txt", "x.npz"]
