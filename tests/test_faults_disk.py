"""Full disks and read-only places (issue 24, items 13 and 14), through the `mmvae` CLI in a subprocess.

A full disk is a real one: a small tmpfs mounted over a test folder, so that every writer (libsndfile, array_record,
TensorStore under Orbax, numpy) meets a real ENOSPC; without the right to mount (not root) those cases are skipped.
A read-only place is a read-only bind mount as root (permissions do not stop root), else a chmod.
Each case checks: the exit code, one `mmvae <command>: error:` line naming the path and no traceback, nothing
half-written left, and the previous dataset, checkpoint, report or output byte for byte as it was.
"""

import contextlib
import os
import pathlib
import re
import shutil
import subprocess
import sys

import pytest

CLI = "import sys\nfrom mmvae import cli\nsys.exit(cli.main(sys.argv[1:]))\n"
# Where no tmpfs can be mounted: the CLI with Python's open() wrapped so that files opened for writing under
# FOLDER (sys.argv[1]) raise ENOSPC once BUDGET bytes (sys.argv[2]) were written to them in all (numpy's .npz, JSON,
# PNG); native writers (Orbax, libsndfile, array_record) are not reached, so only analyze and embed run under it.
FULL_AFTER = """import builtins, errno, io, os, sys
folder, budget = os.path.abspath(sys.argv[1]), [int(sys.argv[2])]
real_open = io.open
class Filling:
  def __init__(self, f):
    self._f = f
  def write(self, data):
    budget[0] -= len(data)
    if budget[0] < 0:
      raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), self._f.name)
    return self._f.write(data)
  def __getattr__(self, name):
    return getattr(self._f, name)
  def __enter__(self):
    return self
  def __exit__(self, *exc):
    self._f.close()
  def __iter__(self):
    return iter(self._f)
def filling_open(file, mode="r", *args, **kwargs):
  f = real_open(file, mode, *args, **kwargs)
  if isinstance(file, (str, bytes, os.PathLike)) and any(c in mode for c in "wax+") and \\
      os.path.abspath(os.fsdecode(file)).startswith(folder + os.sep):
    return Filling(f)
  return f
builtins.open = io.open = filling_open
del sys.argv[1:3]
from mmvae import cli
sys.exit(cli.main(sys.argv[1:]))
"""
STEPS = ["--config.train.checkpoint_every=5", "--config.train.eval_every=5", "--config.train.lr_schedule=constant"]


def mmvae(*argv, cwd=None, full_after=None) -> tuple[int, list[str], str]:
  """Exit code, stderr's lines (progress bars dropped) and stdout of `mmvae ARGV` in a fresh process.

  full_after: (folder, bytes): writes under the folder fail with ENOSPC after that many bytes (FULL_AFTER).
  """
  env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=4", JAX_PLATFORMS="cpu")
  env.pop("MMVAE_DEBUG", None)
  head = [CLI] if full_after is None else [FULL_AFTER, *map(str, full_after)]
  r = subprocess.run([sys.executable, "-c", *head, *map(str, argv)], capture_output=True, text=True, env=env,
                     cwd=cwd, timeout=900)
  lines = [line.strip() for line in re.split(r"[\r\n]", r.stderr) if line.strip() and not re.search(r"\d+%\|", line)]
  return r.returncode, lines, r.stdout


def assert_one_error(rc, lines, command, pattern) -> str:
  """Exit 2, one error line matching `pattern`, at most two other lines, no traceback; returns the error line."""
  errors = [line for line in lines if line.startswith(f"mmvae {command}: error: ")]
  assert rc == 2 and len(errors) == 1 and len(lines) <= 3, (rc, lines)
  assert not any("Traceback" in line for line in lines), lines
  assert re.search(pattern, errors[0]), errors[0]
  return errors[0]


def snapshot(folder: pathlib.Path) -> dict:
  return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def size_of(folder: pathlib.Path) -> int:
  return sum(p.stat().st_size for p in folder.rglob("*") if p.is_file())


def _mount(*args) -> bool:
  return subprocess.run(["mount", *map(str, args)], capture_output=True).returncode == 0


