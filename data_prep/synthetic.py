"""The built-in synthetic audio-visual identity corpus, written in the official VoxCeleb1 layout.

Each identity gets attributes (sex, age, size, skin, hair, glasses) drawn from the seed. Sex, age
and size shape both the voice (pitch, vocal-tract length) and the face (jaw, width, grey hair), so
a voice carries information about the face; identity-specific timbre and facial details make every
identity distinctive in both modalities. See synthetic_voice.py and synthetic_face.py.

With video=True every utterance also gets its lip-synced face frames at FPS (VoxCeleb1's per-utterance
layout, unzippedIntervalFaces/): the mouth opening of frame k follows the loudness of the speech in
[k / FPS, (k + 1) / FPS) s, the head moves smoothly, the eyes blink. Everything else (WAVs, faces/) is
byte-identical to the corpus generated without video.
"""

import inspect
import json
import multiprocessing
import os
import pathlib
import shutil

import numpy as np
import soundfile
from PIL import Image

from data_prep import corpora, example, pipeline, storage, synthetic_face, synthetic_voice, voxceleb1
from mmvae import main_guard
from mmvae import progress as progress_lib
from mmvae import workers as workers_lib

GENERATOR_VERSION = 1
FACE_SIZE = 96
FPS = 25  # VoxCeleb frame indices count 25 fps video frames; faces are sampled at 1 per second
CLIP_SIZE = 64  # side of the per-utterance (video=True) frames; prep resizes them to data.face_size
ATTRIBUTES = {
    "sex": ("m", "f"), "age": ("young", "adult", "senior"), "size": ("small", "medium", "large"),
    "skin": ("light", "medium", "dark"), "hair_color": ("black", "brown", "blond", "red"),
    "hair_length": ("short", "long"), "glasses": ("no", "yes"),
}
VOICE_LINKED = ("sex", "age", "size")  # shape both modalities; the others are face-only
NUMERIC = ("pitch_hz", "vtl")  # the voice's median f0 and relative vocal-tract length
META_COLUMNS = ("VoxCeleb1 ID", "VGGFace1 ID", "Gender", "Nationality", "Set")
SPLIT_CODES = {"train": 1, "validation": 2, "test": 3}
FIRST_NAMES = {
    "m": ("Adam", "Boris", "Carl", "Dmitri", "Emil", "Felix", "Gustav", "Hugo", "Ivan", "Jonas", "Karl", "Leon"),
    "f": ("Ada", "Berta", "Clara", "Dora", "Edith", "Frida", "Greta", "Hedy", "Irene", "Juno", "Kira", "Lise"),
}
_UNFINISHED = ".generating"
_ID_CHARS = np.array(list("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_"))
# Stream tags of the SeedSequence entropy: every random draw is a function of (seed, stream, indices).
_ATTRS, _VOICE, _FACE, _VIDEO_IDS, _CHANNEL, _SCENE, _UTTERANCE, _FRAMES, _SPLIT, _EXTRA = range(10)
_CLIP = 10  # the lip-synced clips (video=True): per video its still, per utterance its motion


def _rng(*entropy: int) -> np.random.Generator:
  return np.random.default_rng(np.random.SeedSequence([int(e) for e in entropy]))


def _balanced(values: tuple, n: int, rng: np.random.Generator) -> list:
  """n draws in which every value occurs equally often (up to one), in random order."""
  return [values[k] for k in rng.permutation(np.resize(np.arange(len(values)), n))]


def identity_attributes(identities: int, seed: int) -> list:
  """Per-identity attribute dicts; sex, age, size, skin and hair colour are balanced over identities."""
  rng = _rng(seed, _ATTRS)
  columns = {k: _balanced(ATTRIBUTES[k], identities, rng) for k in ("sex", "age", "size", "skin", "hair_color")}
  people = []
  for i in range(identities):
    attrs = {k: v[i] for k, v in columns.items()}
    extra = _rng(seed, _EXTRA, i)
    # Hair length and glasses are drawn per identity: long hair is likelier for women.
    long_p = 0.75 if attrs["sex"] == "f" else 0.2
    attrs["hair_length"] = "long" if extra.random() < long_p else "short"
    attrs["glasses"] = "yes" if extra.random() < 0.25 else "no"
    people.append(attrs)
  return people


def _video_ids(seed: int, index: int, count: int) -> list:
  rng = _rng(seed, _VIDEO_IDS, index)
  ids = []
  while len(ids) < count:
    candidate = "".join(rng.choice(_ID_CHARS, 11))
    if candidate not in ids:
      ids.append(candidate)
  return ids


