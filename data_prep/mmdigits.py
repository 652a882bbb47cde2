"""Multi-modal digits (XMedia-like): five modalities of a digit, paired by class, with imbalanced training classes.

Built on AV-digits (data_prep/avdigits.py: each FSDD recording with its own MNIST t10k image and a text
description of its digit, split by take), every recording also gets
  video       [T, S, S, 1] uint8: another MNIST image of the digit moving along a straight path of a few
              pixels and turning at a constant rate (at most MAX_SPIN degrees over the clip);
  pointcloud  [P, 3] float32: yet another MNIST image of the digit, extruded into 3D: P ink pixels drawn with
              probability proportional to intensity, x and y in about [-1, 1] (y up), z uniform in
              [-DEPTH, DEPTH], each point jittered within its pixel, then turned by any yaw about the
              vertical (y) axis and tilted at most MAX_TILT degrees about x and z (a 6 never becomes a 9).
              Points are stored in the raster order of their source pixels, a canonical order a decoder
              can follow.
The video and point-cloud images are drawn without replacement from the digit's images that no stored
`image` uses, by their own seeded stream; test and validation draw first, so when a digit runs out only
training examples reuse images (of other training examples), and no image is shared between splits.

Imbalance: each digit keeps a fraction of its training examples, KEEP_FRACTIONS (1.0 down to 0.4,
evenly spaced) assigned to the digits by a seeded permutation; validation and test stay as FSDD gives
them. Relevance is the digit. The modality `video` takes the place of the per-example `video` text field
(the FSDD speaker stays in the id, <digit>_<speaker>_<take>.wav), so data.pairing='video' does not apply.
Every draw is a function of the seed (and an example's id), not of the worker count.

Text (--text): 'closed' (the default) is AV-digits' description from the closed grammar of data_prep/digit_text.py
over its fixed word vocabulary; 'free' is a sentence from the larger grammar of data_prep/free_text.py (synonyms,
word orders, fillers, motion phrases), drawn by its own seeded stream per example, as ids of a BPE tokenizer
(data_prep/subword.py) trained on the training split's sentences and saved as OUT/tokenizer.json.
"""

import dataclasses
import zlib

import numpy as np
from PIL import Image

from data_prep import avdigits, corpora, example, free_text, pipeline, storage, subword
from data_prep.corpus import Corpus

VIDEO, POINTCLOUD = "video", "pointcloud"  # modality names
KEEP_FRACTIONS = tuple(float(f) for f in np.linspace(1.0, 0.4, 10))
MAX_START = 1.0  # pixels: the path's midpoint is at most this far from the centre, per axis
PATH_PIXELS = (2.0, 5.0)  # length of the straight path over the clip
MAX_SPIN = 30.0  # degrees turned over the clip (either way)
DEPTH = 0.25  # half the thickness of the extruded digit
MAX_TILT = 15.0  # degrees about x and about z
# Independent streams of np.random.default_rng((seed, stream, ...)); avdigits uses seed and (seed, 1).
_SOURCES, _FRACTIONS, _KEPT, _RENDER, _TEXT = 2, 3, 4, 5, 6
TEXTS = ("closed", "free")  # --text
NOTES = ("mmdigits: avdigits (label = identity = spoken digit; splits by take: 0-4 test, 5-9 validation, 10+ train; "
         "image and text as avdigits; the FSDD speaker only in the id <digit>_<speaker>_<take>.wav, since the "
         "`video` field of other corpora is a modality here) plus modality `video` (another MNIST t10k image "
         "of the digit moving along a straight path and turning up to 30 degrees over the clip) and `pointcloud` "
         "(a third MNIST image extruded into 3D, points drawn by ink intensity, any yaw about y and at most 15 "
         "degrees of tilt); video and point-cloud images drawn without replacement from the images no `image` "
         "uses, by np.random.default_rng((seed, 2)); training examples per digit subsampled by a keep fraction "
         "from 1.0 to 0.4 (data_prep/mmdigits.py)")


def keep_fractions(seed: int) -> np.ndarray:
  """[10] the fraction of its training examples each digit keeps: KEEP_FRACTIONS in a seeded order."""
  order = np.random.default_rng((seed, _FRACTIONS)).permutation(len(KEEP_FRACTIONS))
  return np.asarray(KEEP_FRACTIONS)[order]