@contextlib.contextmanager
def small_disk(folder: pathlib.Path, size: int):
  """A tmpfs of SIZE bytes mounted at FOLDER (a real file system that fills); skips the test where none can be."""
  folder.mkdir()
  if not _mount("-t", "tmpfs", "-o", f"size={size}", "tmpfs", folder):
    pytest.skip("cannot mount a small tmpfs here (needs root): the full-disk cases need a real full disk")
  try:
    yield folder
  finally:
    subprocess.run(["umount", "-l", str(folder)], check=False)


@contextlib.contextmanager
def read_only(folder: pathlib.Path):
  """FOLDER read-only: a read-only bind mount as root (root writes through permissions), else its mode bits."""
  if os.geteuid() != 0:
    modes = {p: p.stat().st_mode for p in [folder, *folder.rglob("*")] if p.is_dir()}
    for p in modes:
      p.chmod(0o555)
    try:
      yield folder
    finally:
      for p, mode in modes.items():
        p.chmod(mode)
    return
  if not _mount("--bind", folder, folder):
    pytest.skip("cannot bind-mount here to make a folder read-only for root")
  try:
    if not _mount("-o", "remount,bind,ro", folder):
      pytest.skip("cannot remount a bind mount read-only here")
    yield folder
  finally:
    subprocess.run(["umount", "-l", str(folder)], check=False)


def fill(disk: pathlib.Path, leave: int) -> None:
  """Writes a filler file until about LEAVE bytes of DISK stay free."""
  free = shutil.disk_usage(disk).free
  with open(disk / "filler", "wb") as f:
    f.write(b"\0" * max(0, free - leave))


@pytest.fixture(scope="module")
def run5(synthetic_dataset, tmp_path_factory) -> pathlib.Path:
  """A run trained to step 5 (constant schedule, so it may resume to more steps) with an analysis report."""
  workdir = tmp_path_factory.mktemp("disk") / "run"
  rc, lines, _ = mmvae("train", "--config", "synthetic:tiny", "--data", synthetic_dataset, "--workdir", workdir,
                       "--config.train.num_steps=5", *STEPS)
  assert rc == 0, lines
  rc, lines, _ = mmvae("analyze", "--workdir", workdir)
  assert rc == 0 and (workdir / "report/report.md").is_file(), lines
  return workdir


def test_prep_on_a_full_disk_removes_its_build_and_keeps_the_previous_dataset(synthetic_dataset, tmp_path):
  # Room for the previous dataset and a part of the new one: the new corpus's WAVs fill the disk.
  with small_disk(tmp_path / "disk", size_of(synthetic_dataset) + (6 << 20)) as disk:
    shutil.copytree(synthetic_dataset, disk / "data")
    before = snapshot(disk / "data")
    rc, lines, _ = mmvae("prep", "synthetic", "--out", disk / "data", "--identities", 4, "--workers", 1)
    assert_one_error(rc, lines, "prep", rf"no space left on device writing {re.escape(str(disk / 'data'))} "
                                        r"\(the disk filled after [\d.]+ [kM]B; [\d.]+ [kM]B free")
    assert sorted(p.name for p in disk.iterdir()) == ["data"]  # no .data.partial-* build left
    assert snapshot(disk / "data") == before


def test_train_on_a_full_disk_removes_the_unfinished_checkpoint_and_keeps_the_saved_ones(
    synthetic_dataset, run5, tmp_path):
  # Room for the run as it is and less than one more checkpoint (each about 2 MB): the save of step 10 fails.
  with small_disk(tmp_path / "disk", size_of(run5) + (1 << 20)) as disk:
    workdir = disk / "run"
    shutil.copytree(run5, workdir)
    before = snapshot(workdir / "checkpoints")
    rc, lines, _ = mmvae("train", "--config", "synthetic:tiny", "--data", synthetic_dataset, "--workdir", workdir,
                         "--config.train.num_steps=10", *STEPS)
    line = assert_one_error(rc, lines, "train", rf"no space left on device writing "
                                                rf"{re.escape(str(workdir / 'checkpoints/last/10'))} "
                                                r"\(needed about [\d.]+ [kM]B; [\d.]+ [kM]B free\)")
    assert "the newest saved step is 5" in line
    assert not list(workdir.rglob("*.orbax-checkpoint-tmp*"))
    assert snapshot(workdir / "checkpoints") == before  # steps 5 (last and best) as they were, nothing else