def _split_videos(split: str, sexes: list, videos: int, seed: int) -> list:
  """Per identity, the split name of each of its videos."""
  n = len(sexes)
  if split == "closed":  # new videos of every identity in validation and test
    n_held = max(1, int(round(0.2 * videos)))
    names = ["test"] * n_held + ["validation"] * n_held + ["train"] * (videos - 2 * n_held)
    return [[names[k] for k in _rng(seed, _SPLIT, i).permutation(videos)] for i in range(n)]
  # Open set: whole identities held out; interleave the sexes so held-out sets hold both.
  rng = _rng(seed, _SPLIT)
  by_sex = [list(rng.permutation([i for i in range(n) if sexes[i] == s])) for s in ATTRIBUTES["sex"]]
  order = [i for pair in zip(*by_sex) for i in pair]
  order += [i for group in by_sex for i in group[min(map(len, by_sex)):]]
  n_held = max(1, int(round(0.15 * n)))
  which = {}
  for rank, i in enumerate(order):
    which[i] = "test" if rank < n_held else "validation" if rank < 2 * n_held else "train"
  return [[which[i]] * videos for i in range(n)]


def _check_args(identities, split, videos_per_identity, utterances_per_video, frames_per_video,
                utterance_seconds) -> None:
  if split not in ("closed", "open"):
    raise ValueError(f"split must be 'closed' or 'open', got {split!r}")
  if not 2 <= identities <= 9999:
    raise ValueError(f"identities must be between 2 and 9999 (VoxCeleb1-style ids id90001..), got {identities}")
  if split == "open" and identities < 3:
    raise ValueError(f"the open split holds out whole identities for validation and test: use identities >= 3, "
                     f"got {identities}")
  if split == "closed" and videos_per_identity < 3:
    raise ValueError("the closed split needs videos_per_identity >= 3 (train, validation and test videos of "
                     f"every identity), got {videos_per_identity}")
  if videos_per_identity < 1 or utterances_per_video < 1 or frames_per_video < 1:
    raise ValueError("videos_per_identity, utterances_per_video and frames_per_video must be >= 1, got "
                     f"{videos_per_identity}, {utterances_per_video}, {frames_per_video}")
  if not 0.5 <= utterance_seconds <= 60:
    raise ValueError(f"utterance_seconds must be between 0.5 and 60, got {utterance_seconds}")


def _settings(**kwargs) -> dict:
  """generate_corpus's corpus-defining arguments, defaults filled in."""
  unknown = set(kwargs) - set(_CORPUS_DEFAULTS)
  if unknown:
    raise TypeError(f"unknown synthetic corpus argument(s) {sorted(unknown)}")
  return {**_CORPUS_DEFAULTS, **kwargs}


def check_args(**kwargs) -> None:
  """Raises ValueError for arguments generate_corpus would refuse, before anything is written."""
  s = _settings(**kwargs)
  _check_args(s["identities"], s["split"], s["videos_per_identity"], s["utterances_per_video"],
              s["frames_per_video"], s["utterance_seconds"])


def is_corpus(root, **kwargs) -> bool:
  """Whether root holds a complete corpus that generate_corpus(root, **kwargs) would write again."""
  try:
    params = json.loads((pathlib.Path(root) / "synthetic.json").read_text())
  except (OSError, ValueError):
    return False
  wanted = dict(_settings(**kwargs), generator_version=GENERATOR_VERSION, face_size=FACE_SIZE,
                sample_rate=synthetic_voice.SAMPLE_RATE)
  if wanted["video"]:
    wanted.update(clip_size=CLIP_SIZE, fps=FPS)
  if not isinstance(params, dict):
    return False
  params.setdefault("video", False)  # synthetic.json names `video` only for a corpus with video
  return all(params.get(k) == v for k, v in wanted.items())


def _prepare_root(root: pathlib.Path) -> None:
  """Refuses a non-empty folder unless it holds an earlier (or an interrupted) synthetic corpus, which is replaced."""
  if root.exists() and any(root.iterdir()):
    if not (root / "synthetic.json").is_file() and not (root / _UNFINISHED).is_file():
      raise ValueError(f"{root} is not empty and holds no synthetic corpus; choose an empty or new folder")
    for name in ("wav", "faces", "unzippedIntervalFaces"):
      shutil.rmtree(root / name, ignore_errors=True)
    for name in ("synthetic.json", "iden_split.txt", "vox1_meta.csv", "README.md"):
      (root / name).unlink(missing_ok=True)
  root.mkdir(parents=True, exist_ok=True)
  # Until synthetic.json is written, this marks the folder as a corpus being generated: a killed
  # generation can be rerun into the same folder.
  (root / _UNFINISHED).write_text("generate_corpus did not finish; rerun it to replace this folder\n")


