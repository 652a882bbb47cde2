"""Your own data: a folder per person -> example specs, prepared by the VoxCeleb1 pipeline (`mmvae prep folder`).

Layout (ROOT/<person>/ is one identity; every <clip>.wav in it is one example):

  ROOT/<person>/<clip>.wav       the clip's audio (any sample rate, mono or not: resampled and mixed down)
  ROOT/<person>/<clip>/*.jpg     the clip's face frames (.jpg, .jpeg or .png), used when the folder holds any
  ROOT/<person>/faces/*.jpg      else the person's face frames, shared by every clip of theirs without a folder
  ROOT/<person>/<clip>.txt       optional transcript: given for every clip, it becomes a `text` tokens modality

Labels index the sorted person names. Splits are seeded and made per group of clips: a group is a video of the
optional --videos CSV (columns clip,video; clip = <person>/<clip>[.wav]), else the clip alone, so no video has clips
in two splits. Each group goes with the person who has most clips in it (ties: the first name); per person, its
groups in sorted order are permuted by np.random.default_rng([seed, crc32(person)]) (one person's groups do not
move when another person is added) and the first round(test_fraction * n) go to test, the next
round(validation_fraction * n) to validation, the rest to train (round half up; at least one group for a split with
a fraction > 0 while the person keeps one train group, so a person with one group is train only): closed-set
identification, every person in train, as VoxCeleb1's iden_split.txt. Frames are taken in order (numeric names by
number); per-clip folders give no frame sequences (audio_frames, face_frames), whose frame rate this layout does not
state. Folders whose name starts with '.' are not persons; other folders without a .wav are listed as skipped.
"""

import collections
import csv
import pathlib
import sys
import zlib

import numpy as np

from data_prep import corpora, digit_text, example, pipeline, storage
from data_prep.corpus import Corpus
from data_prep.corpus import clip_frames
from data_prep.voxceleb1 import split_warnings

CORPUS = "folder"
FACES = "faces"  # ROOT/<person>/faces/: the person's frames, for clips without their own folder
AUDIO_SUFFIX = ".wav"
MAX_TEXT_TOKENS = 64  # transcripts longer than this many tokens are cut (a note says how many)
TEXT_SPECIALS = ("<pad>", "<unk>")  # ids 0 and 1, as the digit text's vocabulary
LAYOUT = ("expected ROOT/<person>/<clip>.wav with face frames in ROOT/<person>/<clip>/*.jpg or "
          "ROOT/<person>/faces/*.jpg")


def _listing(items: list[str], limit: int = 3) -> str:
  more = f" and {len(items) - limit} more" if len(items) > limit else ""
  return ", ".join(items[:limit]) + more


def _clips(root: pathlib.Path) -> tuple[list[dict], list[dict]]:
  """([{id, person, wav, stem, folder}] of every ROOT/<person>/<clip>.wav, skip records of folders without one)."""
  if not root.is_dir():
    raise FileNotFoundError(f"--root {root}: no such folder; {LAYOUT}")
  clips, skipped = [], []
  for person in sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith(".")):
    wavs = sorted(p for p in person.iterdir() if p.is_file() and p.suffix.lower() == AUDIO_SUFFIX)
    if not wavs:
      skipped.append({"path": str(person), "reason": f"no <clip>{AUDIO_SUFFIX} in this folder: not a person"})
    clips.extend({"id": f"{person.name}/{w.name}", "person": person.name, "wav": w, "stem": w.stem,
                  "folder": person} for w in wavs)
  if not clips:
    direct = [p.name for p in root.iterdir() if p.is_file() and p.suffix.lower() == AUDIO_SUFFIX]
    hint = (f" (it holds {len(direct)} {AUDIO_SUFFIX} files itself: is it one person's folder? point --root at its "
            "parent)") if direct else ""
    raise ValueError(f"--root {root}: no person folders with clips{hint}; {LAYOUT}")
  return clips, skipped


def _faces(clip: dict) -> tuple[list[str], str]:
  """(the clip's frames in order, where they came from: 'clip' or 'person'); no frames: ([], '')."""
  own = clip_frames(clip["folder"] / clip["stem"])
  if own:
    return own, "clip"
  shared = clip_frames(clip["folder"] / FACES)
  return (shared, "person") if shared else ([], "")