def _subsample(examples: list[dict], seed: int) -> tuple[list[dict], dict[int, tuple[int, int]]]:
  """(examples with each digit's training examples subsampled, {digit: (kept, available)} of the training split)."""
  fractions = keep_fractions(seed)
  rng = np.random.default_rng((seed, _KEPT))
  dropped, counts = set(), {}
  for digit in range(10):
    train = [e["id"] for e in examples if e["split"] == "train" and e["label"] == digit]
    keep = int(round(fractions[digit] * len(train)))
    kept = set(rng.choice(len(train), size=keep, replace=False).tolist())
    dropped.update(i for n, i in enumerate(train) if n not in kept)
    counts[digit] = (keep, len(train))
  return [e for e in examples if e["id"] not in dropped], counts


class _SourceImages:
  """MNIST indices of a digit for the video and point-cloud modalities, drawn without replacement."""

  def __init__(self, labels: np.ndarray, used: set, rng: np.random.Generator):
    self.rng = rng
    free = np.setdiff1d(np.arange(len(labels)), np.fromiter(used, np.int64, len(used)))
    # Reversed so that pop() takes the permutation's first element first.
    self.fresh = {d: rng.permutation(free[labels[free] == d]).tolist()[::-1] for d in range(10)}
    self.train_drawn = {d: [] for d in range(10)}
    self.reused = 0

  def take(self, digit: int, split: str, avoid=()) -> int:
    """A fresh image of `digit`; once they run out, a training example may reuse another training example's."""
    if self.fresh[digit]:
      index = int(self.fresh[digit].pop())
    else:
      pool = [i for i in self.train_drawn[digit] if i not in avoid]
      if split != "train" or not pool:
        raise ValueError(f"MNIST has too few images of digit {digit} for the {split} split's videos and point clouds")
      index = int(pool[self.rng.integers(len(pool))])
      self.reused += 1
    if split == "train":
      self.train_drawn[digit].append(index)
    return index


def render_video(image: np.ndarray, frames: int, size: int, rng: np.random.Generator) -> np.ndarray:
  """uint8 [frames, size, size, 1]: the image moving along a seeded straight path and turning at a seeded rate."""
  midpoint = rng.uniform(-MAX_START, MAX_START, 2)
  heading = rng.uniform(0.0, 2 * np.pi)
  path = rng.uniform(*PATH_PIXELS) * np.array([np.cos(heading), np.sin(heading)])
  spin = rng.uniform(-MAX_SPIN, MAX_SPIN)
  phases = np.linspace(-0.5, 0.5, frames) if frames > 1 else np.zeros(1)
  source = Image.fromarray(np.asarray(image, np.uint8))
  out = []
  for phase in phases:
    dx, dy = midpoint + phase * path
    frame = source.rotate(float(phase * spin), resample=Image.Resampling.BILINEAR, translate=(float(dx), float(dy)))
    if frame.size != (size, size):
      frame = frame.resize((size, size), Image.Resampling.BILINEAR)
    out.append(np.asarray(frame, np.uint8))
  return np.stack(out)[..., None]


def _rotation(axis: int, angle: float) -> np.ndarray:
  """[3, 3] rotation by `angle` radians about coordinate axis 0 (x), 1 (y) or 2 (z)."""
  i, j = [a for a in range(3) if a != axis]
  r = np.eye(3)
  r[i, i] = r[j, j] = np.cos(angle)
  r[i, j], r[j, i] = -np.sin(angle), np.sin(angle)
  return r


def tilted_yaw(rng: np.random.Generator) -> np.ndarray:
  """[3, 3] a tilt of at most MAX_TILT degrees about z and about x, then any yaw about the vertical y axis."""
  tilt_x, tilt_z = np.radians(rng.uniform(-MAX_TILT, MAX_TILT, 2))
  return _rotation(1, rng.uniform(0.0, 2 * np.pi)) @ _rotation(0, tilt_x) @ _rotation(2, tilt_z)