def clip_folder(root, name: str, video: str, utterance: int) -> pathlib.Path:
  """The per-utterance frame folder (official VoxCeleb1 layout) of utterance number `utterance` (1-based)."""
  return pathlib.Path(root) / "unzippedIntervalFaces" / "data" / name / "1.6" / video / str(utterance)


def _write_identity(job: dict) -> None:
  """Writes every utterance and face frame of one identity; a pure function of the job."""
  root, seed, i = job["root"], job["seed"], job["index"]
  for v, video in enumerate(job["videos"]):
    channel = synthetic_voice.make_channel(_rng(seed, _CHANNEL, i, v))
    scene = synthetic_face.make_scene(job["face"], _rng(seed, _SCENE, i, v))
    if job["video"]:
      still = synthetic_face.make_clip_still(job["face"], scene, _rng(seed, _CLIP, i, v), CLIP_SIZE)
    wav_dir = root / "wav" / job["id"] / video
    wav_dir.mkdir(parents=True, exist_ok=True)
    for u in range(job["utterances"]):
      x, speech = synthetic_voice.synthesize(job["voice"], channel, job["seconds"], _rng(seed, _UTTERANCE, i, v, u))
      soundfile.write(wav_dir / f"{u + 1:05d}.wav", synthetic_voice.to_pcm16(x), synthetic_voice.SAMPLE_RATE,
                      subtype="PCM_16", format="WAV")
      if job["video"]:
        # Frame k shows the mouth opened as loud as the speech is in [k / FPS, (k + 1) / FPS) s.
        openings = synthetic_face.mouth_openings(synthetic_voice.frame_rms(speech, FPS))
        clip_dir = clip_folder(root, job["name"], video, u + 1)
        clip_dir.mkdir(parents=True, exist_ok=True)
        for k, img in enumerate(synthetic_face.render_clip(still, openings, FPS, _rng(seed, _CLIP, i, v, u))):
          Image.fromarray(img).save(clip_dir / f"{k + 1:05d}.jpg", quality=90)
    face_dir = root / "faces" / job["name"] / video
    face_dir.mkdir(parents=True, exist_ok=True)
    first_second = int(_rng(seed, _FRAMES, i, v).integers(0, 60))
    for k in range(job["frames"]):
      img = synthetic_face.render(job["face"], scene, _rng(seed, _FRAMES, i, v, k), FACE_SIZE)
      Image.fromarray(img).save(face_dir / f"{(first_second + k) * FPS:07d}.jpg", quality=90)