def read_videos(path, clips: list[dict]) -> dict[str, str]:
  """The --videos CSV (header clip,video; clip = <person>/<clip> with or without .wav) -> {clip id: video}."""
  path = pathlib.Path(path)
  if not path.is_file():
    raise FileNotFoundError(f"--videos {path}: no such file; expected a CSV with the header clip,video")
  known = {c["id"][:-len(AUDIO_SUFFIX)]: c["id"] for c in clips}  # <person>/<clip> -> the clip's id
  out = {}
  with open(path, newline="", encoding="utf-8-sig") as f:
    reader = csv.reader(f)
    header = [h.strip().lower() for h in next(reader, [])]
    if "clip" not in header or "video" not in header:
      raise ValueError(f"{path}: the first line must be the header clip,video, got {','.join(header)!r}")
    at_clip, at_video = header.index("clip"), header.index("video")
    for line_no, row in enumerate(reader, start=2):
      if not any(v.strip() for v in row):
        continue
      if len(row) <= max(at_clip, at_video) or not row[at_video].strip():
        raise ValueError(f"{path}:{line_no}: expected <person>/<clip>,<video>, got {','.join(row)!r}")
      name, video = row[at_clip].strip().replace("\\", "/"), row[at_video].strip()
      clip = known.get(name[:-len(AUDIO_SUFFIX)] if name.lower().endswith(AUDIO_SUFFIX) else name)
      if clip is None:
        raise ValueError(f"{path}:{line_no}: clip {name!r} is not ROOT/<person>/<clip>{AUDIO_SUFFIX} of any clip found")
      if out.get(clip, video) != video:
        raise ValueError(f"{path}:{line_no}: clip {name!r} is given two videos, {out[clip]!r} and {video!r}")
      out[clip] = video
  return out


def split_counts(n: int, validation: float, test: float) -> tuple[int, int]:
  """(test groups, validation groups) of a person with n groups: round half up, at least 1 for a split with a
  fraction > 0 while one group stays in train."""
  def take(fraction: float, room: int) -> int:
    want = int(np.floor(fraction * n + 0.5))
    return min(max(want, 1 if fraction > 0 else 0), max(room, 0))
  n_test = take(test, n - 1)
  return n_test, take(validation, n - 1 - n_test)


def check_fractions(validation: float, test: float) -> None:
  if not (0 <= validation < 1 and 0 <= test < 1 and validation + test < 1):
    raise ValueError(f"--validation-fraction {validation:g} and --test-fraction {test:g} must each be in [0, 1) "
                     "with a sum below 1 (the rest is train)")


def assign_splits(clips: list[dict], videos: dict[str, str], seed: int, validation: float,
                  test: float) -> dict[str, str]:
  """{clip id: split} by the seeded group rule of the module docstring."""
  if seed < 0:
    raise ValueError(f"--split-seed {seed} must be >= 0")
  check_fractions(validation, test)
  members = collections.defaultdict(list)
  for c in clips:
    members[("video", videos[c["id"]]) if c["id"] in videos else ("clip", c["id"])].append(c)
  owned = collections.defaultdict(list)
  for key, group in members.items():
    counts = collections.Counter(c["person"] for c in group)
    owned[min(counts, key=lambda p: (-counts[p], p))].append(key)
  split_of = {}
  for person in sorted(owned):
    keys = sorted(owned[person])
    order = np.random.default_rng([seed, zlib.crc32(person.encode("utf-8"))]).permutation(len(keys))
    n_test, n_val = split_counts(len(keys), validation, test)
    for rank, k in enumerate(order):
      split = "test" if rank < n_test else "validation" if rank < n_test + n_val else "train"
      split_of.update({c["id"]: split for c in members[keys[k]]})
  return split_of


