"""VoxCeleb1 corpus layout -> example specs: wav/, face frames, iden_split.txt and vox1_meta.csv.

Face frames are looked up per utterance first, in the official face release layout
`unzippedIntervalFaces/data/<VGGFace1 ID>/1.6/<ytid>/<n>/*.jpg`, where `n` is the utterance
number without zero padding (`00003.wav` -> `3`, as in the official release; `00003` is
accepted too), then per video in `faces/<VGGFace1 ID>/<ytid>/*.jpg` (face_source='video': the other way round).

When every kept utterance has its per-utterance folder, the corpus also offers frame sequences
(Corpus.frame_sequences; spec['clip'] = that folder): its frames in order (numeric names by number) are
consecutive video frames, frame k at k / data.video_fps s of the utterance.

Split policies: `closed` keeps iden_split.txt (closed-set identification); `open` holds out the
identities marked Set=test in vox1_meta.csv (VoxCeleb1's verification test identities) for test.
"""

import csv
import pathlib
import sys

from data_prep import corpora, example, pipeline, storage
from data_prep import corpus as corpus_lib
from data_prep.corpus import Corpus

SPLIT_CODES = {"1": "train", "2": "validation", "3": "test"}
# Official vox1_meta.csv columns -> the keys used in specs and the manifest; other columns
# are extra per-identity attributes (the synthetic corpus adds sex, age, size, ...).
META_COLUMNS = {"VoxCeleb1 ID": "identity", "VGGFace1 ID": "name", "Gender": "gender",
                "Nationality": "nationality", "Set": "set"}
FACE_SOURCES = ("utterance", "video")
SPLIT_POLICIES = ("closed", "open")
SPLIT_NOTES = {
    "closed": "split_policy closed: iden_split.txt as given (1 train, 2 validation, 3 test), closed-set "
              "identification: test holds other utterances of identities seen in training",
    "open": "split_policy open: the identities with Set=test in vox1_meta.csv (in VoxCeleb1 the verification "
            "test identities, id10270-id10309) are held out: every utterance of theirs is in test and none is in "
            "train or validation; the other identities keep their iden_split.txt train and validation "
            "utterances, and their iden_split.txt test utterances go to validation, so no utterance is dropped "
            "and test measures unseen identities only (validation: new utterances of seen identities)",
}
MIN_RETRIEVAL_IDENTITIES = 2  # retrieval ranks a query's own identity against at least one other


def read_meta(path) -> tuple[dict[str, dict], list[str]]:
  """vox1_meta.csv (tab-separated) -> ({VoxCeleb1 ID: row}, names of the extra columns)."""
  path = pathlib.Path(path)
  with open(path, newline="", encoding="utf-8-sig") as f:  # -sig: a spreadsheet's BOM is not part of the header
    reader = csv.reader(f, delimiter="\t")
    header = [h.strip() for h in next(reader, [])]
    missing = [c for c in META_COLUMNS if c not in header]
    if missing:
      raise ValueError(f"{path}: missing column(s) {missing}; expected a tab-separated header with "
                       f"{list(META_COLUMNS)} (plus optional extra attribute columns)")
    keys = [META_COLUMNS.get(h, h) for h in header]
    extras = [k for k in keys if k not in META_COLUMNS.values()]
    rows = {}
    for line_no, values in enumerate(reader, start=2):
      if not any(v.strip() for v in values):
        continue
      if len(values) != len(keys):
        raise ValueError(f"{path}:{line_no}: {len(values)} tab-separated fields, expected {len(keys)}")
      row = {k: v.strip() for k, v in zip(keys, values)}
      rows[row["identity"]] = row
  return rows, extras