def generate_corpus(root, identities: int = 24, seed: int = 0, split: str = "closed", videos_per_identity: int = 7,
                    utterances_per_video: int = 4, frames_per_video: int = 4, utterance_seconds: float = 3.2,
                    video: bool = False, progress: bool = True, workers: int = 0) -> pathlib.Path:
  """Writes the synthetic corpus to root in VoxCeleb1 layout (wav/, faces/, iden_split.txt, vox1_meta.csv).

  video: also each utterance's lip-synced frames at FPS, unzippedIntervalFaces/data/<name>/1.6/<video>/<n>/
  (n = the utterance number without zeros; frame k + 1 shows [k / FPS, (k + 1) / FPS) s of the WAV).
  """
  _check_args(identities, split, videos_per_identity, utterances_per_video, frames_per_video, utterance_seconds)
  root = pathlib.Path(root)
  _prepare_root(root)
  people = identity_attributes(identities, seed)
  splits = _split_videos(split, [p["sex"] for p in people], videos_per_identity, seed)
  jobs, counts, named = [], {}, {"m": 0, "f": 0}
  for i, attrs in enumerate(people):
    voice = synthetic_voice.make_voice(attrs, _rng(seed, _VOICE, i))
    attrs["pitch_hz"] = round(voice.f0_hz, 1)
    attrs["vtl"] = round(1.0 / voice.formant_scale, 3)
    first = FIRST_NAMES[attrs["sex"]][named[attrs["sex"]] % len(FIRST_NAMES[attrs["sex"]])]
    named[attrs["sex"]] += 1
    jobs.append(dict(root=root, seed=seed, index=i, id=f"id{90001 + i}", name=f"Synth_{i + 1:03d}_{first}",
                     voice=voice, face=synthetic_face.make_face(attrs, _rng(seed, _FACE, i)),
                     videos=_video_ids(seed, i, videos_per_identity), utterances=utterances_per_video,
                     frames=frames_per_video, seconds=utterance_seconds, video=bool(video)))
  workers = main_guard.processes(min(workers or len(os.sched_getaffinity(0)), identities))
  bar = progress_lib.bar(total=identities, desc="synthetic corpus", unit="identity", disable=not progress)
  if workers > 1:
    # spawn, not fork: the caller may have started JAX threads, which fork does not survive.
    with workers_lib.starting():
      pool = multiprocessing.get_context("spawn").Pool(workers, initializer=workers_lib.exit_with_parent,
                                                       initargs=(os.getpid(),))
    with pool:
      for _ in pool.imap_unordered(_write_identity, jobs):
        bar.update()
  else:
    for job in jobs:
      _write_identity(job)
      bar.update()
  bar.close()

  lines = []
  for job, names in zip(jobs, splits):
    for ytid, name in zip(job["videos"], names):
      counts[name] = counts.get(name, 0) + utterances_per_video
      lines += [f"{SPLIT_CODES[name]} {job['id']}/{ytid}/{u + 1:05d}.wav" for u in range(utterances_per_video)]
  (root / "iden_split.txt").write_text("\n".join(lines) + "\n")
  extra = list(ATTRIBUTES) + list(NUMERIC)
  rows = ["\t".join(META_COLUMNS + tuple(extra))]
  for job, attrs, names in zip(jobs, people, splits):
    official = (job["id"], job["name"], attrs["sex"], "Synthetic", "test" if set(names) == {"test"} else "dev")
    rows.append("\t".join(official + tuple(str(attrs[k]) for k in extra)))
  (root / "vox1_meta.csv").write_text("\n".join(rows) + "\n")
  params = dict(generator_version=GENERATOR_VERSION, identities=identities, seed=seed, split=split,
                videos_per_identity=videos_per_identity, utterances_per_video=utterances_per_video,
                frames_per_video=frames_per_video, utterance_seconds=utterance_seconds, face_size=FACE_SIZE,
                sample_rate=synthetic_voice.SAMPLE_RATE, utterances={k: counts.get(k, 0) for k in SPLIT_CODES})
  if video:  # named only here, so that a corpus without video keeps the synthetic.json it always had
    params.update(video=True, clip_size=CLIP_SIZE, fps=FPS)
  (root / "README.md").write_text(_readme(params))
  # Written last: its presence marks a complete corpus that a later call may replace.
  (root / "synthetic.json").write_text(json.dumps(params, indent=2, sort_keys=True) + "\n")
  (root / _UNFINISHED).unlink()
  return root


# The arguments that define a corpus (the others only change how it is written), with their defaults.
_CORPUS_DEFAULTS = {k: p.default for k, p in inspect.signature(generate_corpus).parameters.items()
                    if k not in ("root", "progress", "workers")}


