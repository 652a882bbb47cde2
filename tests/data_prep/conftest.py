"""Fixtures shared by the data_prep tests."""

import shutil

import pytest

FSDD_SPEAKERS = ("george", "jackson")
FSDD_TAKES = (0, 1, 5, *range(10, 20))  # two test takes, one validation take, ten training takes per speaker


@pytest.fixture(scope="module")
def subset(shared_data, tmp_path_factory):
  """A small FSDD copy: 2 speakers x 10 digits x (2 test, 1 validation, 10 training) takes."""
  root = tmp_path_factory.mktemp("fsdd")
  (root / "recordings").mkdir()
  for digit in range(10):
    for speaker in FSDD_SPEAKERS:
      for take in FSDD_TAKES:
        name = f"{digit}_{speaker}_{take}.wav"
        shutil.copy(shared_data / "fsdd/recordings" / name, root / "recordings" / name)
  return root
