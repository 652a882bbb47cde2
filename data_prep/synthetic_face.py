"""NumPy-rendered faces for the synthetic corpus: identity shape and colours, per-frame pose and light.

`render` draws one still frame; `make_clip_still` and `render_clip` make an utterance's lip-synced video
(the mouth opened per frame as `mouth_openings` maps the speech's loudness, smooth head motion, blinks).
"""

import dataclasses

import numpy as np

SKIN_RGB = {"light": (236, 200, 172), "medium": (198, 148, 108), "dark": (118, 80, 56)}
HAIR_RGB = {"black": (30, 26, 24), "brown": (104, 66, 38), "blond": (222, 188, 120), "red": (170, 72, 36)}
GREY_RGB = (190, 190, 186)
GREY_FRACTION = {"young": 0.0, "adult": 0.1, "senior": 0.8}
IRIS_RGB = ((70, 45, 25), (60, 110, 160), (80, 120, 70), (35, 28, 24))
# Body size widens the head and neck; sex changes jaw taper, brows and lips. These are the facial
# counterparts of the voice's vocal-tract length and pitch (see synthetic_voice).
WIDTH_SIZE = {"small": 0.9, "medium": 1.0, "large": 1.12}
LENGTH_AGE = {"young": 0.96, "adult": 1.0, "senior": 1.03}


@dataclasses.dataclass(frozen=True)
class Face:
  """Identity-level face parameters in face coordinates (the image spans [-1, 1])."""
  head_w: float
  head_h: float
  jaw_taper: float
  skin: np.ndarray  # RGB in [0, 1]
  hair: np.ndarray
  lips: np.ndarray
  iris: np.ndarray
  long_hair: bool
  hair_volume: float
  hairline: float  # y of the hairline at the centre
  fringe: float  # how far the fringe curves down at the sides
  part: float  # x of the parting
  eye_dx: float
  eye_y: float
  eye_w: float
  eye_h: float
  brow_t: float
  brow_tilt: float
  brow_gap: float
  nose_len: float
  mouth_w: float
  mouth_y: float
  lip_t: float
  beard: float  # 0 none, ~0.35 stubble, ~0.9 full beard
  moustache: float
  glasses: bool
  ear: float
  neck_w: float
  shirt: np.ndarray


def make_face(attrs: dict, rng: np.random.Generator) -> Face:
  """Draws a face whose shape and colours follow the attributes, plus identity-specific details."""
  male = attrs["sex"] == "m"
  width = WIDTH_SIZE[attrs["size"]] * (1.05 if male else 0.96) * np.exp(rng.normal(0, 0.03))
  grey = GREY_FRACTION[attrs["age"]]
  hair = (1 - grey) * np.array(HAIR_RGB[attrs["hair_color"]]) + grey * np.array(GREY_RGB)
  skin = np.array(SKIN_RGB[attrs["skin"]]) * np.exp(rng.normal(0, 0.05, 3))
  lips = skin * (np.array([0.85, 0.55, 0.55]) if male else np.array([0.95, 0.42, 0.48]))
  long_hair = attrs["hair_length"] == "long"
  beard = 0.0
  if male and rng.random() < 0.45:
    beard = float(rng.choice([0.35, 0.9]))
  return Face(
      head_w=float(0.5 * width), head_h=float(0.66 * LENGTH_AGE[attrs["age"]] * np.exp(rng.normal(0, 0.03))),
      jaw_taper=float(rng.uniform(0.05, 0.2) if male else rng.uniform(0.25, 0.4)),
      skin=np.clip(skin / 255, 0, 1), hair=np.clip(hair * np.exp(rng.normal(0, 0.06, 3)) / 255, 0, 1),
      lips=np.clip(lips / 255, 0, 1), iris=np.array(IRIS_RGB[rng.integers(len(IRIS_RGB))]) / 255,
      long_hair=long_hair, hair_volume=float(rng.uniform(1.05, 1.12) if long_hair else rng.uniform(1.02, 1.07)),
      hairline=float(rng.uniform(-0.42, -0.3) + (0.08 if male and attrs["age"] == "senior" else 0.0)),
      fringe=float(rng.uniform(0.15, 0.4)), part=float(rng.uniform(-0.25, 0.25)),
      eye_dx=float(rng.uniform(0.17, 0.23) * width), eye_y=float(rng.uniform(-0.1, -0.02)),
      eye_w=float(rng.uniform(0.075, 0.1)), eye_h=float(rng.uniform(0.032, 0.048)),
      brow_t=float(rng.uniform(0.018, 0.03) * (1.3 if male else 1.0)),
      brow_tilt=float(rng.uniform(-0.25, 0.25)), brow_gap=float(rng.uniform(0.06, 0.1)),
      nose_len=float(rng.uniform(0.15, 0.24)), mouth_w=float(rng.uniform(0.11, 0.17) * width),
      mouth_y=float(rng.uniform(0.3, 0.38)), lip_t=float(rng.uniform(0.025, 0.04) * (0.8 if male else 1.2)),
      beard=beard, moustache=float(rng.random() < 0.5) * 0.8 if male else 0.0,
      glasses=attrs["glasses"] == "yes", ear=float(rng.uniform(0.06, 0.09)),
      neck_w=float(rng.uniform(0.22, 0.28) * width * (1.12 if male else 0.95)),
      shirt=rng.uniform(0.1, 0.85, 3))


