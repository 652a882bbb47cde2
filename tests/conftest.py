"""Test setup: four fake CPU devices so data-parallel code runs as it would on a 4-GPU host."""

import os
import shutil
import tempfile

# Must be set before JAX is imported anywhere.
os.environ.setdefault("XLA_FLAGS", "--xla_force_host_platform_device_count=4")
os.environ.setdefault("JAX_PLATFORMS", "cpu")
# JAX's persistent compilation cache, one folder per test run (.ci/run shares one between its two tiers): tests and
# the CLI subprocesses they start (which inherit this environment) compile the same tiny models' steps again and
# again, and a repeat is served from disk. It is keyed by the program, its compile options and the JAX version, and
# a cached executable is the one XLA would compile again, so no result depends on it. MMVAE_TEST_JAX_CACHE=off
# turns it off; pytest-xdist's workers inherit the folder of the run that started them.
_MADE_CACHE = None
if os.environ.get("MMVAE_TEST_JAX_CACHE", "") != "off":
  if "JAX_COMPILATION_CACHE_DIR" not in os.environ:
    _MADE_CACHE = os.environ["JAX_COMPILATION_CACHE_DIR"] = tempfile.mkdtemp(prefix="mmvae-test-jax-cache-")
  os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0.2")
  # A size bound (bytes) also makes JAX take a file lock (the filelock package) around every read and write, so
  # parallel test processes never read an entry another is still writing.
  os.environ.setdefault("JAX_COMPILATION_CACHE_MAX_SIZE", str(4 << 30))

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


