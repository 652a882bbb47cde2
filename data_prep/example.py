"""One example of any corpus: its features (audio, faces, frame sequences, text, extras) and its stored record.

The per-example half of prep, shared by the local pipeline (data_prep/pipeline.py) and Apache Beam
(data_prep/beam_prep.py): pure functions of an example spec and the data config, seeded by the example.
"""

import io
import pathlib
import warnings

import ml_collections
import numpy as np
from PIL import Image

from data_prep import audio, digit_text, faces, spool, storage
from data_prep import corpus as corpus_lib
from mmvae import config as config_lib

SPLITS = ("train", "validation", "test")
STD_FLOOR = 1e-8  # a constant bin (e.g. all-zero) would otherwise divide by zero
SEQUENCES = ("audio_frames", "face_frames")  # a corpus with per-utterance frame folders (Corpus.frame_sequences)


def load_config(config) -> ml_collections.ConfigDict:
  return config_lib.load(config) if isinstance(config, str) else config


def _face_shape(data_cfg) -> tuple[int, int, int, int]:
  k, size = int(data_cfg.frames_per_utterance), int(data_cfg.face_size)
  if k < 1 or size < 1:
    raise ValueError(f"data.frames_per_utterance={k} and data.face_size={size} must both be >= 1")
  return (k, size, size, 1 if data_cfg.grayscale else 3)


def _face(spec: dict, data_cfg) -> np.ndarray:
  """uint8 [K, S, S, C]: K frames of the utterance's video, or its paired images (AV-digits: the first, then
  `more_images`, cycled to K)."""
  k, size = int(data_cfg.frames_per_utterance), int(data_cfg.face_size)
  if "face_image" in spec:  # AV-digits: MNIST arrays, PNG-encoded so they take the same path as a face file
    arrays = [spec["face_image"], *spec.get("more_images", ())]
    loaded = []
    for array in arrays[:k]:
      buf = io.BytesIO()
      Image.fromarray(np.asarray(array, np.uint8)).save(buf, format="PNG")
      loaded.append(faces.load_face(buf.getvalue(), size, bool(data_cfg.grayscale)))
    return np.stack([loaded[i % len(loaded)] for i in range(k)])
  return faces.face_stack(spec["faces"], k, size, bool(data_cfg.grayscale), spec.get("frame_shift", 0.5))


def sequence_settings(data_cfg) -> tuple[int, float]:
  """(data.sequence_steps, data.video_fps), checked."""
  steps, fps = int(audio._cfg(data_cfg, "sequence_steps")), float(audio._cfg(data_cfg, "video_fps"))
  if steps < 1 or fps <= 0:
    raise ValueError(f"data.sequence_steps={steps} must be >= 1 and data.video_fps={fps} positive")
  return steps, fps


def _sequence_modalities(data_cfg, face_shape) -> list[dict]:
  """Manifest entries of audio_frames and face_frames (kind `sequence`: [T, D + 1] with the mask column)."""
  steps, fps = sequence_settings(data_cfg)
  n_mels = int(audio._cfg(data_cfg, "n_mels"))
  _, size, _, channels = face_shape
  return [{"name": "audio_frames", "kind": "sequence", "shape": [steps, n_mels + 1], "dtype": "float32",
           "step_shape": [n_mels], "step_seconds": 1.0 / fps},
          {"name": "face_frames", "kind": "sequence", "shape": [steps, size * size * channels + 1], "dtype": "float32",
           "step_shape": [size, size, channels], "step_seconds": 1.0 / fps}]