@dataclasses.dataclass(frozen=True)
class Scene:
  """Per-video conditions: background, clothes, light and camera colour."""
  background: np.ndarray  # [2, 3] RGB at the top and bottom
  shirt: np.ndarray
  light: np.ndarray  # [2] gradient direction times strength
  brightness: float
  white_balance: np.ndarray  # [3] multiplicative colour cast
  zoom: float


def make_scene(face: Face, rng: np.random.Generator) -> Scene:
  """Draws one video's scene: muted background and mild light, so identity dominates the pixels."""
  grey = rng.uniform(0.4, 0.65)
  top = np.clip(grey + rng.normal(0, 0.04, 3), 0, 1)
  # People keep to a clothing style: the identity's shirt colour, varied a little per video.
  return Scene(background=np.stack([top, np.clip(top * rng.uniform(0.85, 1.05), 0, 1)]),
               shirt=np.clip(face.shirt + rng.normal(0, 0.06, 3), 0, 1), light=rng.normal(0, 0.07, 2),
               brightness=float(rng.uniform(0.94, 1.06)), white_balance=np.exp(rng.normal(0, 0.03, 3)),
               zoom=float(rng.uniform(1.08, 1.18)))


def _soft(d: np.ndarray, px: float) -> np.ndarray:
  """Coverage of a shape from a signed distance (negative inside), antialiased over one pixel."""
  return np.clip(0.5 - d / px, 0.0, 1.0)


def _ellipse(x, y, cx, cy, a, b):
  """Approximate signed distance to an axis-aligned ellipse."""
  return (np.sqrt(((x - cx) / a) ** 2 + ((y - cy) / b) ** 2) - 1.0) * min(a, b)


def _paint(img: np.ndarray, alpha: np.ndarray, rgb) -> None:
  """Alpha-composites a colour (flat, or per pixel) over img in place, within alpha's bounding box."""
  rows, cols = np.flatnonzero(alpha.any(axis=1)), np.flatnonzero(alpha.any(axis=0))
  if rows.size == 0:
    return
  box = np.s_[rows[0]:rows[-1] + 1, cols[0]:cols[-1] + 1]
  rgb = np.asarray(rgb, img.dtype)
  img[box] += alpha[box][..., None] * ((rgb[box] if rgb.ndim == 3 else rgb) - img[box])


@dataclasses.dataclass(frozen=True)
class Pose:
  """One frame's pose, expression and light; `render` draws one per frame when it is given none."""
  angle: float = 0.0  # roll in radians
  scale: float = 1.0  # relative to the scene's zoom
  shift: tuple = (0.0, 0.0)  # translation in image coordinates (the image spans [-1, 1])
  blink: float = 1.0  # eye opening: 1 open, 0.25 nearly shut
  gaze: tuple = (0.0, 0.0)  # horizontal iris offset of each eye
  mouth_open: float = 0.0  # 0 closed; about 1.2 wide open
  smile: float = 0.0  # lifts the mouth corners (negative: lowers them)
  light: float = 0.0  # frame-wide brightness offset