def read_split(path) -> list[tuple[str, str]]:
  """iden_split.txt -> [(split, 'id/ytid/utt.wav')] with split in train|validation|test."""
  path = pathlib.Path(path)
  out, lines_of = [], {}
  for line_no, line in enumerate(path.read_text(encoding="utf-8-sig").splitlines(), start=1):
    if not line.strip():
      continue
    parts = line.split()
    if len(parts) != 2 or parts[0] not in SPLIT_CODES or parts[1].count("/") != 2:
      raise ValueError(f"{path}:{line_no}: expected '1|2|3 <id>/<youtube id>/<utterance>.wav', got {line!r}")
    out.append((SPLIT_CODES[parts[0]], parts[1]))
    lines_of.setdefault(parts[1], []).append((line_no, SPLIT_CODES[parts[0]]))
  # A repeated utterance is a duplicate training example, or one example in two splits (a train/test leak).
  repeated = [(rel, seen) for rel, seen in lines_of.items() if len(seen) > 1]
  if repeated:
    def where(rel, seen):
      splits = list(dict.fromkeys(s for _, s in seen))
      what = f"in {' and '.join(splits)}" if len(splits) > 1 else f"{len(seen)} times in {splits[0]}"
      return f"{rel} on lines {', '.join(str(n) for n, _ in seen)} ({what})"
    more = f"; and {len(repeated) - 3} more" if len(repeated) > 3 else ""
    raise ValueError(f"{path}: {len(repeated)} utterance(s) listed more than once: "
                     f"{'; '.join(where(*r) for r in repeated[:3])}{more}. List each utterance once")
  return out


def _clip_folders(root: pathlib.Path, name: str, video: str, utterance: str) -> list[pathlib.Path]:
  stem = pathlib.Path(utterance).stem
  per_utt = root / "unzippedIntervalFaces" / "data" / name / "1.6" / video
  return [per_utt / n for n in ([str(int(stem)), stem] if stem.isdigit() else [stem])]


def utterance_clip(root, name: str, video: str, utterance: str) -> str | None:
  """The utterance's own frame folder (official per-utterance layout) when it holds frames, else None."""
  for folder in _clip_folders(pathlib.Path(root), name, video, utterance):
    if corpus_lib.frames(folder):
      return str(folder)
  return None


def utterance_faces(root, name: str, video: str, utterance: str, face_source: str = "utterance") -> list[str]:
  """Frames of one utterance (official per-utterance layout), else of its video, else []; face_source='video':
  its video's frames first."""
  if face_source not in FACE_SOURCES:
    raise ValueError(f"face_source must be one of {FACE_SOURCES}, got {face_source!r}")
  root = pathlib.Path(root)
  per_video = root / "faces" / name / video
  if face_source == "video" and corpus_lib.frames(per_video):
    return corpus_lib.frames(per_video)
  for folder in _clip_folders(root, name, video, utterance):
    frames = corpus_lib.frames(folder)
    if frames:
      return frames
  return corpus_lib.frames(per_video)


def check_root(root) -> pathlib.Path:
  """Raises FileNotFoundError listing the expected layout when `root` is not a VoxCeleb1 root."""
  root = pathlib.Path(root)
  expected = {"wav/": root / "wav", "iden_split.txt": root / "iden_split.txt", "vox1_meta.csv": root / "vox1_meta.csv"}
  missing = [k for k, p in expected.items() if not p.exists()]
  if missing:
    raise FileNotFoundError(
        f"{root} is not a VoxCeleb1 root: missing {', '.join(missing)}. Expected wav/<id>/<youtube id>/<utt>.wav, "
        "iden_split.txt ('1|2|3 <id>/<ytid>/<utt>.wav' lines), vox1_meta.csv (tab-separated) and face frames in "
        "faces/<VGGFace1 ID>/<ytid>/*.jpg or unzippedIntervalFaces/data/<VGGFace1 ID>/1.6/<ytid>/<n>/*.jpg")
  if not (root / "faces").is_dir() and not (root / "unzippedIntervalFaces").is_dir():
    raise FileNotFoundError(f"{root}: no face folder; expected faces/<VGGFace1 ID>/<ytid>/*.jpg "
                            "or unzippedIntervalFaces/data/<VGGFace1 ID>/1.6/<ytid>/<n>/*.jpg")
  return root


def open_split(split: str, row: dict) -> str:
  """An utterance's open-set split: test for a Set=test identity, else its iden_split one with test -> validation."""
  if row["set"].strip().lower() == "test":
    return "test"
  return "validation" if split == "test" else split


def split_warnings(examples: list[dict]) -> list[str]:
  """Problems of a split assignment that do not stop preparation (a test split too small for retrieval)."""
  held = sorted({e["identity"] for e in examples if e["split"] == "test"})
  if 0 < len(held) < MIN_RETRIEVAL_IDENTITIES:
    return [f"the test split holds {len(held)} identity ({', '.join(held)}): retrieval and clusters on the test "
            f"split need >= {MIN_RETRIEVAL_IDENTITIES} identities"]
  return []