def _sequences(spec: dict, wave: np.ndarray, data_cfg, train: bool, rng: np.random.Generator) -> dict:
  """{audio_frames: float32 [L, n_mels], face_frames: uint8 [L, S, S, C]}: step t of both is [t/fps, (t+1)/fps) s.

  The utterance's audio steps (audio.frame_features) and its frames (frame k at k/fps s) are aligned by time
  and cut to the shorter (a ClipWarning when their counts differ); of more than data.sequence_steps steps a
  window is kept, seeded random for train and centred otherwise, the same for both.
  """
  steps, fps = sequence_settings(data_cfg)
  try:
    sound = audio.frame_features(wave, data_cfg, fps)
  except audio.AudioError as e:
    raise audio.AudioError(f"{spec['wav']}: {e}") from None
  frames = corpus_lib.clip_frames(spec["clip"])
  n = min(len(sound), len(frames))
  if len(frames) != len(sound):
    warnings.warn(f"{len(frames)} frames at {fps:g} fps for {len(sound)} audio steps of {1000 / fps:g} ms: aligned "
                  f"from the start, the first {n} kept", faces.ClipWarning, stacklevel=2)
  if n < 1:
    raise faces.FaceError(f"{spec['clip']}: no frames")
  start = 0
  if n > steps:
    start = int(rng.integers(0, n - steps + 1)) if train else (n - steps) // 2
    n = steps
  face = faces.frame_sequence(frames[start:start + n], int(data_cfg.face_size), bool(data_cfg.grayscale))
  return {"audio_frames": sound[start:start + n], "face_frames": face}


def extract(task):
  """Worker: (index, spec, data_cfg, strict, sequences) -> (index, audio, {modality: array}, skip or None, warnings)."""
  index, spec, data_cfg, strict, sequences = task
  with warnings.catch_warnings(record=True) as caught:
    warnings.simplefilter("always")
    index, audio_features, parts, skip = _extract_one(index, spec, data_cfg, strict, sequences)
  notes = []
  for w in caught:
    if issubclass(w.category, (audio.AudioWarning, faces.FaceWarning)):
      # Inputs changed to fit (resampled up, clipped, padded, upscaled): recorded in manifest['warnings'].
      face_path = str(pathlib.Path(spec["faces"][0]).parent) if spec.get("faces") else spec["id"]
      if issubclass(w.category, faces.ClipWarning):
        face_path = spec["clip"]
      notes.append({"path": spec["wav"] if issubclass(w.category, audio.AudioWarning) else face_path,
                    "warning": str(w.message)})
    else:
      warnings.showwarning(w.message, w.category, w.filename, w.lineno)
  return index, audio_features, parts, skip, notes


def _extract_one(index, spec, data_cfg, strict, sequences=False):
  # Seeded by (data seed, example index): the result does not depend on the worker count.
  rng = np.random.default_rng((int(data_cfg.seed), index))
  train = spec["split"] == "train"  # random crops for training, centred crops elsewhere
  views = audio.views(data_cfg)
  try:
    # One read of the WAV serves the features below and, with sequences, the frame features (with views, the views).
    wave = (audio.load_wav(spec["wav"], int(data_cfg.sample_rate), audio.resampler(data_cfg))
            if sequences or views > 1 else spec["wav"])
    if views > 1:  # [V, D]: view 0 exactly the features below, the augmented views seeded by the id (audio.py)
      audio_features = audio.utterance_views(wave, data_cfg, train, rng, spec["id"], name=spec["wav"])
    else:
      audio_features = np.asarray(audio.utterance_features(wave, data_cfg, train, rng, name=spec["wav"]), np.float32)
  except (audio.AudioError, OSError) as e:
    if strict:
      raise
    return index, None, None, {"path": spec["wav"], "reason": f"{type(e).__name__}: {e}"}
  try:
    face = _face(spec, data_cfg)
  except (faces.FaceError, OSError) as e:
    if strict:
      raise
    path = str(pathlib.Path(spec["faces"][0]).parent) if spec.get("faces") else spec["id"]
    return index, None, None, {"path": path, "reason": f"{type(e).__name__}: {e} (utterance {spec['id']})"}
  parts = {"face": face}
  if sequences:
    try:
      # Its own generator: the audio and face above stay those of a prep without sequences.
      parts.update(_sequences(spec, wave, data_cfg, train, np.random.default_rng((int(data_cfg.seed), index, 1))))
    except (audio.AudioError, faces.FaceError, OSError) as e:
      if strict:
        raise
      return index, None, None, {"path": spec["clip"], "reason": f"{type(e).__name__}: {e} (utterance {spec['id']})"}
  return index, audio_features, parts, None