def test_analyze_on_a_full_disk_keeps_the_previous_report(run5, tmp_path):
  report = run5 / "report"
  # Room for the run and its report, not for a second report beside it.
  with small_disk(tmp_path / "disk", size_of(run5) + size_of(report) // 4) as disk:
    workdir = disk / "run"
    shutil.copytree(run5, workdir)
    before = snapshot(workdir)
    rc, lines, _ = mmvae("analyze", "--workdir", workdir)
    report_path = re.escape(str(workdir / "report"))
    assert_one_error(rc, lines, "analyze", rf"no space left on device writing {report_path} \(needed about "
                                           r"[\d.]+ [kM]B; [\d.]+ [kM]B free\); the previous report is kept")
    assert snapshot(workdir) == before  # report/ byte for byte, and no .report.partial-* folder
    assert sorted(p.name for p in disk.iterdir()) == ["run"]


def test_embed_on_a_full_disk_keeps_the_previous_output(run5, tmp_path):
  with small_disk(tmp_path / "disk", 2 << 20) as disk:
    out = disk / "embeddings.npz"
    out.write_bytes(b"an earlier export")
    fill(disk, 4096)
    rc, lines, _ = mmvae("embed", "--workdir", run5, "--modality", "audio", "--out", out)
    assert_one_error(rc, lines, "embed", rf"no space left on device writing {re.escape(str(out))} "
                                         r"\(needed about [\d.]+ [kM]B; [\d.]+ [kM]B free\)")
    assert out.read_bytes() == b"an earlier export"
    assert sorted(p.name for p in disk.iterdir()) == ["embeddings.npz", "filler"]  # no .embeddings.npz.tmp


def test_analyze_and_embed_in_a_read_only_workdir_say_so_in_one_line(run5, tmp_path):
  workdir = tmp_path / "run"
  shutil.copytree(run5, workdir)
  before = snapshot(workdir)
  with read_only(workdir):
    rc, lines, _ = mmvae("analyze", "--workdir", workdir)
    assert_one_error(rc, lines, "analyze", rf"{re.escape(str(workdir))} is not writable")
    rc, lines, _ = mmvae("embed", "--workdir", workdir, "--modality", "audio", "--out", workdir / "e.npz")
    assert_one_error(rc, lines, "embed", rf"cannot write {re.escape(str(workdir / 'e.npz'))}: "
                                         "(Read-only file system|Permission denied)")
  assert snapshot(workdir) == before


def test_checkpoints_made_read_only_since_the_last_save_are_named_in_one_line(synthetic_dataset, run5, tmp_path):
  workdir = tmp_path / "run"
  shutil.copytree(run5, workdir)
  before = snapshot(workdir / "checkpoints")
  with read_only(workdir / "checkpoints"):
    rc, lines, _ = mmvae("train", "--config", "synthetic:tiny", "--data", synthetic_dataset, "--workdir", workdir,
                         "--config.train.num_steps=10", *STEPS)
    assert_one_error(rc, lines, "train", rf"cannot write {re.escape(str(workdir / 'checkpoints'))}/(last|best): "
                                         "(Read-only file system|Permission denied)")
  assert snapshot(workdir / "checkpoints") == before


def test_a_write_hook_full_disk_leaves_the_previous_report_and_output_without_a_tmpfs(run5, tmp_path):
  # The same contract where no tmpfs can be mounted: ENOSPC raised by Python's own writes after a byte budget.
  workdir = tmp_path / "run"
  shutil.copytree(run5, workdir)
  before = snapshot(workdir)
  rc, lines, _ = mmvae("analyze", "--workdir", workdir, full_after=(workdir, 100_000))
  assert_one_error(rc, lines, "analyze", rf"no space left on device writing {re.escape(str(workdir / 'report'))}")
  assert snapshot(workdir) == before and not list(workdir.glob(".report.*"))
  out = tmp_path / "embeddings.npz"
  out.write_bytes(b"an earlier export")
  rc, lines, _ = mmvae("embed", "--workdir", run5, "--modality", "audio", "--out", out, full_after=(tmp_path, 100))
  assert_one_error(rc, lines, "embed", rf"no space left on device writing {re.escape(str(out))}")
  assert out.read_bytes() == b"an earlier export" and not list(tmp_path.glob(".embeddings*"))
