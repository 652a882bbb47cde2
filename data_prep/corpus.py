"""The generic corpus a preparer lists for the shared pipeline (pipeline.run): example specs and identities, and the
frame files of a folder (face stills, per-utterance frame folders), which every face-reading corpus lists alike."""

import dataclasses
import pathlib

FACE_SUFFIXES = (".jpg", ".jpeg", ".png")


def frames(folder) -> list[str]:
  """The image files of a folder, sorted by path ([] when it is not a folder)."""
  folder = pathlib.Path(folder)
  if not folder.is_dir():
    return []
  return sorted(str(p) for p in folder.iterdir() if p.suffix.lower() in FACE_SUFFIXES)


def clip_frames(folder) -> list[str]:
  """The frames of a per-utterance folder in time order: numeric names by their number (1.jpg before 10.jpg)."""
  def order(path: str):
    stem = pathlib.Path(path).stem
    return (0, int(stem), path) if stem.isdigit() else (1, 0, path)
  return sorted(frames(folder), key=order)


@dataclasses.dataclass
class Corpus:
  """Example specs plus the per-identity table (list index == label) and what was skipped."""
  examples: list[dict]
  identities: list[dict]
  attributes: list[str]
  skipped: list[dict]
  split_policy: str | None = None  # closed|open for VoxCeleb1-layout corpora; None for other corpora
  image_name: str = "face"  # the name of the image modality (AV-digits: 'image')
  text_vocab: tuple | None = None  # a `text` token modality over this vocabulary (specs carry 'text')
  relevance: str = "same identity"  # what makes a retrieved item relevant (same label), in words
  # Further modalities stored as given: manifest entries {name, kind, shape, dtype}, in order, whose
  # arrays every spec carries in spec['extra'][name] (multi-modal digits: video, pointcloud).
  extra_modalities: tuple = ()
  notes: tuple = ()  # corpus-specific lines for the manifest's notes (e.g. what was subsampled)
  # Every example has a per-utterance frame folder (spec['clip']): prep adds audio_frames and face_frames.
  frame_sequences: bool = False