def modalities(corpus: corpus_lib.Corpus, audio_shape, face_shape, data_cfg=None) -> list[dict]:
  """The manifest entries of what the corpus stores: audio, its image modality, text when it has one, its extras,
  then audio_frames and face_frames when it has per-utterance frame folders."""
  entries = storage.audio_and_face(audio_shape, face_shape)
  entries[1]["name"] = corpus.image_name
  if data_cfg is not None and audio.views(data_cfg) > 1:  # [V, D] pooled features: the model sees one view [D]
    entries[0].update(kind="vector", views=True)
  if corpus.text_vocab:
    entries.append({"name": "text", "kind": "tokens", "shape": [digit_text.MAX_TOKENS], "dtype": "int32",
                    "vocab": list(corpus.text_vocab)})
  entries.extend(dict(m, shape=[int(d) for d in m["shape"]]) for m in corpus.extra_modalities)
  if corpus.frame_sequences:
    entries.extend(_sequence_modalities(data_cfg, face_shape))
  return entries


def _extra(spec: dict, entry: dict) -> np.ndarray:
  """The spec's array of an extra modality, in its declared dtype; ValueError when its shape is not the declared one."""
  value = np.asarray(spec["extra"][entry["name"]], entry["dtype"])
  if value.shape != tuple(entry["shape"]):
    raise ValueError(f"{spec['id']}: {entry['name']} has shape {list(value.shape)}, the corpus declares "
                     f"{list(entry['shape'])}")
  return value


def record(spec: dict, audio_features, parts: dict, corpus: corpus_lib.Corpus, steps: int = 0) -> dict:
  """One stored example; parts: the worker's arrays (face; audio_frames and face_frames as steps, packed here)."""
  record = {"label": int(spec["label"]), "id": spec["id"], "identity": spec["identity"], "video": spec["video"],
            "gender": spec["gender"]}
  # Modalities after the text fields: one named like a field (multi-modal digits' `video` clip) replaces it.
  record.update({"audio": audio_features, corpus.image_name: parts["face"]})
  if corpus.text_vocab:
    record["text"] = digit_text.encode(spec["text"])
  record.update({m["name"]: _extra(spec, m) for m in corpus.extra_modalities})
  if corpus.frame_sequences:
    from mmvae.modalities import sequence  # pylint: disable=g-import-not-at-top  (imports JAX: only when needed)
    record["audio_frames"] = sequence.pack(parts["audio_frames"], steps)
    record["face_frames"] = sequence.pack(parts["face_frames"].astype(np.float32) / np.float32(255.0), steps)
  return record


def checked_config(config):
  """(config, audio shape, face shape): a config that cannot give features fails before any work.

  With data.audio_views V > 1 the audio shape is [V, D] (V views of the pooled features)."""
  config = load_config(config)
  shape = tuple(audio.feature_shape(config.data))
  views = audio.views(config.data)
  return config, ((views, *shape) if views > 1 else shape), _face_shape(config.data)


VIEW_KEYS = ("audio_views", "audio_noise_snr", "audio_telephone", "audio_reverb", "audio_speed")


def data_config(data_cfg) -> dict:
  """The manifest's data_config: without the view keys when data.audio_views is 1, as before they existed, so a
  dataset without views keeps its fingerprint."""
  out = data_cfg.to_dict()
  if audio.views(data_cfg) == 1:
    out = {k: v for k, v in out.items() if k not in VIEW_KEYS}
  return out


def audio_statistics(spool_dir, parts: list[dict]) -> dict:
  """The per-bin train statistics of the spooled audio: with views ([N, V, D]) those of view 0, the clean features,
  applied to every view (so view 0 is stored exactly as without views)."""
  stats = spool.mean_std(spool_dir, parts, "audio", STD_FLOOR)
  if np.ndim(stats["mean"]) == 2:
    stats = {k: v[0] for k, v in stats.items()}
  return stats