def _check_open(kept: list[tuple], meta_path: pathlib.Path) -> None:
  for split, what in (("test", f"no usable utterance of an identity with Set=test in {meta_path}"),
                      ("train", "no usable train utterance of an identity that is not held out")):
    if not any(k[0] == split for k in kept):
      raise ValueError(f"the open split leaves {split} empty: {what}; use --split closed")


def list_examples(root, strict: bool = False, split_policy: str = "closed", face_source: str = "utterance") -> Corpus:
  """Parses a VoxCeleb1 root into example specs; bad entries are skipped (or raise when strict).

  face_source: where an utterance's `face` frames come from first, its per-utterance folder ('utterance', the
  official convention) or its video's faces/ folder ('video': the synthetic corpus, whose per-utterance clips
  feed only the frame sequences).
  """
  if split_policy not in SPLIT_POLICIES:
    raise ValueError(f"split_policy must be one of {SPLIT_POLICIES}, got {split_policy!r}")
  if face_source not in FACE_SOURCES:
    raise ValueError(f"face_source must be one of {FACE_SOURCES}, got {face_source!r}")
  root = check_root(root)
  meta, extras = read_meta(root / "vox1_meta.csv")
  listed = read_split(root / "iden_split.txt")
  skipped: list[dict] = []

  def skip(path, reason, error=FileNotFoundError):
    if strict:
      raise error(f"{path}: {reason} (strict mode; drop --strict to skip and record it instead)")
    skipped.append({"path": str(path), "reason": reason})

  unknown: dict[str, int] = {}
  faceless: dict[tuple[str, str], int] = {}
  kept = []
  for split, rel in listed:
    identity, video, utt = rel.split("/")
    wav = root / "wav" / rel
    if identity not in meta:
      if strict:
        skip(root / "wav" / identity, f"identity {identity} is not in {root / 'vox1_meta.csv'}", ValueError)
      unknown[identity] = unknown.get(identity, 0) + 1
      continue
    if not wav.is_file():
      skip(wav, "missing: listed in iden_split.txt but not on disk")
      continue
    faces = utterance_faces(root, meta[identity]["name"], video, utt, face_source)
    if not faces:
      if strict:
        skip(root / "wav" / identity / video, f"no face frames for this video (looked in "
             f"{root / 'faces' / meta[identity]['name'] / video} and unzippedIntervalFaces/data/...)")
      faceless[(identity, video)] = faceless.get((identity, video), 0) + 1
      continue
    kept.append((split, rel, identity, video, wav, faces, utterance_clip(root, meta[identity]["name"], video, utt)))
  # One skip record per identity or video rather than per utterance keeps the manifest readable.
  for identity, n in sorted(unknown.items()):
    skip(root / "wav" / identity, f"identity {identity} is not in {root / 'vox1_meta.csv'} ({n} utterances skipped)",
         ValueError)
  for (identity, video), n in sorted(faceless.items()):
    name = meta[identity]["name"]
    skip(root / "wav" / identity / video, f"no face frames for this video: looked in {root / 'faces' / name / video} "
         f"and {root / 'unzippedIntervalFaces/data' / name / '1.6' / video} ({n} utterances skipped)")

  if split_policy == "open":
    kept = [(open_split(k[0], meta[k[2]]), *k[1:]) for k in kept]
    _check_open(kept, root / "vox1_meta.csv")

  ids = sorted({k[2] for k in kept})
  label_of = {identity: i for i, identity in enumerate(ids)}
  identities = []
  for identity in ids:
    row = meta[identity]
    entry = {"identity": identity, "name": row["name"], "gender": row["gender"], "nationality": row["nationality"]}
    entry.update({k: row[k] for k in extras})
    identities.append(entry)
  examples = []
  # Utterances that share one folder of frames (per-video faces) each take a different offset into it.
  sharing: dict[tuple, list[str]] = {}
  for k in kept:
    sharing.setdefault(tuple(k[5]), []).append(k[1])
  for split, rel, identity, video, wav, faces, clip in sorted(kept, key=lambda k: k[1]):
    row = meta[identity]
    group = sorted(sharing[tuple(faces)])
    examples.append({"id": rel, "wav": str(wav), "faces": faces, "split": split, "identity": identity,
                     "name": row["name"], "gender": row["gender"], "nationality": row["nationality"],
                     "video": video, "label": label_of[identity],
                     "frame_shift": (group.index(rel) + 0.5) / len(group), "clip": clip})
  clips = sum(e["clip"] is not None for e in examples)
  notes = ()
  if 0 < clips < len(examples):
    notes = (f"per-utterance frame folders (unzippedIntervalFaces) for {clips} of {len(examples)} utterances: no "
             "frame sequences (audio_frames, face_frames), which need one for every utterance",)
  return Corpus(examples=examples, identities=identities, attributes=extras, skipped=skipped,
                split_policy=split_policy, notes=notes, frame_sequences=bool(examples) and clips == len(examples))


