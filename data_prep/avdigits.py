"""AV-digits layout -> example specs: FSDD recordings paired with MNIST t10k images and text of the same digit.

Three modalities: `audio` (the recording), `image` (an MNIST digit) and `text` (a short description of
the digit from data_prep/digit_text.py's grammar, e.g. "7", "seven", "the digit seven").

Splits follow FSDD's own convention (takes 0-4 of every speaker and digit are the test set),
and carve a validation set out of the rest: takes 5-9 -> validation, takes 10+ -> train.
The identity of an example is its digit, so retrieval relevance means 'same digit'; the FSDD
speaker goes into the `video` field. Each recording gets its own MNIST image of its digit,
drawn without replacement by a seeded generator, so no image is shared between splits; with
data.frames_per_utterance = K > 1, each training recording also gets up to K - 1 further images of its digit
that no other example holds (stored as its K frames; training draws one per step), so training sees more of
MNIST while validation and test keep their one image.
"""

import gzip
import pathlib
import re

import numpy as np

from data_prep import corpora, digit_text, example, pipeline, storage
from data_prep.corpus import Corpus

DIGIT_NAMES = ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine")
RECORDING = re.compile(r"^(\d)_([A-Za-z0-9-]+)_(\d+)\.wav$")
MNIST_IMAGES = "t10k-images-idx3-ubyte.gz"
MNIST_LABELS = "t10k-labels-idx1-ubyte.gz"
NOTES = ("avdigits: label = identity = spoken digit; video = FSDD speaker; splits by take: 0-4 test "
         "(FSDD convention), 5-9 validation, 10+ train; each recording is paired with a distinct MNIST t10k "
         "image of its digit drawn by np.random.default_rng(seed) and a text description of the digit drawn by "
         "np.random.default_rng((seed, 1)) from data_prep/digit_text.py's grammar")


def split_of_take(take: int) -> str:
  """FSDD take number -> split (0-4 test as FSDD defines it, 5-9 validation, the rest train)."""
  return "test" if take < 5 else "validation" if take < 10 else "train"


def _read_idx(path: pathlib.Path, magic: int, ndim: int) -> np.ndarray:
  """One gzipped IDX file (big-endian header: magic, dims) -> uint8 array."""
  if not path.is_file():
    raise FileNotFoundError(f"MNIST file not found: {path}; expected {MNIST_IMAGES} and {MNIST_LABELS} there")
  try:
    data = gzip.open(path, "rb").read()
  except (OSError, EOFError) as e:
    raise ValueError(f"{path}: not a readable gzip file ({e})") from None
  header = np.frombuffer(data[:4 * (1 + ndim)], dtype=">u4") if len(data) >= 4 * (1 + ndim) else None
  if header is None or header[0] != magic:
    raise ValueError(f"{path}: not an IDX file with magic {magic}")
  dims = tuple(int(d) for d in header[1:])
  body = np.frombuffer(data, dtype=np.uint8, offset=4 * (1 + ndim))
  if body.size != int(np.prod(dims)):
    raise ValueError(f"{path}: header says {dims} but holds {body.size} bytes")
  return body.reshape(dims)


def read_mnist(mnist_dir) -> tuple[np.ndarray, np.ndarray]:
  """MNIST t10k IDX files -> (images uint8 [N, 28, 28], labels uint8 [N])."""
  mnist_dir = pathlib.Path(mnist_dir)
  images = _read_idx(mnist_dir / MNIST_IMAGES, 2051, 3)
  labels = _read_idx(mnist_dir / MNIST_LABELS, 2049, 1)
  if len(images) != len(labels):
    raise ValueError(f"{mnist_dir}: {len(images)} images but {len(labels)} labels")
  return images, labels


def _deal_more_images(examples: list[dict], pools: dict, used: dict, labels: np.ndarray, images: np.ndarray,
                      more: int) -> None:
  """Gives each training example up to `more` further images of its digit that no example drew yet, round by
  round (every training example gets its second image before any gets a third); never an image twice."""
  distinct = {d: int(np.sum(labels == d)) for d in pools}
  for e in examples:
    e["more_mnist_indices"] = []
  for _ in range(more):
    for e in (e for e in examples if e["split"] == "train"):
      digit = e["label"]
      if used[digit] < distinct[digit]:  # pools[d][:distinct] are the digit's images, each once
        e["more_mnist_indices"].append(int(pools[digit][used[digit]]))
        used[digit] += 1
  for e in examples:
    e["more_images"] = images[np.asarray(e["more_mnist_indices"], np.int64)].reshape(-1, *images.shape[1:])