def draw_pose(rng: np.random.Generator) -> Pose:
  """A still frame's pose: independent small shift, roll, scale, gaze and expression, a blink now and then."""
  angle = float(rng.normal(0, 0.07))
  scale = np.exp(rng.normal(0, 0.03))
  shift = tuple(float(v) for v in rng.normal(0, 0.025, 2))
  blink = 0.25 if rng.random() < 0.08 else 1.0
  gaze = (rng.normal(0, 0.008), rng.normal(0, 0.008))
  mouth_open = max(0.0, rng.normal(0.3, 0.35))
  smile = rng.uniform(-0.2, 1.0)
  return Pose(angle, scale, shift, blink, gaze, mouth_open, smile, rng.normal(0, 0.03))


def render(face: Face, scene: Scene, rng: np.random.Generator, size: int = 96, pose: Pose | None = None) -> np.ndarray:
  """One frame [size, size, 3] uint8: rendered at 2x and box-downsampled, so edges are antialiased.

  The pose is drawn from rng (draw_pose) unless given; the sensor noise always comes from rng.
  """
  img = _render(face, scene, draw_pose(rng) if pose is None else pose, size)
  img = img + rng.normal(0, 0.008, img.shape)  # sensor noise
  return np.round(np.clip(img, 0, 1) * 255).astype(np.uint8)


def _paint_mouth(im, X, Y, f: Face, mouth_open: float, smile: float, px: float, lips, gap_rgb=(0.25, 0.08, 0.08)):
  """Lips and the dark gap between them at face coordinates (X, Y): opening widens both, smiling lifts the corners."""
  mx = X / f.mouth_w
  my = Y - f.mouth_y + smile * 0.035 * mx ** 2
  lip_d = (np.sqrt(mx ** 2 + (my / (f.lip_t + 0.03 * mouth_open)) ** 2) - 1.0) * f.lip_t
  _paint(im, _soft(lip_d, px), lips)
  gap = (np.sqrt((mx / 0.85) ** 2 + (my / (0.004 + 0.03 * mouth_open)) ** 2) - 1.0) * 0.01
  _paint(im, _soft(gap, px), gap_rgb)