def _readme(p: dict) -> str:
  attrs = "\n".join(f"- `{k}`: {', '.join(v)}{' (also shapes the voice)' if k in VOICE_LINKED else ''}"
                    for k, v in ATTRIBUTES.items())
  split_text = ("closed: every identity has train, validation and test videos (test = new videos of seen "
                "identities)" if p["split"] == "closed" else
                "open: whole identities are held out (about 15% validation, 15% test, marked Set=test)")
  video_arg, clips = "", ""
  if p.get("video"):
    video_arg = ", video=True"
    clips = f"""- `unzippedIntervalFaces/data/<name>/1.6/<video>/<n>/<k>.jpg`: per utterance (`n` = its number without
  zeros, as in the official release) its lip-synced video at {p['fps']} fps, {p['clip_size']}x{p['clip_size']} RGB:
  frame `k` (1-based, 5 digits) shows [(k - 1) / {p['fps']}, k / {p['fps']}) s of the WAV, its mouth opened by the
  loudness of the speech then (silence: closed), with smooth head motion (roll, scale, shift) and blinks.
"""
  return f"""# Synthetic audio-visual identity corpus

Generated by `data_prep/synthetic.py` (generator version {p['generator_version']}) with
`generate_corpus(root, identities={p['identities']}, seed={p['seed']}, split='{p['split']}',
videos_per_identity={p['videos_per_identity']}, utterances_per_video={p['utterances_per_video']},
frames_per_video={p['frames_per_video']}, utterance_seconds={p['utterance_seconds']}{video_arg})`.
The same arguments give byte-identical files. Nothing here comes from real people.

Layout (official VoxCeleb1):
- `wav/<id>/<video>/<utterance>.wav`: {p['sample_rate']} Hz mono 16-bit PCM, source-filter voices
  (glottal pulses, vowel formants scaled by vocal-tract length, fricative noise, per-video room,
  microphone EQ, background noise and level).
- `faces/<name>/<video>/<frame>.jpg`: {p['face_size']}x{p['face_size']} RGB face crops, one per second of the
  video (frame index at {FPS} fps), rendered with per-frame pose, expression and light.
{clips}- `iden_split.txt`: `1|2|3 <id>/<video>/<utterance>.wav` (train, validation, test);
  {split_text}. Utterances: {p['utterances']}.
- `vox1_meta.csv`: the five official columns, then the attributes below, `pitch_hz` (median f0
  of the voice) and `vtl` (vocal-tract length relative to an adult medium-size man).
- `synthetic.json`: these parameters, machine-readable.

Attributes per identity:
{attrs}

Sex, age and size are shared by the two modalities: sex sets pitch (men ~120 Hz, women ~210 Hz),
vocal-tract length, jaw shape and hair length odds; age moves pitch and greys the hair; size
scales the formants and the width of head and neck. Skin, hair colour and glasses are face-only,
so a face generated from a voice can recover them only by recognising the identity.
"""


def _add_arguments(parser, add_config) -> None:
  parser.add_argument("--out", required=True, help="output folder; the raw corpus goes to OUT/raw")
  parser.add_argument("--identities", type=int, default=24, help="number of synthetic identities")
  parser.add_argument("--seed", type=int, default=0, help="seed of the generated corpus")
  parser.add_argument("--split", choices=("closed", "open"), default="closed",
                      help="closed: new videos of seen identities in test; open: unseen identities in test")
  add_config(parser)
  parser.add_argument("--workers", type=int, default=0, help=corpora.WORKERS_HELP)
  corpora.add_beam(parser)
  parser.add_argument("--video", action="store_true",
                      help="also write each utterance's lip-synced face frames at 25 fps (the mouth opens with the "
                           "voice's loudness; OUT/raw/unzippedIntervalFaces/, VoxCeleb1's per-utterance layout) and "
                           "prepare the frame sequences audio_frames and face_frames beside audio and face "
                           "(data.video_fps, data.sequence_steps); the WAVs and stills are those without --video")


def prepare_synthetic(out, identities: int = 24, seed: int = 0, split: str = "closed", config="synthetic",
                      workers: int = 0, video: bool = False, beam_options: str | None = None, **corpus) -> dict:
  """Generates the synthetic corpus into OUT/raw, then prepares it like VoxCeleb1.

  video: the corpus with lip-synced per-utterance frames, prepared with audio_frames and face_frames too
  (its audio and face modalities are those of the corpus without video). A killed run leaves its build
  folder beside OUT; the rerun takes a finished corpus from it instead of generating it again.
  corpus: further generate_corpus arguments (videos_per_identity, utterances_per_video, frames_per_video,
  utterance_seconds), e.g. for a small corpus. beam_options: prepare it on Apache Beam (see pipeline.run).
  """
  args = dict(identities=identities, seed=seed, split=split, video=bool(video), **corpus)
  check_args(**args)
  config = example.checked_config(config)[0]
  with storage.Build(out, keep_on_error=True) as build:
    raw = build.path / "raw"
    if build.adopt("raw", lambda root: is_corpus(root, **args)):
      print(f"reusing the synthetic corpus generated by an interrupted run -> {build.out / 'raw'}")
    else:
      generate_corpus(raw, workers=workers, **args)
    # The corpus's own iden_split.txt; `face` from the per-video stills, as without video.
    layout, notes = voxceleb1.layout_and_notes(raw, False, "synthetic", "closed", face_source="video")
    return pipeline.run(layout, "synthetic", build, config, False, workers, notes, beam_options=beam_options)


def _run(args, config) -> None:
  prepare_synthetic(args.out, identities=args.identities, seed=args.seed, split=args.split, config=config,
                    workers=args.workers, video=args.video, beam_options=corpora.beam_options(args))


corpora.register(corpora.Kind("synthetic", help="generate the built-in synthetic corpus and prepare it",
                              add_arguments=_add_arguments, run=_run, prepare=prepare_synthetic, config="synthetic"))
