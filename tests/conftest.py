"""Test setup: four fake CPU devices so data-parallel code runs as it would on a 4-GPU host."""

import os

# Must be set before JAX is imported anywhere.
os.environ.setdefault("XLA_FLAGS", "--xla_force_host_platform_device_count=4")
os.environ.setdefault("JAX_PLATFORMS", "cpu")

import pathlib

import pytest

SHARED_DATA = pathlib.Path(__file__).resolve().parents[1].parent / "shared" / "data"


@pytest.fixture(scope="session")
def shared_data() -> pathlib.Path:
  """../shared/data, or skip the test with the reason when it is absent."""
  if not SHARED_DATA.is_dir():
    pytest.skip(f"real test data not found at {SHARED_DATA}")
  return SHARED_DATA


@pytest.fixture(scope="session")
def synthetic_dataset(tmp_path_factory) -> pathlib.Path:
  """A prepared 4-identity synthetic corpus (`mmvae prep synthetic --identities 4`) shared by tests; read only."""
  from data_prep import prepare
  out = tmp_path_factory.mktemp("synthetic") / "prepared"
  prepare.prepare_synthetic(str(out), identities=4, seed=0, config="synthetic", workers=1)
  return out
