"""Face pipeline: face image / video -> square uint8 face arrays [S, S, C].

Every face goes through the same steps (`_finish`): RGB, square centre crop, PIL bicubic
resize (antialiased when shrinking) to `size` x `size`, then, for grayscale, PIL's 'L'
conversion L = R * 299/1000 + G * 587/1000 + B * 114/1000 (ITU-R 601-2 luma, rounded), done
after the resize. JPEGs are decoded with libjpeg's DCT scaling (`Image.draft`) to no less than
4x the target size: for 23 px faces from ~400 px frames this is several times faster and
deterministic, and 4x headroom keeps the bicubic resize doing the real anti-aliasing.

Videos (`video_faces`) need a face detector: OpenCV's bundled Haar cascade where the installed
OpenCV has one (`cv2.CascadeClassifier`, OpenCV 4.x); OpenCV 5 moved the cascades out of the
main package, so there pass `detector=` a Haar cascade XML path or any callable
gray[H, W] uint8 -> boxes (x, y, w, h).
"""

import io
import os
import warnings

import numpy as np
from PIL import Image

_DRAFT_HEADROOM = 4
_FACE_MARGIN = 0.2  # extra side length around a detected box: detectors crop tightly


class FaceError(ValueError):
  """A face image or video that cannot be turned into face arrays; the message names it."""


class FaceWarning(UserWarning):
  """A face changed to fit (smaller than the target size, upscaled); prep records it in manifest['warnings']."""


def _finish(img, size, grayscale):
  """RGB PIL image -> uint8 [size, size, C] by square centre crop, bicubic resize, 'L'."""
  w, h = img.size
  side = min(w, h)
  left, top = (w - side) // 2, (h - side) // 2
  # Crop first: resize(box=...) would let the filter reach pixels outside the crop.
  img = img.crop((left, top, left + side, top + side))
  img = img.resize((size, size), Image.Resampling.BICUBIC, reducing_gap=None)
  if grayscale:
    return np.asarray(img.convert("L"), np.uint8)[:, :, None]
  return np.asarray(img, np.uint8)


def load_face(path_or_bytes, size, grayscale):
  """uint8 [size, size, 1 if grayscale else 3] face from a JPEG/PNG path or its bytes."""
  if size < 1:
    raise ValueError(f"face size must be >= 1, got {size}")
  if isinstance(path_or_bytes, (bytes, bytearray, memoryview)):
    name, src = "<bytes>", io.BytesIO(path_or_bytes)
  else:
    name = src = os.fspath(path_or_bytes)
    if not os.path.isfile(name):
      raise FileNotFoundError(f"face image not found: {name}")
  try:
    with Image.open(src) as img:
      if img.format == "JPEG":
        img.draft("RGB", (size * _DRAFT_HEADROOM, size * _DRAFT_HEADROOM))
      img = img.convert("RGB")  # forces the full decode: truncated files fail here
  except (OSError, ValueError, SyntaxError, Image.DecompressionBombError) as e:
    raise FaceError(f"{name}: not a readable image ({e})") from e
  if min(img.size) < 1:
    raise FaceError(f"{name}: empty image")
  if min(img.size) < size:  # JPEG draft mode never decodes below the requested size: the file is this small
    warnings.warn(f"{name}: {img.size[0]}x{img.size[1]} image upscaled to a {size}x{size} face", FaceWarning,
                  stacklevel=2)
  return _finish(img, size, grayscale)


def _pick(n, k, shift=0.5):
  """k indices into n items: the point at `shift` (0 <= shift < 1) of each of k equal bins, or all items cyclically.

  Utterance u of U sharing one video's frames takes shift (u + 0.5) / U, so different utterances get
  different frames wherever the folder has enough of them.
  """
  if n >= k:
    return [min(n - 1, int((i + shift) * n / k)) for i in range(k)]
  return [(i + int(shift * n)) % n for i in range(k)]