def _add_arguments(parser, add_config) -> None:
  parser.add_argument("--root", required=True, help="corpus root holding wav/, a face folder and the split/meta files")
  parser.add_argument("--out", required=True, help=corpora.OUT_HELP)
  add_config(parser)
  parser.add_argument("--strict", action="store_true", help="fail on the first bad file instead of skipping it")
  parser.add_argument("--workers", type=int, default=0, help=corpora.WORKERS_HELP)
  corpora.add_beam(parser)
  parser.add_argument("--split", choices=SPLIT_POLICIES, default="closed",
                      help="closed: iden_split.txt as given (test: new utterances of seen identities); open: the "
                           "identities with Set=test in vox1_meta.csv (id10270-id10309) are held out, all their "
                           "utterances in test; the others keep iden_split train/validation and their iden_split test "
                           "utterances go to validation (nothing dropped)")


def prepare_voxceleb1(root, out, config="voxceleb1", strict: bool = False, workers: int = 0,
                      corpus: str = "voxceleb1", split_policy: str = "closed", beam_options: str | None = None) -> dict:
  """Prepares a VoxCeleb1-layout root (wav/, faces/, vox1_meta.csv, iden_split.txt) into OUT (on Beam with
  beam_options: see pipeline.run)."""
  config = example.checked_config(config)[0]
  with storage.Build(out, inputs={"--root": root}) as build:
    layout, notes = layout_and_notes(root, strict, corpus, split_policy)
    return pipeline.run(layout, corpus, build, config, strict, workers, notes, beam_options=beam_options)


def layout_and_notes(root, strict: bool, corpus: str, split_policy: str,
                     face_source: str = "utterance") -> tuple[corpus_lib.Corpus, list[str]]:
  """The corpus's example specs and the manifest notes: conventions, split policy, split warnings."""
  layout = list_examples(root, strict=strict, split_policy=split_policy, face_source=face_source)
  faces_from = "faces per utterance (unzippedIntervalFaces) when present, else per video (faces/)"
  if face_source == "video":
    faces_from = "faces per video (faces/)" + ("; the per-utterance clips (unzippedIntervalFaces) feed only the "
                                               "frame sequences" if layout.frame_sequences else "")
  notes = [f"{corpus}: label = index of the identity in the sorted list of identities present; {faces_from}",
           SPLIT_NOTES[split_policy]]
  if layout.frame_sequences:
    notes.append("frame sequences: per utterance, step t of audio_frames (the log-mel of [t, t + 1) / data.video_fps "
                 "s of the WAV, each band standardised over the utterance) and of face_frames (its per-utterance "
                 "frame t, frame k taken at k / data.video_fps s, values in [0, 1]) cover the same time; at most "
                 "data.sequence_steps steps: train a seeded random window, validation and test the centred one; "
                 "frame counts that differ from the audio's are cut to the shorter (manifest warnings)")
  for warning in split_warnings(layout.examples):
    print(f"mmvae prep: warning: {warning}", file=sys.stderr)
    notes.append(f"warning: {warning}")
  return layout, notes


def _run(args, config) -> None:
  prepare_voxceleb1(args.root, args.out, config=config, strict=args.strict, workers=args.workers,
                    split_policy=args.split, beam_options=corpora.beam_options(args))


corpora.register(corpora.Kind("voxceleb1", help="VoxCeleb1 layout: wav/, faces/, vox1_meta.csv, iden_split.txt",
                              add_arguments=_add_arguments, run=_run, prepare=prepare_voxceleb1, config="voxceleb1"))