def point_cloud(image: np.ndarray, points: int, rng: np.random.Generator) -> np.ndarray:
  """float32 [points, 3]: the image's ink extruded into a slab, sampled by intensity, jittered, turned (tilted_yaw)."""
  ink = np.asarray(image, np.float64)
  if ink.sum() <= 0:
    raise ValueError("a point cloud needs an image with some ink, got a blank one")
  height, width = ink.shape
  pixels = np.sort(rng.choice(ink.size, size=points, p=(ink / ink.sum()).ravel()))  # raster order
  row, col = np.divmod(pixels, width)
  within = rng.uniform(0.0, 1.0, (points, 2))  # where in its pixel each point lies
  x = (col + within[:, 1] - width / 2) / (width / 2)
  y = (height / 2 - row - within[:, 0]) / (height / 2)  # rows grow downwards, y up
  z = rng.uniform(-DEPTH, DEPTH, points)
  return (np.stack([x, y, z], axis=1) @ tilted_yaw(rng).T).astype(np.float32)


def free_text_modality(examples: list[dict], seed: int, vocab_size: int = subword.VOCAB_SIZE) -> tuple[dict, dict]:
  """(the `text` tokens manifest entry, {id: ids [L]}) of each example's free sentence (spec['text'] set to it).

  Sentences from np.random.default_rng((seed, _TEXT, crc32(id))); the tokenizer is trained on the training split's;
  L is the longest encoded sentence of any split, so none is cut."""
  for e in examples:
    e["text"] = free_text.describe(e["label"], np.random.default_rng((seed, _TEXT, zlib.crc32(e["id"].encode()))))
  train = [e["text"] for e in examples if e["split"] == "train"]
  if not train:
    raise ValueError("--text free needs training examples to learn its tokenizer from; there are none")
  tokenizer = subword.train(train, vocab_size)
  vocab, merges = subword.model_of(tokenizer)
  length = max(1, max(len(subword.ids(tokenizer, e["text"])) for e in examples))
  entry = {"name": "text", "kind": "tokens", "shape": [length], "dtype": "int32", "vocab": list(vocab),
           "merges": list(merges), "tokenizer": subword.FILE}
  return entry, {e["id"]: subword.encode(tokenizer, e["text"], length) for e in examples}


def check_settings(video_frames: int, points: int, face_size: int) -> None:
  """ValueError unless the clip length, the number of points and the frame size are all positive."""
  if min(video_frames, points, face_size) < 1:
    raise ValueError(f"data.video_frames={video_frames}, data.points={points} and data.face_size={face_size} "
                     "must all be >= 1")


def list_examples(fsdd_root, mnist_dir, seed: int = 0, strict: bool = False, video_frames: int = 8,
                  points: int = 256, face_size: int = 28, text: str = "closed") -> Corpus:
  """AV-digits' examples, training ones subsampled per digit, each with a video and a point cloud (spec['extra']);
  text 'free': free sentences as subword ids (spec['extra']['text']) instead of the closed descriptions."""
  check_settings(video_frames, points, face_size)
  if text not in TEXTS:
    raise ValueError(f"--text {text!r}: use one of {', '.join(TEXTS)}")
  base = avdigits.list_examples(fsdd_root, mnist_dir, seed=seed, strict=strict)
  images, labels = avdigits.read_mnist(mnist_dir)
  examples, counts = _subsample(base.examples, seed)
  text_entry, text_ids = free_text_modality(examples, seed) if text == "free" else (None, {})
  sources = _SourceImages(labels, {e["mnist_index"] for e in examples}, np.random.default_rng((seed, _SOURCES)))
  out = {}
  for split in ("test", "validation", "train"):  # held-out splits first: only training examples ever reuse images
    for e in (e for e in examples if e["split"] == split):
      video_index = sources.take(e["label"], split)
      cloud_index = sources.take(e["label"], split, avoid=(video_index,))
      rng = np.random.default_rng((seed, _RENDER, zlib.crc32(e["id"].encode())))
      out[e["id"]] = dict(e, video_mnist_index=video_index, pointcloud_mnist_index=cloud_index, extra={
          VIDEO: render_video(images[video_index], video_frames, face_size, rng),
          POINTCLOUD: point_cloud(images[cloud_index], points, rng), **(
              {"text": text_ids[e["id"]]} if text_entry else {})})
  extras = ({"name": VIDEO, "kind": "video", "shape": [video_frames, face_size, face_size, 1], "dtype": "uint8"},
            {"name": POINTCLOUD, "kind": "points", "shape": [points, 3], "dtype": "float32"})
  kept = ", ".join(f"{d}: {k}/{n}" for d, (k, n) in counts.items())
  notes = [f"mmdigits: training examples kept per digit (kept/available; keep fractions "
           f"{', '.join(f'{d}: {f:.3f}' for d, f in enumerate(keep_fractions(seed)))}): {kept}"]
  if sources.reused:
    notes.append(f"mmdigits: {sources.reused} video/point-cloud images reused by training examples (too few MNIST "
                 "images of a digit for all three image modalities)")
  if text_entry:
    extras = (text_entry,) + extras  # where the closed text stands: after image, before video
    notes.append(f"mmdigits: text from the free grammar (data_prep/free_text.py) drawn by np.random.default_rng((seed, "
                 f"{_TEXT}, crc32(id))), as ids of a BPE tokenizer ({subword.FILE}, {len(text_entry['vocab'])} pieces, "
                 f"0 = [PAD], 1 = [UNK]) trained on the training split's sentences, {text_entry['shape'][0]} pieces")
  return dataclasses.replace(base, examples=[out[e["id"]] for e in examples], extra_modalities=extras,
                             notes=tuple(notes), text_vocab=None if text_entry else base.text_vocab)


