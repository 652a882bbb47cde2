"""Face pipeline on real JPEG/PNG/MP4 files: crops, grayscale formula, stacks, video sampling."""

import io

import cv2
import numpy as np
import pytest
from PIL import Image

from data_prep import faces


def _save(path, arr, **kw):
  Image.fromarray(arr).save(path, **kw)
  return path


def _banded(h=200, w=300):
  """Red | textured centre square | blue: a centre crop must drop both bands."""
  arr = np.zeros((h, w, 3), np.uint8)
  arr[:, :50] = (255, 0, 0)
  arr[:, -50:] = (0, 0, 255)
  yy, xx = np.mgrid[0:h, 0:w - 100]
  arr[:, 50:-50, 0] = (xx * 255) // (w - 101)
  arr[:, 50:-50, 1] = (yy * 255) // (h - 1)
  arr[:, 50:-50, 2] = ((xx // 10 + yy // 10) % 2) * 200
  return arr


def test_png_centre_crop_exact_and_resized(tmp_path):
  arr = _banded()
  path = _save(tmp_path / "f.png", arr)
  same = faces.load_face(path, 200, grayscale=False)  # no resize: exactly the centre square
  np.testing.assert_array_equal(same, arr[:, 50:250])
  small = faces.load_face(path, 23, grayscale=False)
  assert small.shape == (23, 23, 3) and small.dtype == np.uint8
  # No red or blue band survives: the left column is dark red-channel, the right not blue.
  assert small[:, 0, 0].max() < 40 and small[:, -1, 0].min() > 200
  # Area average of the crop in 23x23 cells is an independent estimate of the resize.
  crop = arr[:, 50:250].astype(np.float64)
  edges = np.linspace(0, 200, 24).astype(int)
  ref = np.array([[crop[edges[i]:edges[i + 1], edges[j]:edges[j + 1], :2].mean((0, 1))
                   for j in range(23)] for i in range(23)])
  assert np.abs(small[..., :2] - ref).max() < 8  # smooth channels only (not the checkerboard)
  tall = _save(tmp_path / "tall.png", np.ascontiguousarray(arr.transpose(1, 0, 2)))
  np.testing.assert_array_equal(faces.load_face(tall, 200, False), arr[:, 50:250].transpose(1, 0, 2))


def test_jpeg_from_path_and_bytes(tmp_path):
  yy, xx = np.mgrid[0:400, 0:400]
  arr = np.stack([xx * 255 // 399, yy * 255 // 399, (xx + yy) * 255 // 798], -1).astype(np.uint8)
  path = _save(tmp_path / "g.jpg", arr, quality=95)
  a = faces.load_face(path, 20, grayscale=False)
  b = faces.load_face(path.read_bytes(), 20, grayscale=False)
  np.testing.assert_array_equal(a, b)
  ref = arr.reshape(20, 20, 20, 20, 3).mean((1, 3))  # 20x20 cell averages
  assert np.abs(a - ref).max() < 6


def test_grayscale_matches_luma_formula(tmp_path):
  rgb = np.random.default_rng(0).integers(0, 256, (32, 32, 3), dtype=np.uint8)
  path = _save(tmp_path / "n.png", rgb)
  gray = faces.load_face(path, 32, grayscale=True)
  assert gray.shape == (32, 32, 1)
  ref = rgb[..., 0] * 0.299 + rgb[..., 1] * 0.587 + rgb[..., 2] * 0.114
  assert np.abs(gray[..., 0].astype(np.float64) - ref).max() <= 1.0
  # Grayscale of a resized face equals the formula applied to the RGB resize.
  col = faces.load_face(_save(tmp_path / "b.png", _banded()), 23, False).astype(np.float64)
  g = faces.load_face(tmp_path / "b.png", 23, True)[..., 0]
  assert np.abs(g - (col[..., 0] * 0.299 + col[..., 1] * 0.587 + col[..., 2] * 0.114)).max() <= 1.0


def test_palette_and_alpha_images_are_converted(tmp_path):
  Image.fromarray(_banded()).convert("P").save(tmp_path / "p.png")
  Image.fromarray(_banded()).convert("RGBA").save(tmp_path / "a.png")
  assert faces.load_face(tmp_path / "p.png", 16, False).shape == (16, 16, 3)
  assert faces.load_face(tmp_path / "a.png", 16, True).shape == (16, 16, 1)


def test_bad_images_raise_face_error(tmp_path):
  good = io.BytesIO()
  Image.fromarray(_banded()).save(good, format="JPEG")
  raw = good.getvalue()
  (tmp_path / "half.jpg").write_bytes(raw[:len(raw) // 2])
  with pytest.raises(faces.FaceError, match="half.jpg: not a readable image"):
    faces.load_face(tmp_path / "half.jpg", 23, True)
  (tmp_path / "junk.jpg").write_bytes(b"\xff\xd8\xff\xe0" + bytes(range(256)) * 4)
  with pytest.raises(faces.FaceError, match="junk.jpg"):
    faces.load_face(tmp_path / "junk.jpg", 23, True)
  with pytest.raises(faces.FaceError, match="<bytes>"):
    faces.load_face(b"not an image at all", 23, False)
  with pytest.raises(FileNotFoundError, match="nope.jpg"):
    faces.load_face(tmp_path / "nope.jpg", 23, True)


def _colour_frames(tmp_path, n):
  paths = []
  for i in range(n):
    paths.append(_save(tmp_path / f"{i:07d}.png", np.full((8, 8, 3), 10 * i + 5, np.uint8)))
  return paths


def test_face_stack_spacing_and_cycling(tmp_path):
  paths = _colour_frames(tmp_path, 5)
  ids = lambda stack: [int(v) // 10 for v in stack[:, 0, 0, 0]]
  shuffled = [paths[i] for i in (3, 0, 4, 1, 2)]  # order must not matter: frames are sorted
  assert ids(faces.face_stack(shuffled, 2, 4, False)) == [1, 3]  # centres of 2 bins over 5
  assert ids(faces.face_stack(paths, 1, 4, True)) == [2]
  assert ids(faces.face_stack(paths, 5, 4, False)) == [0, 1, 2, 3, 4]
  stack, used, skipped = faces.face_stack_info(paths[:3], 7, 4, False)
  # Cycling starts at the frame the shift points to (the middle one by default), as the bins do.
  assert stack.shape == (7, 4, 4, 3) and ids(stack) == [1, 2, 0, 1, 2, 0, 1]
  assert len(used) == 3 and skipped == []
  assert ids(faces.face_stack(paths[:3], 4, 4, False, shift=0.0)) == [0, 1, 2, 0]
  # Two utterances sharing a video's five frames (shifts 1/4 and 3/4 of a bin) take different frames.
  assert ids(faces.face_stack(paths, 2, 4, False, shift=0.25)) == [0, 3]
  assert ids(faces.face_stack(paths, 2, 4, False, shift=0.75)) == [1, 4]


def test_face_stack_skips_corrupt_frames(tmp_path):
  paths = _colour_frames(tmp_path, 3)
  bad = tmp_path / "0000001.png"
  bad.write_bytes(b"broken")
  stack, used, skipped = faces.face_stack_info(paths, 1, 4, False)
  assert int(stack[0, 0, 0, 0]) // 10 in (0, 2) and str(bad) not in used
  assert [p for p, _ in skipped] == [str(bad)]
  for p in paths:
    p.write_bytes(b"broken")
  with pytest.raises(faces.FaceError, match="all 3 face frames are unreadable"):
    faces.face_stack(paths, 2, 4, False)
  with pytest.raises(faces.FaceError, match="no face frames"):
    faces.face_stack([], 1, 4, False)


def _write_video(path, frames_bgr, fps=25.0):
  h, w = frames_bgr[0].shape[:2]
  writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"mp4v"), fps, (w, h))
  assert writer.isOpened()
  for f in frames_bgr:
    writer.write(f)
  writer.release()
  return path


def _bright_box(gray):
  """Independent stand-in detector: the bounding box of bright pixels."""
  ys, xs = np.nonzero(gray > 128)
  if not len(xs):
    return []
  return [(int(xs.min()), int(ys.min()), int(xs.max() - xs.min() + 1), int(ys.max() - ys.min() + 1))]


def test_video_sampling_and_largest_face_crop(tmp_path):
  frames = []
  for i in range(50):  # 2 s at 25 fps; a 40 px white square moving right, a small one fixed
    f = np.zeros((120, 160, 3), np.uint8)
    f[40:80, 20 + i:60 + i] = 255
    frames.append(f)
  path = _write_video(tmp_path / "v.mp4", frames)
  out = faces.video_faces(path, fps=5, size=16, grayscale=True, detector=_bright_box)
  assert len(out) == 10 and out[0].shape == (16, 16, 1)  # 2 s x 5 fps
  # The crop is centred on the square with a margin: bright middle, dark border.
  assert out[0][8, 8, 0] > 200 and out[0][0, 0, 0] < 60
  assert len(faces.video_faces(path, 2, 16, False, detector=_bright_box)) == 4
  assert len(faces.video_faces(path, 5, 16, False, max_frames=3, detector=_bright_box)) == 3
  assert faces.video_faces(path, 5, 16, False, detector=_bright_box)[0].shape == (16, 16, 3)
  # A face in the corner: the margin square is shifted into the frame, not padded or cut.
  corner = np.zeros((60, 80, 3), np.uint8)
  corner[:30, :30] = 255
  out = faces.video_faces(_write_video(tmp_path / "c.mp4", [corner] * 5), 25, 36, True,
                          detector=_bright_box)
  col = out[0][18, :, 0]  # the 36-px crop is frame[0:36, 0:36]: white 30 px, then black
  assert col[:28].min() > 200 and col[32:].max() < 60


def test_video_errors(tmp_path):
  dark = _write_video(tmp_path / "dark.mp4", [np.full((64, 64, 3), 30, np.uint8)] * 10)
  with pytest.raises(faces.FaceError, match="dark.mp4: no face found in any of the 10 frames"):
    faces.video_faces(dark, 25, 16, True, detector=_bright_box)
  (tmp_path / "junk.mp4").write_bytes(b"\x00\x01junk" * 100)
  with pytest.raises(faces.FaceError, match="junk.mp4: not a readable video"):
    faces.video_faces(tmp_path / "junk.mp4", 1, 16, True, detector=_bright_box)
  with pytest.raises(ValueError, match="fps"):
    faces.video_faces(dark, 0, 16, True, detector=_bright_box)
  if not hasattr(cv2, "CascadeClassifier"):
    with pytest.raises(ValueError, match="no Haar cascade face detector"):
      faces.video_faces(dark, 1, 16, True)


haar = pytest.mark.skipif(not hasattr(cv2, "CascadeClassifier"),
                          reason=f"OpenCV {cv2.__version__} has no Haar cascade detector")


@haar
def test_haar_finds_no_face_in_a_drawing(tmp_path):
  frames = []
  for _ in range(10):
    f = np.full((120, 120, 3), 200, np.uint8)
    cv2.circle(f, (60, 60), 30, (0, 0, 255), -1)
    frames.append(f)
  with pytest.raises(faces.FaceError, match="no face found"):
    faces.video_faces(_write_video(tmp_path / "drawing.mp4", frames), 5, 23, True)


@haar
def test_haar_on_a_real_voxceleb_face(shared_data, tmp_path):
  jpgs = sorted((shared_data / "voxceleb1-mini" / "faces").glob("*/*/*.jpg"))
  if not jpgs:
    pytest.skip("no VoxCeleb1 face frames in shared data")
  face = cv2.resize(cv2.imread(str(jpgs[0])), (160, 160))
  frame = cv2.copyMakeBorder(face, 40, 40, 60, 60, cv2.BORDER_CONSTANT, value=(90, 90, 90))
  path = _write_video(tmp_path / "face.mp4", [frame] * 25)  # 1 s at 25 fps
  out = faces.video_faces(path, fps=4, size=23, grayscale=False)
  assert len(out) == 4 and out[0].shape == (23, 23, 3)


def test_real_voxceleb_face_jpegs(shared_data):
  jpgs = sorted((shared_data / "voxceleb1-mini" / "faces").glob("*/*/*.jpg"))
  if not jpgs:
    pytest.skip("no VoxCeleb1 face frames in shared data")
  video = sorted(p for p in jpgs if p.parent == jpgs[0].parent)
  stack, used, skipped = faces.face_stack_info(video, 4, 23, True)
  assert stack.shape == (4, 23, 23, 1) and not skipped and len(used) == min(4, len(video))
  assert stack.std() > 5  # real image content, not a constant


def test_video_clip_picks_evenly_spaced_frames_of_a_gif_each_cropped_and_resized(tmp_path):
  """7 frames of 20x30 RGB in a GIF, 4 asked for at 10 px: frames round(linspace(0, 6, 4)) = 0, 2, 4, 6, each the
  centre 20x20 square resized as load_face does (computed here with PIL on the frames read back by PIL)."""
  from PIL import Image
  rng = np.random.default_rng(0)
  frames = [Image.fromarray(rng.integers(0, 255, (20, 30, 3), dtype=np.uint8)) for _ in range(7)]
  path = tmp_path / "clip.gif"
  frames[0].save(path, save_all=True, append_images=frames[1:], duration=50, loop=0)
  got = faces.video_clip(path, 4, 10, grayscale=False)
  assert got.shape == (4, 10, 10, 3) and got.dtype == np.uint8
  with Image.open(path) as img:
    decoded = []
    for i in range(img.n_frames):
      img.seek(i)
      decoded.append(img.convert("RGB"))
  for k, i in enumerate((0, 2, 4, 6)):
    want = decoded[i].crop((5, 0, 25, 20)).resize((10, 10), Image.Resampling.BICUBIC)
    np.testing.assert_array_equal(got[k], np.asarray(want))
  assert faces.video_clip(path, 2, 10, grayscale=True).shape == (2, 10, 10, 1)
  (tmp_path / "bad.mp4").write_bytes(b"nope")
  with pytest.raises(faces.FaceError, match="not a readable video"):
    faces.video_clip(tmp_path / "bad.mp4", 4, 10, grayscale=False)