def face_stack_info(paths, k, size, grayscale, shift=0.5):
  """(uint8 [K, S, S, C] stack, paths used, [(path, reason)] skipped) from a video's frames.

  The k frames are evenly spaced over the sorted paths at `shift` within each bin (repeated
  cyclically when there are fewer than k); a corrupt frame is dropped and the choice redone over
  the remaining ones.
  """
  if k < 1:
    raise ValueError(f"frames per utterance must be >= 1, got {k}")
  candidates = sorted(os.fspath(p) for p in paths)
  if not candidates:
    raise FaceError("no face frames given")
  loaded, skipped = {}, []
  while candidates:
    chosen = [candidates[i] for i in _pick(len(candidates), k, shift)]
    bad = None
    for p in dict.fromkeys(chosen):
      if p not in loaded:
        try:
          loaded[p] = load_face(p, size, grayscale)
        except FaceError as e:
          bad = p
          skipped.append((p, str(e)))
          break
    if bad is None:
      used = list(dict.fromkeys(chosen))
      return np.stack([loaded[p] for p in chosen]), used, skipped
    candidates.remove(bad)
  raise FaceError(f"all {len(skipped)} face frames are unreadable, e.g. {skipped[0][1]}")


def face_stack(paths, k, size, grayscale, shift=0.5):
  """uint8 [K, S, S, C]: k frames evenly spaced over the sorted paths (see face_stack_info)."""
  return face_stack_info(paths, k, size, grayscale, shift)[0]


def _haar(cascade_path=None):
  """Callable gray -> boxes from an OpenCV Haar cascade, or a ValueError saying what to do."""
  import cv2  # pylint: disable=g-import-not-at-top
  if not hasattr(cv2, "CascadeClassifier"):
    raise ValueError(
        f"OpenCV {cv2.__version__} has no Haar cascade face detector (OpenCV 5 moved it out of "
        "the main package): install opencv-python-headless 4.x for the bundled cascade, or "
        "pass video_faces(detector=...) a callable gray[H, W] uint8 -> [(x, y, w, h), ...]")
  if cascade_path is None:
    cascade_path = os.path.join(getattr(getattr(cv2, "data", None), "haarcascades", ""),
                                "haarcascade_frontalface_default.xml")
  if not os.path.isfile(cascade_path):
    raise ValueError(f"Haar cascade file not found: {cascade_path}; pass "
                     "video_faces(detector=PATH_TO_CASCADE_XML)")
  cascade = cv2.CascadeClassifier(cascade_path)
  if cascade.empty():
    raise ValueError(f"{cascade_path}: not a loadable OpenCV cascade")

  def detect(gray):
    boxes = cascade.detectMultiScale(gray, scaleFactor=1.1, minNeighbors=5, minSize=(24, 24))
    return [tuple(int(v) for v in b) for b in np.asarray(boxes).reshape(-1, 4)]
  return detect


def _face_crop(frame_rgb, box):
  """Square crop around the box with a margin, shifted (and shrunk) to stay in the frame."""
  h, w = frame_rgb.shape[:2]
  x, y, bw, bh = box
  side = min(int(round(max(bw, bh) * (1 + _FACE_MARGIN))), h, w)
  cx, cy = x + bw / 2, y + bh / 2
  left = int(min(max(round(cx - side / 2), 0), w - side))
  top = int(min(max(round(cy - side / 2), 0), h - side))
  return frame_rgb[top:top + side, left:left + side]