def _add_arguments(parser, add_config) -> None:
  parser.add_argument("--fsdd", required=True, help="FSDD root (holding recordings/)")
  parser.add_argument("--mnist", required=True,
                      help="folder with t10k-images-idx3-ubyte.gz and t10k-labels-idx1-ubyte.gz")
  parser.add_argument("--out", required=True, help=corpora.OUT_HELP)
  add_config(parser)
  parser.add_argument("--seed", type=int, default=0,
                      help="seed of the pairing, the rendered videos and point clouds, and the class imbalance")
  parser.add_argument("--strict", action="store_true", help="fail on the first bad file instead of skipping it")
  parser.add_argument("--workers", type=int, default=0, help=corpora.WORKERS_HELP)
  parser.add_argument("--text", choices=TEXTS, default="closed",
                      help="closed: short descriptions over a fixed word vocabulary (default); free: varied sentences "
                      "from a larger grammar, as ids of a subword tokenizer saved as OUT/tokenizer.json")
  corpora.add_beam(parser)


def prepare_mmdigits(fsdd, mnist, out, config="mcvs", seed: int = 0, strict: bool = False, workers: int = 0,
                     beam_options: str | None = None, text: str = "closed") -> dict:
  """Prepares the multi-modal digits corpus (audio, image, text, video, pointcloud of a digit) into OUT."""
  config = example.checked_config(config)[0]
  missing = [k for k in ("video_frames", "points") if k not in config.data]
  if missing:
    raise ValueError(f"config {config.name!r} has no data.{' or data.'.join(missing)}, which mmdigits needs; "
                     "use --config mcvs, or a config that sets them")
  shape = {"video_frames": int(config.data.video_frames), "points": int(config.data.points),
           "face_size": int(config.data.face_size)}
  check_settings(**shape)
  with storage.Build(out, inputs={"--fsdd": fsdd, "--mnist": mnist}) as build:
    layout = list_examples(fsdd, mnist, seed=seed, strict=strict, text=text, **shape)
    entry = next((m for m in layout.extra_modalities if m.get("tokenizer")), None)
    if entry is not None:
      subword.save(subword.from_model(tuple(entry["vocab"]), tuple(entry["merges"])), build.path / entry["tokenizer"])
    return pipeline.run(layout, "mmdigits", build, config, strict, workers, [NOTES + f" (seed {seed})"],
                        beam_options=beam_options)


def _run(args, config) -> None:
  prepare_mmdigits(args.fsdd, args.mnist, args.out, config=config, seed=args.seed, strict=args.strict,
                   workers=args.workers, beam_options=corpora.beam_options(args), text=args.text)


corpora.register(corpora.Kind("mmdigits", help="multi-modal digits: FSDD audio, MNIST image, text, video and point "
                              "cloud of the same class, imbalanced training classes",
                              add_arguments=_add_arguments, run=_run, prepare=prepare_mmdigits, config="mcvs"))
