"""dlib's ResNet face descriptor (128-d, 99.38% on LFW) per example: the mean over its face frames, L2-normalised.

Weights ship in the `face-recognition-models` package (CC0) and dlib comes as the `dlib-bin` wheel, so nothing is
downloaded at run time. Per frame: dlib's frontal face detector (upsampled once; the largest face), or the whole
image as the face box when it finds none (VoxCeleb1's face frames are already crops), the 5-point landmark model,
then `compute_face_descriptor` on the aligned 150x150 chip (dlib's get_face_chip, padding 0.25, no jitter).
At most MAX_FRAMES frames per example are used, evenly spaced over its list (the middle of equal bins).
About 0.2 s per frame on one CPU core. dlib's network was trained on faces that include VoxCeleb1's identities
(VGGFace): results on VoxCeleb1 are not open-set.
"""

import functools
import importlib.util
import pathlib
import sys

import numpy as np

NAME = "dlib_face"
DIM = 128
INSTALL = "pip install dlib-bin face-recognition-models"
MAX_FRAMES = 8  # frames per example, evenly spaced
UPSAMPLE = 1  # the detector's upsampling: finds faces down to about 40 px
MISSING = f"the dlib face encoder needs dlib and its models: {INSTALL}"


def model_files() -> tuple[pathlib.Path, pathlib.Path]:
  """(5-point shape predictor, descriptor network) files of the installed face-recognition-models package, found
  without importing it (its __init__ needs setuptools' pkg_resources, which Python 3.12+ venvs lack); else a
  one-line ValueError naming INSTALL."""
  spec = importlib.util.find_spec("face_recognition_models")
  if spec is None or not spec.submodule_search_locations:
    raise ValueError(MISSING)
  models = pathlib.Path(list(spec.submodule_search_locations)[0]) / "models"
  files = (models / "shape_predictor_5_face_landmarks.dat", models / "dlib_face_recognition_resnet_model_v1.dat")
  if not all(f.is_file() for f in files):
    raise ValueError(f"{MISSING} (no model files in {models})")
  return files


@functools.lru_cache(maxsize=1)
def _models():
  """(detector, 5-point shape predictor, descriptor network), loaded once from the installed package."""
  try:
    import dlib  # pylint: disable=g-import-not-at-top
  except ImportError:
    raise ValueError(MISSING) from None
  predictor, network = model_files()
  return (dlib.get_frontal_face_detector(), dlib.shape_predictor(str(predictor)),
          dlib.face_recognition_model_v1(str(network)))


def pick_frames(paths: list, k: int = MAX_FRAMES) -> list:
  """At most k of `paths`, evenly spaced: all of them when k or fewer, else the middle one of each of k bins."""
  n = len(paths)
  return list(paths) if n <= k else [paths[int((i + 0.5) * n / k)] for i in range(k)]


def load_rgb(path) -> np.ndarray:
  """An image file -> uint8 [H, W, 3] RGB (grayscale or RGBA images converted)."""
  from PIL import Image  # pylint: disable=g-import-not-at-top
  with Image.open(path) as img:
    return np.ascontiguousarray(np.asarray(img.convert("RGB"), dtype=np.uint8))


def face_box(img_HxWx3: np.ndarray):
  """The largest face dlib's detector finds, else the whole image (a crop), as a dlib.rectangle."""
  detector, _, _ = _models()  # dlib imported (or the one-line error) there
  import dlib  # pylint: disable=g-import-not-at-top
  found = detector(img_HxWx3, UPSAMPLE)
  if len(found):
    return max(found, key=lambda r: r.area())
  h, w = img_HxWx3.shape[:2]
  return dlib.rectangle(0, 0, w - 1, h - 1)


def embed_image(img_HxWx3: np.ndarray) -> np.ndarray:
  """One RGB image -> its 128-d descriptor (float32; dlib's own scale, about unit norm)."""
  _, predictor, net = _models()
  shape = predictor(img_HxWx3, face_box(img_HxWx3))
  return np.asarray(net.compute_face_descriptor(img_HxWx3, shape, 0, 0.25), dtype=np.float32)


def embed_frames(paths: list) -> np.ndarray:
  """An example's frame files -> the L2-normalised mean descriptor of at most MAX_FRAMES of them, [DIM]."""
  if not paths:
    raise ValueError("an example has no face frames (spec['faces'] is empty); dlib_face needs at least one")
  mean_D = np.mean([embed_image(load_rgb(p)) for p in pick_frames(paths)], axis=0)
  return (mean_D / max(float(np.linalg.norm(mean_D)), 1e-12)).astype(np.float32)


def embed_examples(specs: list[dict], progress: bool = True) -> np.ndarray:
  """Example specs (with 'faces': image paths) -> [N, DIM] float32, row i for specs[i]."""
  _models()  # a missing package fails before any work
  out_NxD = np.zeros((len(specs), DIM), np.float32)
  for i, spec in enumerate(specs):
    if not spec.get("faces"):
      raise ValueError(f"example {spec.get('id')!r} has no face frames (spec['faces'] is empty)")
    out_NxD[i] = embed_frames(spec["faces"])
    if progress and ((i + 1) % 20 == 0 or i + 1 == len(specs)):
      print(f"{NAME}: {i + 1}/{len(specs)} examples", file=sys.stderr, flush=True)
  return out_NxD