def _text(clips: list[dict], split_of: dict[str, str]) -> tuple[dict | None, dict[str, np.ndarray], list[str]]:
  """(the text modality's manifest entry, {clip id: token ids}, notes); (None, {}, []) when no clip has a .txt."""
  texts = {}
  for c in clips:
    path = c["folder"] / f"{c['stem']}.txt"
    if path.is_file():
      texts[c["id"]] = digit_text.tokenize(path.read_text(encoding="utf-8-sig"))
  if not texts:
    return None, {}, []
  if len(texts) < len(clips):
    missing = [c["folder"] / f"{c['stem']}.txt" for c in clips if c["id"] not in texts]
    raise ValueError(f"{len(texts)} of {len(clips)} clips have a transcript <clip>.txt: give one for every clip or "
                     f"none; missing: {_listing([str(p) for p in missing])}")
  # The vocabulary of the training transcripts (a word only seen in validation or test is <unk>).
  words = sorted({w for i, tokens in texts.items() if split_of[i] == "train" for w in tokens})
  vocab = TEXT_SPECIALS + tuple(words)
  ids = {w: i for i, w in enumerate(vocab)}
  length = max(1, min(MAX_TEXT_TOKENS, max(len(t) for t in texts.values())))
  encoded = {}
  for i, tokens in texts.items():
    row = np.zeros(length, np.int32)
    row[:min(len(tokens), length)] = [ids.get(w, 1) for w in tokens[:length]]
    encoded[i] = row
  cut = sum(len(t) > length for t in texts.values())
  notes = [f"text: each clip's <clip>.txt, lowercased, split into words (punctuation dropped), as token ids over the "
           f"{len(words)} words of the training transcripts (sorted; 0 = <pad>, 1 = <unk>), {length} tokens"
           + (f"; {cut} longer transcripts cut to {length}" if cut else "")]
  entry = {"name": "text", "kind": "tokens", "shape": [length], "dtype": "int32", "vocab": list(vocab)}
  return entry, encoded, notes


def list_examples(root, videos=None, seed: int = 0, validation: float = 0.2, test: float = 0.2) -> Corpus:
  """Scans ROOT (the module docstring's layout) into example specs; ValueError/FileNotFoundError for a bad layout."""
  root = pathlib.Path(root)
  check_fractions(validation, test)
  clips, skipped = _clips(root)
  faceless = []
  for c in clips:
    c["faces"], c["source"] = _faces(c)
    if not c["faces"]:
      faceless.append(c)
  if faceless:
    raise ValueError(f"{len(faceless)} clip(s) have no face frames: {_listing([c['id'] for c in faceless])}; looked "
                     f"in ROOT/<person>/<clip>/ and ROOT/<person>/{FACES}/ (.jpg, .jpeg or .png), e.g. "
                     f"{faceless[0]['folder'] / faceless[0]['stem']}/")
  persons = sorted({c["person"] for c in clips})
  if len(persons) < 2:
    raise ValueError(f"--root {root}: {len(persons)} person folder with clips ({_listing(persons)}); identity "
                     "retrieval needs at least 2 persons")
  video_of = read_videos(videos, clips) if videos is not None else {}
  split_of = assign_splits(clips, video_of, seed, validation, test)
  text_entry, tokens, notes = _text(clips, split_of)
  label_of = {p: i for i, p in enumerate(persons)}
  sharing = collections.defaultdict(list)  # clips sharing one folder of frames each take a different offset
  for c in clips:
    sharing[tuple(c["faces"])].append(c["id"])
  examples = []
  for c in sorted(clips, key=lambda c: c["id"]):
    group = sorted(sharing[tuple(c["faces"])])
    spec = {"id": c["id"], "wav": str(c["wav"]), "faces": c["faces"], "split": split_of[c["id"]],
            "identity": c["person"], "name": c["person"], "gender": "", "nationality": "",
            "video": video_of.get(c["id"], c["id"][:-len(AUDIO_SUFFIX)]), "label": label_of[c["person"]],
            "frame_shift": (group.index(c["id"]) + 0.5) / len(group), "clip": None}
    if text_entry:
      spec["extra"] = {"text": tokens[c["id"]]}
    examples.append(spec)
  per_clip = sum(c["source"] == "clip" for c in clips)
  listed = len(video_of)
  notes = [f"{CORPUS}: one identity per folder ROOT/<person>/, label = index of the person in the sorted list of "
           f"persons; faces of {per_clip} of {len(clips)} clips from their own folder ROOT/<person>/<clip>/, the "
           f"others from ROOT/<person>/{FACES}/",
           f"splits by group (a --videos video, else the clip; {listed} clips listed in --videos) per person: "
           f"groups permuted by np.random.default_rng([{seed}, crc32(person)]), the first "
           f"round({test:g} * n) test, the next round({validation:g} * n) validation (at least 1 each while a "
           "train group remains), the rest train; closed-set identification, as VoxCeleb1's iden_split.txt",
           *notes]
  trainless = sorted(set(persons) - {c["person"] for c in clips if split_of[c["id"]] == "train"})
  warnings_ = split_warnings(examples)
  if trainless:
    warnings_.append(f"{len(trainless)} person(s) have no train clip (their videos go with persons who have more "
                     f"clips in them): {_listing(trainless)}")
  for warning in warnings_:
    print(f"mmvae prep: warning: {warning}", file=sys.stderr)
    notes.append(f"warning: {warning}")
  identities = [{"identity": p, "name": p, "gender": "", "nationality": ""} for p in persons]
  return Corpus(examples=examples, identities=identities, attributes=[], skipped=skipped, split_policy="closed",
                extra_modalities=(text_entry,) if text_entry else (), notes=tuple(notes))