# The slow tier: long integration tests (whole trainings, subprocess pipelines, multi-process runs, fault
# injection), run by `pytest -m slow` after the fast tier in .ci/run. Listed here, by file or by test, so the
# split is seen in one place; times are from `pytest --durations=0` on the 2-core machine. A test may also carry
# @pytest.mark.slow itself.
SLOW = (
    # whole files: each trains, prepares or runs subprocesses in most of its tests
    "tests/test_fault_injection.py", "tests/test_faults_data.py", "tests/test_faults_disk.py",
    "tests/test_faults_signals.py", "tests/mmvae/test_temporal.py", "tests/mmvae/test_sweep.py",
    "tests/mmvae/train/test_multihost.py", "tests/data_prep/test_beam_prep.py", "tests/mmvae/test_embed.py",
    "tests/mmvae/analysis/test_analyze_streamed.py", "tests/mmvae/analysis/test_analyze_e2e.py",
    "tests/data_prep/test_synthetic_video.py", "tests/mmvae/zoo/test_mcvs.py", "tests/data_prep/test_storage_scale.py",
    "tests/mmvae/modalities/test_video_points.py",
    # single tests: the fast tier keeps a cheaper test of the same code
    "tests/mmvae/test_configs.py::test_mcvs_runs_one_step_of_every_stage_on_the_mmdigits_shapes",
    "tests/mmvae/test_configs.py::test_tiny_variant_runs_one_step[conv]",
    "tests/mmvae/test_configs.py::test_tiny_variant_runs_one_step[msvae_public]",
    "tests/mmvae/test_configs.py::test_tiny_variant_runs_one_step[voxceleb1]",
    "tests/mmvae/test_configs.py::test_tiny_variant_runs_one_step[avdigits]",
    "tests/mmvae/test_configs.py::test_tiny_variant_runs_one_step[mcvs]",
    "tests/mmvae/test_configs.py::test_tiny_variant_runs_one_step[temporal]",
    "tests/mmvae/zoo/test_baselines.py::test_every_kind_agrees_on_one_and_four_devices_and_learns",
    "tests/mmvae/zoo/test_baselines.py::test_mmvae_dreg_gradients_are_iwae_for_the_decoders_and_dreg_for_the_encoders",
    "tests/mmvae/train/test_train_step.py::test_runner_with_labels_matches_one_device_over_steps",
    "tests/mmvae/train/test_train_step.py::test_runner_with_face_augmentations_matches_one_device_over_steps",
    "tests/mmvae/train/test_train_step.py::test_pmap_batch_level_terms_equal_single_device",
    "tests/mmvae/train/test_train_step.py::test_several_steps_per_dispatch_equal_single_steps",
    "tests/mmvae/train/test_train_step.py::test_pmap_and_sharded_runners_agree_over_steps",
    "tests/mmvae/train/test_trainer.py::test_sigkill_and_resume_gives_the_same_parameters",
    "tests/data_prep/test_audio_views.py::test_prep_with_views_has_the_same_fingerprint_on_two_workers",
    "tests/data_prep/test_audio_views.py::test_mini_prep_with_three_views",
    "tests/data_prep/test_audio_views.py::test_training_on_views_runs_and_analysis_encodes_view_0",
    "tests/mmvae/train/test_trainer.py::test_several_steps_per_dispatch_train_the_same_run",
    "tests/mmvae/train/test_auto_dispatch.py::test_auto_blocks_train_the_same_run_as_single_steps",
    "tests/mmvae/train/test_trainer.py::test_nan_stops_with_step_and_term_and_keeps_last_good_checkpoint",
    "tests/mmvae/train/test_train_log.py::test_weights_and_biases_offline_run_holds_scalars_and_images",
    "tests/mmvae/modalities/test_kinds.py::test_a_toy_modality_kind_registered_here_trains_end_to_end_beside_text",
    "tests/mmvae/test_data_reader.py::test_grain_pipeline_rows_and_saved_state_follow_the_contract[2]",
    "tests/mmvae/test_cli.py::test_analyze_checkpoint_option_picks_that_step",
    "tests/mmvae/test_cli.py::test_prep_prints_no_library_noise",
    "tests/mmvae/test_models.py::test_heads_sit_on_one_shared_trunk[conv:tiny-shapes1]",
    "tests/data_prep/test_features.py::test_a_contrastive_model_trains_and_is_analysed",
    "tests/data_prep/test_mmdigits.py::test_same_seed_same_arrays_with_any_worker_count",
    "tests/mmvae/zoo/test_zoo.py::test_every_kind_agrees_on_one_and_four_devices_and_learns[mcvs",
    "tests/mmvae/test_cv.py::test_sweep_cv_end_to_end",
    # GE2E on all of voxceleb1-mini, prep voxceleb1:tiny and the join (~30 s)
    "tests/data_prep/test_pretrained_voice.py::test_extract_on_voxceleb1_mini_joins_every_example",
    # the voxceleb1_pretrained variants and the frozen dlib target train on a joined dataset (~110 s together)
    "tests/data_prep/test_pretrained_rows.py::test_every_variant_trains_two_steps_on_a_joined_dataset",
    "tests/data_prep/test_pretrained_rows.py::test_the_frozen_dlib_target_stays_bit_identical_while_the_voice_adapter_trains",
    # these two share a module fixture that trains synthetic:tiny (~60 s); the rest of test_index.py is fast
    "tests/mmvae/test_index.py::test_index_of_a_run_holds_its_entries_and_answers_ids",
    "tests/mmvae/test_index.py::test_raw_queries_wav_image_and_an_unreadable_wav",
    "tests/mmvae/test_index.py::test_add_then_query_finds_the_added_entry_first",
    # these two share a module fixture that preps mmdigits --text free on a subset (~15 s) and trains on it (~30 s)
    "tests/data_prep/test_free_text.py::test_prep_free_text_saves_a_tokenizer_whose_tokens_decode_back",
    "tests/data_prep/test_free_text.py::test_a_query_in_words_the_corpus_never_used_returns_results",
    "tests/data_prep/test_free_text.py::test_a_video_file_finds_its_own_clip_first",
    # these two share a module fixture that prepares and trains avdigits:tiny and indexes it (~50 s); the rest of
    # test_serve.py is fast
    "tests/mmvae/test_serve.py::test_text_wav_and_image_queries_equal_the_library_and_the_voice_generates",
    "tests/mmvae/test_serve.py::test_headless_chromium_submits_a_text_and_a_wav_and_sees_results_with_images",
)


def pytest_collection_modifyitems(config, items):
  """Marks the tests of SLOW (by node id prefix) slow."""
  for item in items:
    if item.nodeid.startswith(SLOW):
      item.add_marker(pytest.mark.slow)


def pytest_unconfigure(config):
  """Removes the compilation cache this run made (not one it was given)."""
  if _MADE_CACHE is not None:
    shutil.rmtree(_MADE_CACHE, ignore_errors=True)


def pytest_xdist_auto_num_workers(config):
  """`-n auto` (pyproject's addopts): one test process per core, at most 4 (each holds a JAX runtime)."""
  return max(1, min(os.cpu_count() or 1, 4))