def _render(face: Face, scene: Scene, pose: Pose, size: int, span: float = 1.0) -> np.ndarray:
  """float [size, size, 3] in [0, 1] (not clipped, no sensor noise) of the image square [-span, span]^2."""
  big = 2 * size
  grid = ((np.arange(big) + 0.5) / big * 2.0 - 1.0).astype(np.float32)  # float32: half the memory traffic
  if span != 1.0:
    grid = (grid * np.float32(span)).astype(np.float32)
  ys, xs = np.meshgrid(grid, grid, indexing="ij")
  # Pose: shift, roll and scale, applied as the inverse map from image to face coordinates.
  angle = pose.angle
  scale = float(scene.zoom * pose.scale)
  shift = list(pose.shift)
  cos, sin = float(np.cos(angle)), float(np.sin(angle))
  x = (cos * (xs - shift[0]) + sin * (ys - shift[1])) / scale
  y = (-sin * (xs - shift[0]) + cos * (ys - shift[1])) / scale
  px = 2.0 * span / big / scale

  def window(cx, cy, r):
    """Pixel slices covering face-coordinate disc (cx, cy, r): small features touch only these."""
    centre = shift + scale * np.array([cos * cx - sin * cy, sin * cx + cos * cy])
    lo = np.floor((centre - scale * r + span) / (2.0 * span) * big - 1).astype(int).clip(0, big)
    hi = np.ceil((centre + scale * r + span) / (2.0 * span) * big + 1).astype(int).clip(0, big)
    return np.s_[lo[1]:hi[1], lo[0]:hi[0]]

  f = face
  skin, hair, lips, iris = (np.asarray(c, np.float32) for c in (face.skin, face.hair, face.lips, face.iris))
  img = np.empty((big, big, 3), np.float32)
  t = (ys[..., None] + 1.0) / 2.0
  img[:] = scene.background[0] * (1 - t) + scene.background[1] * t

  head_cy = 0.06
  taper = 1.0 - f.jaw_taper * np.clip((y - head_cy) / f.head_h, 0, 1) ** 2
  head_d = (np.sqrt((x / (f.head_w * taper)) ** 2 + ((y - head_cy) / f.head_h) ** 2) - 1.0) * f.head_w
  hair_top = head_cy - f.head_h * f.hair_volume
  if f.long_hair:  # hair behind the head, down to the shoulders
    back = np.maximum(_ellipse(x, y, 0, head_cy - 0.05, f.head_w * 1.18, f.head_h * 1.08),
                      -np.minimum(1.2 - y, f.head_w * 1.25 - np.abs(x)))
    back = np.minimum(back, np.maximum(np.abs(x) - f.head_w * 1.22, np.abs(y - 0.55) - 0.6))
    _paint(img, _soft(back, px), hair * 0.85)
  neck = np.maximum(np.abs(x) - f.neck_w, head_cy + 0.3 - y)
  _paint(img, _soft(neck, px), skin * 0.8)
  _paint(img, _soft(_ellipse(x, y, 0, 1.35, 0.95 * f.head_w / 0.5, 0.5), px), scene.shirt)
  for side in (-1, 1):  # ears
    w = window(side * f.head_w * 0.97, f.eye_y + 0.08, f.ear * 1.5)
    _paint(img[w], _soft(_ellipse(x[w], y[w], side * f.head_w * 0.97, f.eye_y + 0.08, f.ear * 0.7, f.ear * 1.4), px),
           skin * 0.88)
  # Head with spherical shading so it reads as a volume.
  r2 = np.clip((x / f.head_w) ** 2 + ((y - head_cy) / f.head_h) ** 2, 0, 1)
  shade = 0.72 + 0.28 * np.sqrt(1.0 - r2)
  head_alpha = _soft(head_d, px)
  _paint(img, head_alpha, skin * shade[..., None])

  if f.beard > 0:  # lower face below the cheeks
    beard_d = np.maximum(head_d + 0.01, f.mouth_y - 0.12 - y + 0.15 * (x / f.head_w) ** 2)
    _paint(img, _soft(beard_d, px * 3) * f.beard, hair * 0.8)
  # Eyes: sclera, iris, pupil, then the lid line; eyelids close a little now and then.
  blink = pose.blink
  for side in (-1, 1):
    ex = side * f.eye_dx
    w = window(ex, f.eye_y - f.brow_gap / 2, f.eye_w * 1.6 + f.brow_gap)
    X, Y, im = x[w], y[w], img[w]
    eye = _ellipse(X, Y, ex, f.eye_y, f.eye_w, f.eye_h * blink)
    white = _soft(eye, px)
    _paint(im, white, (0.94, 0.93, 0.9))
    gaze = pose.gaze[(side + 1) // 2]
    _paint(im, white * _soft(_ellipse(X, Y, ex + gaze, f.eye_y, f.eye_h * 0.95, f.eye_h * 0.95), px), iris)
    _paint(im, white * _soft(_ellipse(X, Y, ex + gaze, f.eye_y, f.eye_h * 0.4, f.eye_h * 0.4), px), (0.05,) * 3)
    _paint(im, _soft(np.abs(eye) - 0.006, px) * (Y < f.eye_y), skin * 0.35)
    # Brow: a thick band tilted up or down at the outer end.
    bx = (X - ex) * side
    by = Y - (f.eye_y - f.eye_h - f.brow_gap) + f.brow_tilt * bx + 0.6 * bx ** 2
    brow = np.maximum(np.abs(bx) - f.eye_w * 1.15, np.abs(by) - f.brow_t)
    _paint(im, _soft(brow, px) * 0.9, hair * 0.7)
  # Nose: a shadow on one side and two nostrils.
  nose_y = f.eye_y + f.nose_len
  w = window(0.0, nose_y - f.nose_len * 0.4, f.nose_len * 0.7 + 0.05)
  X, Y, im = x[w], y[w], img[w]
  _paint(im, _soft(_ellipse(X, Y, 0.02, nose_y - f.nose_len * 0.4, 0.018, f.nose_len * 0.5), px * 4) * 0.35,
         skin * 0.6)
  for side in (-1, 1):
    _paint(im, _soft(_ellipse(X, Y, side * 0.03, nose_y, 0.016, 0.01), px) * 0.7, skin * 0.45)
  # Mouth: expression opens it and lifts the corners.
  w = window(0.0, (nose_y + f.mouth_y) / 2, f.mouth_w * 1.2 + (f.mouth_y - nose_y) / 2 + 0.08)
  X, Y, im = x[w], y[w], img[w]
  if f.moustache > 0:
    moustache = _ellipse(X, Y, 0, (nose_y + f.mouth_y) / 2 + 0.01, f.mouth_w * 1.05, 0.025)
    _paint(im, _soft(moustache, px * 2) * f.moustache, hair * 0.75)
  _paint_mouth(im, X, Y, f, pose.mouth_open, pose.smile, px, lips)

  # Hair on top: inside a cap slightly larger than the head, above a hairline with a fringe.
  cap = _ellipse(x, y, 0, head_cy - 0.02, f.head_w * f.hair_volume, f.head_h * f.hair_volume)
  line = f.hairline + f.fringe * ((x - f.part) / f.head_w) ** 2
  line = np.maximum(line, hair_top + 0.02)
  top = np.maximum(cap, y - line)
  if f.long_hair:  # strands falling beside the cheeks
    sides = np.maximum(cap, np.minimum(f.head_w * 0.8 - np.abs(x), 0.0) + np.maximum(y - 0.35, 0.0))
    top = np.minimum(top, np.maximum(sides, f.head_w * 0.78 - np.abs(x)))
  hair_alpha = _soft(top, px)
  streak = 1.0 + 0.06 * np.sin(60.0 * (x - f.part))  # strand texture
  _paint(img, hair_alpha, hair * streak[..., None])
  if f.glasses:
    w = window(0.0, f.eye_y, f.eye_dx + f.eye_w * 1.6)
    X, Y, im = x[w], y[w], img[w]
    for side in (-1, 1):
      ring = np.abs(_ellipse(X, Y, side * f.eye_dx, f.eye_y, f.eye_w * 1.5, f.eye_h * 2.6)) - 0.008
      _paint(im, _soft(ring, px), (0.08, 0.08, 0.1))
    bridge = np.maximum(np.abs(X) - (f.eye_dx - f.eye_w * 1.5), np.abs(Y - f.eye_y + 0.01) - 0.007)
    _paint(im, _soft(bridge, px), (0.08, 0.08, 0.1))

  # Light: a linear gradient across the frame, brightness and colour cast of the camera.
  light = 1.0 + scene.light[0] * xs + scene.light[1] * ys + pose.light
  img = img * (light[..., None] * scene.brightness * scene.white_balance)
  return img.reshape(size, 2, size, 2, 3).mean(axis=(1, 3))


# Lip-synced clips (the synthetic corpus's per-utterance frames).
MOUTH_MAX = 1.5  # mouth_open at full loudness (the stills draw most openings below 1)
MOUTH_RANGE_DB = 30.0  # frames this far below the utterance's loud frames (or quieter) show a closed mouth
MOUTH_LEVELS = 7  # openings 0 .. MOUTH_MAX rendered per video; a frame blends the two nearest
_CLIP_SPAN = 1.3  # the still is rendered this much wider than the frame, so that moving it never shows an edge
# Head motion per utterance: (still-frame spread, bound) of roll (rad), log scale and shift (image units).
_MOTION = {"angle": (0.07, 0.15), "log_scale": (0.03, 0.05), "shift_x": (0.025, 0.06), "shift_y": (0.025, 0.06)}
_BLINKS_PER_SECOND = 0.3
_BLINK_CLOSURE = (0.5, 1.0, 0.5)  # a blink over three frames
_NOISE_WIDTH = 0.008 * 12 ** 0.5  # uniform sensor noise with the stills' standard deviation


def mouth_openings(loudness: np.ndarray) -> np.ndarray:
  """Per-frame mouth_open from the speech's per-frame RMS: its level in dB below the utterance's loud frames
  (the 95th percentile), mapped linearly from closed (MOUTH_RANGE_DB below, or silence) to MOUTH_MAX, smoothed
  over three frames (lips do not jump)."""
  loudness = np.asarray(loudness, np.float64)
  ref = max(float(np.percentile(loudness, 95)), 1e-12)
  level_db = 20.0 * np.log10(np.maximum(loudness / ref, 1e-6))
  opening = np.clip(1.0 + level_db / MOUTH_RANGE_DB, 0.0, 1.0)
  padded = np.pad(opening, 1, mode="edge")
  return MOUTH_MAX * (0.25 * padded[:-2] + 0.5 * padded[1:-1] + 0.25 * padded[2:])


@dataclasses.dataclass(frozen=True)
class ClipStill:
  """One video's face in a neutral pose on a canvas _CLIP_SPAN wider than the frame, which clips move."""
  size: int  # frame side (pixels)
  source: int  # canvas side (pixels), spanning [-span, span] in image units
  span: float
  eyes_open: np.ndarray  # float [source, source, 3], mouth closed
  eyes_shut: np.ndarray  # what a blink adds
  window: tuple  # (rows, cols) slices of the mouth's region, apart from the eyes
  mouths: np.ndarray  # float [MOUTH_LEVELS, h, w, 3]: that region at openings linspace(0, MOUTH_MAX)


def make_clip_still(face: Face, scene: Scene, rng: np.random.Generator, size: int = 96) -> ClipStill:
  """Renders a video's still for render_clip: its gaze and smile, eyes open and shut, the mouth at MOUTH_LEVELS."""
  gaze, smile = rng.normal(0, 0.008), rng.uniform(-0.2, 1.0)
  source = int(np.ceil(size * _CLIP_SPAN))
  span = source / size
  pose = Pose(gaze=(gaze, gaze), smile=smile)
  eyes_open = _render(face, scene, pose, source, span)
  eyes_shut = _render(face, scene, dataclasses.replace(pose, blink=0.25), source, span) - eyes_open
  # The mouth's region (face units: the widest lips, raised corners, a margin) in canvas pixels; it stays
  # below the eyes (mouth_y >= 0.3), so blinks and mouths never touch the same pixels.
  to_pixel = lambda v: (scene.zoom * v / span + 1.0) / 2.0 * source
  reach = face.lip_t + 0.03 * MOUTH_MAX + 0.035 * abs(smile) * 1.3 + 0.02
  cols = slice(max(0, int(np.floor(to_pixel(-face.mouth_w - 0.03))) - 1),
               min(source, int(np.ceil(to_pixel(face.mouth_w + 0.03))) + 1))
  rows = slice(max(0, int(np.floor(to_pixel(face.mouth_y - reach))) - 1),
               min(source, int(np.ceil(to_pixel(face.mouth_y + reach))) + 1))
  # Painted at 2x over the still (its light and camera applied to the colours), then box-downsampled.
  r2 = (np.arange(2 * rows.start, 2 * rows.stop) + 0.5) / (2 * source) * 2 * span - span
  c2 = (np.arange(2 * cols.start, 2 * cols.stop) + 0.5) / (2 * source) * 2 * span - span
  qy, qx = np.meshgrid(r2, c2, indexing="ij")
  lit = ((1.0 + scene.light[0] * qx + scene.light[1] * qy)[..., None] * scene.brightness
         * np.asarray(scene.white_balance))
  under = np.repeat(np.repeat(eyes_open[rows, cols], 2, axis=0), 2, axis=1)
  h, w = rows.stop - rows.start, cols.stop - cols.start
  mouths = []
  for opening in np.linspace(0.0, MOUTH_MAX, MOUTH_LEVELS):
    patch = under.copy()
    _paint_mouth(patch, qx / scene.zoom, qy / scene.zoom, face, opening, smile, span / source / scene.zoom,
                 np.asarray(face.lips) * lit, np.array((0.25, 0.08, 0.08)) * lit)
    mouths.append(patch.reshape(h, 2, w, 2, 3).mean(axis=(1, 3)))
  return ClipStill(size, source, span, eyes_open, eyes_shut, (rows, cols), np.stack(mouths).astype(np.float32))


def _drift(rng: np.random.Generator, t: np.ndarray, spread: float, bound: float) -> np.ndarray:
  """A smooth random path: an offset plus three slow sinusoids (0.1-0.9 Hz), softly bounded."""
  path = np.full(t.shape, rng.normal(0.0, 0.6 * spread))
  for _ in range(3):
    path += rng.normal(0.0, 0.45 * spread) * np.sin(2 * np.pi * rng.uniform(0.1, 0.9) * t + rng.uniform(0, 2 * np.pi))
  return bound * np.tanh(path / bound)


def _affine(size: int, source: int, span: float, angle: float, scale: float, shift) -> tuple:
  """PIL AFFINE coefficients: output pixel -> canvas pixel, for a head rolled, scaled and shifted in the frame."""
  cos, sin = np.cos(angle), np.sin(angle)
  to_image = np.array([[2.0 / size, 0, -1.0], [0, 2.0 / size, -1.0], [0, 0, 1]])
  unshift = np.array([[1, 0, -shift[0]], [0, 1, -shift[1]], [0, 0, 1]])
  unpose = np.array([[cos / scale, sin / scale, 0], [-sin / scale, cos / scale, 0], [0, 0, 1]])
  to_source = np.array([[source / (2 * span), 0, source / 2], [0, source / (2 * span), source / 2], [0, 0, 1]])
  return tuple((to_source @ unpose @ unshift @ to_image)[:2].ravel())


def render_clip(still: ClipStill, openings: np.ndarray, fps: float, rng: np.random.Generator) -> list:
  """Frames [size, size, 3] uint8 of one utterance at `fps`, frame k with mouth opening openings[k].

  Each frame takes the still with the mouth blended between its two nearest rendered openings and
  blinks blended in, and moves it along smooth random head-motion paths (roll, scale and shift,
  drawn per clip: the face-tracked crop of a moving head), then flickers the light a little and adds
  sensor noise.
  """
  from PIL import Image  # pylint: disable=g-import-not-at-top
  n, size = len(openings), still.size
  t = np.arange(n) / fps
  paths = {k: _drift(rng, t, *v) for k, v in _MOTION.items()}
  closure = np.zeros(n + len(_BLINK_CLOSURE))
  for start in np.flatnonzero(rng.random(n) < _BLINKS_PER_SECOND / fps):
    closure[start:start + len(_BLINK_CLOSURE)] = np.maximum(closure[start:start + len(_BLINK_CLOSURE)], _BLINK_CLOSURE)
  closure = closure[:n]
  gain = 1.0 + rng.normal(0, 0.01, n)  # light flicker
  canvases = {c: np.round(np.clip(still.eyes_open + c * still.eyes_shut, 0, 1) * 255).astype(np.uint8)
              for c in sorted(set(closure.tolist()))}
  position = np.clip(np.asarray(openings, np.float64) / MOUTH_MAX, 0.0, 1.0) * (MOUTH_LEVELS - 1)
  frames = []
  for k in range(n):
    low = min(int(position[k]), MOUTH_LEVELS - 2)
    mouth = still.mouths[low] + np.float32(position[k] - low) * (still.mouths[low + 1] - still.mouths[low])
    canvas = canvases[closure[k]].copy()
    canvas[still.window] = np.round(np.clip(mouth, 0, 1) * 255)
    coeffs = _affine(size, still.source, still.span, paths["angle"][k], float(np.exp(paths["log_scale"][k])),
                     (paths["shift_x"][k], paths["shift_y"][k]))
    moved = np.asarray(Image.fromarray(canvas).transform((size, size), Image.Transform.AFFINE, coeffs,
                                                          Image.Resampling.BILINEAR))
    noise = rng.random(moved.shape, dtype=np.float32) - np.float32(0.5)
    img = moved * np.float32(gain[k]) + noise * np.float32(255 * _NOISE_WIDTH) + np.float32(0.5)
    frames.append(np.clip(img, 0, 255).astype(np.uint8))
  return frames