def list_examples(fsdd_root, mnist_dir, seed: int = 0, strict: bool = False, train_images: int = 1) -> Corpus:
  """FSDD recordings + MNIST -> example specs carrying the paired image (`face_image`, `mnist_index`).

  With `train_images` > 1, each training example also carries up to train_images - 1 further images of its
  digit (`more_images`, `more_mnist_indices`), dealt from the images no example drew, so training sees more
  of MNIST; the first images (and with them validation and test) are the same for every train_images.
  """
  if train_images < 1:
    raise ValueError(f"train_images={train_images} must be >= 1")
  fsdd_root = pathlib.Path(fsdd_root)
  recordings = fsdd_root / "recordings"
  if not recordings.is_dir():
    raise FileNotFoundError(f"{fsdd_root} is not an FSDD root: expected recordings/<digit>_<speaker>_<take>.wav")
  images, labels = read_mnist(mnist_dir)
  skipped = []
  parsed = []
  for path in sorted(recordings.iterdir()):
    m = RECORDING.match(path.name)
    if not m:
      if path.suffix.lower() == ".wav":
        if strict:
          raise ValueError(f"{path}: name does not match <digit>_<speaker>_<take>.wav")
        skipped.append({"path": str(path), "reason": "name does not match <digit>_<speaker>_<take>.wav"})
      continue
    parsed.append((int(m[1]), m[2], int(m[3]), path))
  if not parsed:
    raise FileNotFoundError(f"no <digit>_<speaker>_<take>.wav recordings in {recordings}")
  parsed.sort(key=lambda r: r[:3])

  rng = np.random.default_rng(seed)
  text_rng = np.random.default_rng((seed, 1))  # its own stream: the image draws stay as they were
  pools = {d: rng.permutation(np.flatnonzero(labels == d)) for d in range(10)}
  used = {d: 0 for d in range(10)}
  examples = []
  for digit, speaker, take, path in parsed:
    pool = pools[digit]
    if used[digit] >= len(pool):  # more recordings than images of a digit: reuse, reshuffled
      pools[digit] = pool = np.concatenate([pool, rng.permutation(pool)])
    index = int(pool[used[digit]])
    used[digit] += 1
    examples.append({"id": path.name, "wav": str(path), "face_image": images[index], "mnist_index": index,
                     "text": digit_text.describe(digit, text_rng),
                     "split": split_of_take(take), "identity": str(digit), "name": DIGIT_NAMES[digit],
                     "gender": "", "nationality": "", "video": speaker, "label": digit})
  _deal_more_images(examples, pools, used, labels, images, train_images - 1)
  examples.sort(key=lambda e: e["id"])
  identities = [{"identity": str(d), "name": DIGIT_NAMES[d], "gender": "", "nationality": ""} for d in range(10)]
  return Corpus(examples=examples, identities=identities, attributes=[], skipped=skipped, image_name="image",
                text_vocab=digit_text.VOCAB, relevance="same digit")


def _add_arguments(parser, add_config) -> None:
  parser.add_argument("--fsdd", required=True, help="FSDD root (holding recordings/)")
  parser.add_argument("--mnist", required=True,
                      help="folder with t10k-images-idx3-ubyte.gz and t10k-labels-idx1-ubyte.gz")
  parser.add_argument("--out", required=True, help=corpora.OUT_HELP)
  add_config(parser)
  parser.add_argument("--seed", type=int, default=0, help="seed of the audio-image pairing")
  parser.add_argument("--strict", action="store_true", help="fail on the first bad file instead of skipping it")
  parser.add_argument("--workers", type=int, default=0, help=corpora.WORKERS_HELP)
  corpora.add_beam(parser)


def prepare_avdigits(fsdd, mnist, out, config="avdigits", seed: int = 0, strict: bool = False,
                     workers: int = 0, beam_options: str | None = None) -> dict:
  """Prepares FSDD recordings paired with MNIST t10k digits of the same class into OUT."""
  config = example.checked_config(config)[0]
  with storage.Build(out, inputs={"--fsdd": fsdd, "--mnist": mnist}) as build:
    k = int(config.data.frames_per_utterance)
    layout = list_examples(fsdd, mnist, seed=seed, strict=strict, train_images=k)
    more = (f"; each training recording also holds up to {k - 1} further distinct images of its digit "
            "(its stored frames)") if k > 1 else ""
    return pipeline.run(layout, "avdigits", build, config, strict, workers, [NOTES + f" (seed {seed}){more}"],
                        beam_options=beam_options)


def _run(args, config) -> None:
  prepare_avdigits(args.fsdd, args.mnist, args.out, config=config, seed=args.seed, strict=args.strict,
                   workers=args.workers, beam_options=corpora.beam_options(args))


corpora.register(corpora.Kind("avdigits", help="FSDD recordings paired with MNIST digits of the same class",
                              add_arguments=_add_arguments, run=_run, prepare=prepare_avdigits, config="avdigits"))
