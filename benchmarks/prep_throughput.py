"""Single-core throughput of the data_prep audio and face pipelines (target: spectrogram >= 300x RT).

  python benchmarks/prep_throughput.py [--seconds 2] [--repeats 3] [--data ../shared/data]

Runs in one process with BLAS/OpenMP pools pinned to one thread, so the figures are per core;
`mmvae prep` scales them by running one such worker per core. Each row is the best of
`--repeats` runs of at least `--seconds` each; x real time = audio seconds per CPU second.
"""

import argparse
import os

for _var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
  os.environ.setdefault(_var, "1")

import pathlib  # pylint: disable=g-import-not-at-top,wrong-import-position
import sys
import time

import numpy as np
import soundfile

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))
from data_prep import audio, faces  # pylint: disable=wrong-import-position
from experiments.configs.common import base_config  # pylint: disable=wrong-import-position

DEFAULT_DATA = pathlib.Path(__file__).resolve().parents[2] / "shared" / "data" / "voxceleb1-mini"


def measure(fn, seconds, repeats):
  """(wall s, CPU s) per call: the best of `repeats` runs of at least `seconds` each."""
  fn()  # warm caches (FFT plans, windows, file cache)
  best_wall = best_cpu = float("inf")
  for _ in range(repeats):
    n, w0, c0 = 0, time.perf_counter(), time.process_time()
    while True:
      fn()
      n += 1
      wall = time.perf_counter() - w0
      if wall >= seconds:
        break
    best_wall = min(best_wall, wall / n)
    best_cpu = min(best_cpu, (time.process_time() - c0) / n)
  return best_wall, best_cpu


def main(argv=None):
  p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  p.add_argument("--seconds", type=float, default=2.0, help="minimum seconds per run")
  p.add_argument("--repeats", type=int, default=3, help="runs per row; the best is shown")
  p.add_argument("--data", type=pathlib.Path, default=DEFAULT_DATA, help="voxceleb1-mini folder")
  args = p.parse_args(argv)
  if args.seconds <= 0 or args.repeats < 1:
    p.error("--seconds must be > 0 and --repeats >= 1")

  cfg = base_config().data
  seg_s = cfg.segment_samples / cfg.sample_rate
  wavs = sorted((args.data / "wav").glob("*/*/*.wav"))
  jpgs = sorted((args.data / "faces").glob("*/*/*.jpg"))
  tmp_wav = None
  if wavs:
    wav, source = wavs[0], f"real VoxCeleb1 wav ({wavs[0].name})"
  else:  # synthetic noise, written to a temporary file so the WAV path is measured too
    import tempfile  # pylint: disable=g-import-not-at-top
    tmp_wav = pathlib.Path(tempfile.mkdtemp()) / "noise.wav"
    soundfile.write(str(tmp_wav), 0.1 * np.random.default_rng(0).standard_normal(96000), 16000)
    wav, source = tmp_wav, "synthetic noise"
  wave = audio.load_wav(wav, cfg.sample_rate)
  wav_s = wave.shape[0] / cfg.sample_rate
  seg = audio.crop_segment(wave, cfg.segment_samples, "center")
  rng = np.random.default_rng(0)
  cfg_tf = base_config().data
  cfg_tf.time_average = False

  rows = []

  def audio_row(name, fn, audio_s):
    wall, cpu = measure(fn, args.seconds, args.repeats)
    rows.append((name, f"{wall * 1e3:8.2f}", f"{cpu * 1e3:8.2f}", f"{audio_s / cpu:8.0f}x"))

  audio_row("spectrogram [297, 512] (reference recipe)",
            lambda: audio.spectrogram(seg, cfg, rng), seg_s)
  audio_row("spectrogram + normalise_per_bin",
            lambda: audio.normalise_per_bin(audio.spectrogram(seg, cfg, rng)), seg_s)
  audio_row(f"utterance_features(wav {wav_s:.1f} s) -> [512]",
            lambda: audio.utterance_features(wav, cfg, True, rng), seg_s)
  audio_row(f"utterance_features(wav {wav_s:.1f} s) -> [297, 512]",
            lambda: audio.utterance_features(wav, cfg_tf, True, rng), seg_s)

  face_rows = []
  if jpgs:
    sizes = [min(_image_size(j)) for j in jpgs[:50]]
    for size, gray in ((23, True), (64, False)):
      it = iter(range(10**12))
      wall, cpu = measure(lambda: faces.load_face(jpgs[next(it) % len(jpgs)], size, gray),
                          args.seconds, args.repeats)
      kind = f"{size}x{size} {'gray' if gray else 'RGB'}"
      face_rows.append((f"load_face {kind} (real JPEGs)", f"{wall * 1e3:8.2f}",
                        f"{cpu * 1e3:8.2f}", f"{1 / cpu:8.0f}/s"))
  if tmp_wav is not None:
    tmp_wav.unlink()

  print(f"audio: {source}; segment {cfg.segment_samples} samples = {seg_s:.3f} s; "
        f"best of {args.repeats} x {args.seconds:g} s; one process, one thread")
  head = ("pipeline", "wall ms", "CPU ms", "x RT/core")
  width = max(len(r[0]) for r in rows + face_rows + [head])
  print(f"{head[0]:<{width}} | {head[1]:>8} | {head[2]:>8} | {head[3]:>9}")
  print("-" * (width + 35))
  for r in rows:
    print(f"{r[0]:<{width}} | {r[1]} | {r[2]} | {r[3]:>9}")
  if face_rows:
    print(f"\nfaces: {len(jpgs)} real JPEGs, {np.min(sizes)}-{np.max(sizes)} px (first 50)")
    print(f"{'pipeline':<{width}} | {'wall ms':>8} | {'CPU ms':>8} | {'faces/s':>9}")
    print("-" * (width + 35))
    for r in face_rows:
      print(f"{r[0]:<{width}} | {r[1]} | {r[2]} | {r[3]:>9}")
  else:
    print(f"\nfaces: no JPEGs under {args.data / 'faces'}; face rows skipped")


def _image_size(path):
  from PIL import Image  # pylint: disable=g-import-not-at-top
  with Image.open(path) as img:
    return img.size


if __name__ == "__main__":
  main()
