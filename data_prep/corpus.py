"""The generic corpus a preparer lists for the shared pipeline (prepare._prepare): example specs and identities."""

import dataclasses


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