def video_faces(video_path, fps, size, grayscale, max_frames=None, detector=None):
  """Largest face of each frame sampled at `fps`, as uint8 [S, S, C] arrays (FaceError if none).

  detector: None (OpenCV's bundled Haar cascade), a cascade XML path, or a callable
  gray[H, W] uint8 -> [(x, y, w, h), ...]. max_frames bounds the frames sampled.
  """
  import cv2  # pylint: disable=g-import-not-at-top
  if fps <= 0:
    raise ValueError(f"video sampling fps must be positive, got {fps}")
  detect = detector if callable(detector) else _haar(detector)
  path = os.fspath(video_path)
  if not os.path.isfile(path):
    raise FileNotFoundError(f"video not found: {path}")
  cap = cv2.VideoCapture(path)
  try:
    if not cap.isOpened():
      raise FaceError(f"{path}: not a readable video")
    native = cap.get(cv2.CAP_PROP_FPS)
    native = native if native and native > 0 else 25.0  # containers without a rate
    faces, sampled, index, next_t = [], 0, 0, 0.0
    while max_frames is None or sampled < max_frames:
      ok, frame = cap.read()
      if not ok:
        break
      t = index / native
      index += 1
      if t + 1e-9 < next_t:
        continue
      next_t += 1.0 / fps
      sampled += 1
      boxes = detect(cv2.cvtColor(frame, cv2.COLOR_BGR2GRAY))
      if len(boxes):
        box = max(boxes, key=lambda b: b[2] * b[3])
        crop = _face_crop(cv2.cvtColor(frame, cv2.COLOR_BGR2RGB), box)
        faces.append(_finish(Image.fromarray(crop), size, grayscale))
  finally:
    cap.release()
  if index == 0:
    raise FaceError(f"{path}: not a readable video (no frame could be decoded)")
  if not faces:
    raise FaceError(f"{path}: no face found in any of the {sampled} frames sampled at {fps} fps")
  return faces


def video_clip(video_path, frames: int, size: int, grayscale: bool) -> np.ndarray:
  """uint8 [frames, size, size, C]: `frames` evenly spaced frames of a whole clip (an animated GIF/PNG/WebP through
  PIL, any other container through OpenCV), each centre-cropped and resized as a face image is (`_finish`).
  FaceError when nothing can be decoded."""
  if frames < 1:
    raise ValueError(f"a clip needs >= 1 frame, got {frames}")
  path = os.fspath(video_path)
  if not os.path.isfile(path):
    raise FileNotFoundError(f"video not found: {path}")
  decoded = []
  try:
    with Image.open(path) as img:
      for i in range(getattr(img, "n_frames", 1)):
        img.seek(i)
        decoded.append(img.convert("RGB"))
  except (OSError, ValueError, SyntaxError, Image.DecompressionBombError):
    import cv2  # pylint: disable=g-import-not-at-top
    cap = cv2.VideoCapture(path)
    try:
      while cap.isOpened():
        ok, frame = cap.read()
        if not ok:
          break
        decoded.append(Image.fromarray(cv2.cvtColor(frame, cv2.COLOR_BGR2RGB)))
    finally:
      cap.release()
  if not decoded:
    raise FaceError(f"{path}: not a readable video (no frame could be decoded)")
  picks = np.rint(np.linspace(0, len(decoded) - 1, frames)).astype(int)
  return np.stack([_finish(decoded[i], size, grayscale) for i in picks])


class ClipWarning(FaceWarning):
  """A per-utterance frame sequence changed to fit (frames replaced, or fewer frames than audio steps)."""


def frame_sequence(paths, size, grayscale):
  """uint8 [N, S, S, C]: every frame in the given (time) order, each through load_face.

  An unreadable frame repeats the previous readable one (the first readable one at the start), with a
  ClipWarning, so that every later frame keeps its time; FaceError when none is readable.
  """
  paths = [os.fspath(p) for p in paths]
  if not paths:
    raise FaceError("no frames given")
  loaded, bad = [], []
  for p in paths:
    try:
      loaded.append(load_face(p, size, grayscale))
    except FaceError as e:
      loaded.append(None)
      bad.append(str(e))
  good = [i for i, f in enumerate(loaded) if f is not None]
  if not good:
    raise FaceError(f"all {len(paths)} frames are unreadable, e.g. {bad[0]}")
  if bad:
    warnings.warn(f"{os.path.dirname(paths[0])}: {len(bad)} of {len(paths)} frames unreadable, each replaced by the "
                  f"previous readable frame (e.g. {bad[0]})", ClipWarning, stacklevel=2)
    previous = loaded[good[0]]
    for i, f in enumerate(loaded):
      loaded[i] = previous = previous if f is None else f
  return np.stack(loaded)