def prepare_folder(root, out, config="voxceleb1", videos=None, split_seed: int = 0,
                   validation_fraction: float = 0.2, test_fraction: float = 0.2, strict: bool = False,
                   workers: int = 0, beam_options: str | None = None) -> dict:
  """Prepares a folder-per-person root (see the module docstring) into OUT with the VoxCeleb1 pipeline."""
  check_fractions(validation_fraction, test_fraction)
  config = example.checked_config(config)[0]
  inputs = {"--root": root, **({"--videos": videos} if videos is not None else {})}
  with storage.Build(out, inputs=inputs) as build:
    layout = list_examples(root, videos=videos, seed=split_seed, validation=validation_fraction, test=test_fraction)
    return pipeline.run(layout, CORPUS, build, config, strict, workers, [], beam_options=beam_options)


def _add_arguments(parser, add_config) -> None:
  parser.add_argument("--root", required=True, help="folder holding one folder per person")
  parser.add_argument("--out", required=True, help=corpora.OUT_HELP)
  add_config(parser)
  parser.add_argument("--videos", default=None, metavar="CSV",
                      help="a CSV with the header clip,video (clip = <person>/<clip>, .wav optional): the clips of "
                           "one video always go to one split; unlisted clips are groups of their own (default: none)")
  parser.add_argument("--split-seed", type=int, default=0, help="seed of the split of each person's groups")
  parser.add_argument("--validation-fraction", type=float, default=0.2,
                      help="share of each person's groups in validation (rounded, at least 1 while a train group "
                           "remains; 0: none)")
  parser.add_argument("--test-fraction", type=float, default=0.2,
                      help="share of each person's groups in test (rounded, at least 1 while a train group remains; "
                           "0: none)")
  parser.add_argument("--strict", action="store_true",
                      help="fail on the first unreadable file instead of skipping it")
  parser.add_argument("--workers", type=int, default=0, help=corpora.WORKERS_HELP)
  corpora.add_beam(parser)


def _run(args, config) -> None:
  prepare_folder(args.root, args.out, config=config, videos=args.videos, split_seed=args.split_seed,
                 validation_fraction=args.validation_fraction, test_fraction=args.test_fraction,
                 strict=args.strict, workers=args.workers, beam_options=corpora.beam_options(args))


corpora.register(corpora.Kind(
    CORPUS, help="your own data: ROOT/<person>/<clip>.wav with face frames in ROOT/<person>/<clip>/*.jpg or "
                 "ROOT/<person>/faces/*.jpg",
    description="One identity per folder ROOT/<person>/; each <clip>.wav is one example. Faces: "
                "ROOT/<person>/<clip>/*.jpg (.jpeg, .png) when that folder holds any, else ROOT/<person>/faces/*.jpg. "
                "An optional ROOT/<person>/<clip>.txt for every clip becomes a `text` modality. Splits: seeded, per "
                "person, by group (a --videos video, else the clip): no video in two splits, every person in train.",
    add_arguments=_add_arguments, run=_run, prepare=prepare_folder, config="voxceleb1"))
