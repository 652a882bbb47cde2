"""`mmvae serve INDEX`: a local web page (and a JSON endpoint) over an index written by `mmvae index`.

Standard library only (http.server.ThreadingHTTPServer), bound to 127.0.0.1 unless --host says otherwise.

    GET  /                  the page: a text box, a file upload (WAV, image; video when Index.query takes one)
    POST /query             the page with the results: a grid of cards (thumbnail, audio player, score, label);
                            for a WAV on a run that can generate, the image the run decodes from the voice beside them
    GET|POST /api/query     the results as JSON, the very list `mmvae query --json` prints ({"error": ...} if bad)
    GET  /entry/image?id=ID&modality=M   PNG of an entry's first image frame (a GIF of a video, a point cloud seen
                            from the front), read from the prepared dataset the index was built from
    GET  /entry/audio?id=ID&modality=M   WAV of an audio entry's recording (under --audio-root, or the dataset's
                            raw/wav/ as `prep synthetic` leaves it), rewritten as 16-bit PCM on the fly

Entries are looked up by id (and modality) in the index's table: nothing from a request ever becomes a file path,
and a recording is served only from inside its root. Uploads are held in memory; a WAV or video is written for
the length of its query to a temporary folder inside the index folder (the system's temporary folder when the
index is read-only), removed right after. The server writes nothing else.
Bodies over --max-upload-mb are refused with HTTP 413, bad input with 400 and one line on the page.
"""

import base64
import email.parser
import email.policy
import html
import inspect
import io
import json
import pathlib
import sys
import tempfile
import threading
import urllib.parse
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import numpy as np

from mmvae import index as index_lib

MAX_K = 100
DRAIN_MAX = 64 << 20  # bytes of an oversized body read and dropped so a browser sees the 413 page, not a reset
CACHE = 4096  # thumbnails kept in memory
VIDEO_SUFFIXES = (".mp4", ".avi", ".mov", ".webm", ".mkv", ".gif")
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".webp", ".tif", ".tiff")
GENERATED_SCALE = 4


class HTTPError(Exception):
  """A request refused with `status` and a one-line message for the page."""

  def __init__(self, status: int, message: str):
    super().__init__(message)
    self.status = status


class App:
  """An open index and what the page needs of it: queries, entry thumbnails, recordings, generated images."""

  def __init__(self, index_path, max_upload_bytes: int = 20 << 20, k: int = 10, audio_root=None):
    self.index = index_lib.Index.open(index_path)
    self.path = pathlib.Path(index_path)
    self._stamp = self._stamp_now()
    self.max_upload_bytes, self.k = int(max_upload_bytes), int(k)
    self.audio_roots = [pathlib.Path(audio_root).resolve()] if audio_root else []
    if audio_root and not self.audio_roots[0].is_dir():
      raise FileNotFoundError(f"--audio-root {audio_root}: folder not found")
    self.lock = threading.Lock()  # the model, FAISS's thread setting and the dataset reader are not thread safe
    self._dataset, self._dataset_note, self._ids, self._cache = None, None, {}, {}
    self.takes_video = "video" in inspect.signature(index_lib.Index.query).parameters
    self._given_roots = list(self.audio_roots)
    self._read_specs()

  # --- what the index holds -------------------------------------------------------------------------------------

  def _read_specs(self) -> None:
    try:
      self.specs = {n: m for n, m in self.index._specs().items()  # pylint: disable=protected-access
                    if n in self.index.modalities}
    except ValueError:
      self.specs = {}  # an index without manifest.json: ids and vectors only, no thumbnails
    self.audio_roots = list(self._given_roots)
    dataset = (self.index.record.get("dataset") or {}).get("path")
    if dataset:
      raw = pathlib.Path(dataset) / "raw" / "wav"  # `prep synthetic` keeps the corpus it generated
      if raw.is_dir():
        self.audio_roots.append(raw.resolve())
    self._can_generate = None

  def _stamp_now(self):
    try:
      st = (self.path / "index.json").stat()
      return st.st_ino, st.st_mtime_ns, st.st_size
    except OSError:
      return None

  def refresh(self) -> None:
    """Reopens the index when `mmvae index` (or --add) swapped a new one in since; call under self.lock."""
    stamp = self._stamp_now()
    if stamp is None or stamp == self._stamp:
      return
    fresh = index_lib.Index.open(self.path)
    if fresh.record.get("run") == self.index.record.get("run"):
      fresh._model = self.index._model  # pylint: disable=protected-access  the same checkpoint: keep it loaded
    self.index, self._stamp, self._cache, self._ids = fresh, stamp, {}, {}
    self._dataset, self._dataset_note = None, None
    self._read_specs()

  def note_of_picture(self, r: dict) -> str | None:
    """Why a result has no stored picture to show (its dataset gone, an entry added by --add), or None."""
    dataset = self._open_dataset()
    if dataset is None:
      return f"no stored image: {self._dataset_note}"
    if r["split"] not in dataset.splits:
      return f"no stored image: split {r['split']!r} is not in the dataset"
    return None

  def kinds(self) -> dict:
    """{modality: its kind} ('' where the index has no manifest)."""
    return {m: getattr(self.specs.get(m), "kind", "") for m in self.index.modalities}

  def accepts(self) -> list[str]:
    """The upload kinds a query can be: 'wav', 'image', 'video', those the index has a modality for."""
    from mmvae.analysis import from_wav
    got = []
    if any(from_wav._from_wav(m) for m in self.specs.values()):  # pylint: disable=protected-access
      got.append("wav")
    if any(m.kind == "image" for m in self.specs.values()):
      got.append("image")
    if self.takes_video and any(m.kind == "video" for m in self.specs.values()):
      got.append("video")
    return got

  def has_text(self) -> bool:
    return any(m.kind == "tokens" for m in self.specs.values())

  def row_of(self, entry_id: str, modality: str) -> int:
    """The table row of entry `entry_id` of `modality`; HTTPError 404 if the index has none."""
    t = self.index.table
    rows = np.flatnonzero((t["id"] == str(entry_id)) & (t["modality"] == str(modality)))
    if not len(rows):
      raise HTTPError(404, f"no entry {entry_id!r} of modality {modality!r} in the index")
    return int(rows[0])

  # --- queries --------------------------------------------------------------------------------------------------

  def query(self, text: str | None, upload: tuple | None, k: int, modality: str | None, entry_id: str | None = None,
            of: str | None = None) -> tuple[list, bytes | None]:
    """(results as Index.query gives them, PNG generated from an uploaded voice or None); HTTPError 400 if bad.

    One query: a text, an upload (filename, content type, bytes) or the id of a stored entry (of modality `of`)."""
    given = [n for n, v in (("a text", (text or "").strip()), ("a file", upload), ("an entry id", entry_id)) if v]
    if not given:
      raise HTTPError(400, "empty query: type a text or choose a file (WAV" +
                      ", image" * ("image" in self.accepts()) + ")")
    if len(given) > 1:
      raise HTTPError(400, f"give one query: {' and '.join(given)} were given")
    with self.lock:
      self.refresh()
      try:
        if entry_id:
          return self.index.query(id=entry_id, of=of or None, k=k, modality=modality), None
        if upload is None:
          return self.index.query(text=text, k=k, modality=modality), None
        return self._query_file(upload, k, modality)
      except (ValueError, FileNotFoundError, KeyError) as e:
        raise HTTPError(400, _clean(_error_text(e))) from None

  def _query_file(self, upload, k, modality):
    name, content_type, content = upload
    shown = repr(name or "the upload")
    if not content:
      raise HTTPError(400, f"the uploaded file {shown} is empty")
    kind = upload_kind(name, content_type, content)
    if kind is None:
      raise HTTPError(400, f"the uploaded file {shown} is not a WAV file, an image or a video")
    if kind == "video" and not self.takes_video:
      raise HTTPError(400, f"the uploaded file {shown} is a video: this mmvae's index answers WAV, image and text "
                      "queries")
    if kind == "image":
      try:
        return self.index.query(image=bytes(content), k=k, modality=modality), None
      except ValueError as e:
        raise HTTPError(400, _clean(_error_text(e)).replace("<bytes>", f"the uploaded file {shown}")) from None
    try:  # inside the index folder, so the server writes nowhere else; the system's when it is read-only
      holder = tempfile.TemporaryDirectory(prefix=".upload-", dir=self.path)
    except OSError:
      holder = tempfile.TemporaryDirectory(prefix="mmvae-serve-")
    with holder as folder:
      path = pathlib.Path(folder) / ("upload.wav" if kind == "wav" else "upload" + _video_suffix(name))
      path.write_bytes(content)
      try:
        results = self.index.query(k=k, modality=modality, **{kind: path})
        generated = self._generate(path) if kind == "wav" else None
      except (ValueError, FileNotFoundError) as e:
        raise HTTPError(400, _clean(_error_text(e)).replace(str(path), f"the uploaded file {shown}")) from None
    return results, generated

  def can_generate(self) -> bool:
    """Whether the index's run decodes an image from a voice (a generative kind with audio and image modalities)."""
    if self._can_generate is None:
      from mmvae.analysis import from_wav
      try:
        from_wav.source_and_target(self.specs, self.path)
        model, _ = self.index._load()  # pylint: disable=protected-access
        self._can_generate = bool(getattr(model, "can_generate", False))
      except ValueError:
        self._can_generate = False
    return self._can_generate

  def _generate(self, wav) -> bytes | None:
    """PNG of the image the run decodes from the voice in `wav`, as `mmvae generate face` makes it."""
    if not self.can_generate():
      return None
    from mmvae.analysis import from_wav
    model, config = self.index._load()  # pylint: disable=protected-access
    source, target = from_wav.source_and_target(self.specs, self.path)
    x = from_wav.voice_features(wav, config.data, self.index.manifest)[None]
    mu, _ = model.encode(source, x)
    image = np.clip(np.asarray(self.specs[target].kind_module.to_data(model.decode(mu)[target])[0], np.float32), 0, 1)
    pixels = (image * 255 + 0.5).astype(np.uint8)
    pixels = np.repeat(np.repeat(pixels, GENERATED_SCALE, 0), GENERATED_SCALE, 1)
    return _png(pixels)

  # --- stored entries -------------------------------------------------------------------------------------------

  def _open_dataset(self):
    """The prepared dataset the index was built from, or None with the reason in self._dataset_note."""
    if self._dataset is None and self._dataset_note is None:
      from mmvae import data
      info = self.index.record.get("dataset") or {}
      try:
        if not info.get("path"):
          raise ValueError("the index names no dataset")
        dataset = data.Dataset(info["path"])
        if info.get("fingerprint") and dataset.manifest.get("fingerprint") != info["fingerprint"]:
          raise ValueError(f"the dataset at {info['path']} changed since the index was built")
        self._dataset = dataset
      except (ValueError, FileNotFoundError, OSError) as e:
        self._dataset_note = _error_text(e)
    return self._dataset

  def stored(self, row: int) -> np.ndarray:
    """The dataset's stored array of table row `row` (its modality, as prep wrote it); HTTPError 404 if gone."""
    t = self.index.table
    entry_id, modality, split = str(t["id"][row]), str(t["modality"][row]), str(t["split"][row])
    dataset = self._open_dataset()
    if dataset is None:
      raise HTTPError(404, f"no stored {modality} for {entry_id!r}: {self._dataset_note}")
    if split not in self._ids:
      self._ids[split] = np.asarray(dataset.column(split, "id")).astype(str)
    ids = self._ids[split]
    pos = int(np.searchsorted(ids, entry_id))
    if pos >= len(ids) or ids[pos] != entry_id:
      raise HTTPError(404, f"{entry_id!r} is not in split {split!r} of the dataset {dataset.data_dir}")
    return np.asarray(dataset.take(split, np.array([pos]))[modality][0])

  def thumbnail(self, entry_id: str, modality: str) -> tuple[bytes, str]:
    """(PNG or GIF bytes, content type) of an entry of an image, video or point-cloud modality."""
    with self.lock:
      self.refresh()
    row = self.row_of(entry_id, modality)
    kind = self.kinds().get(modality)
    if kind not in THUMBNAILS:
      raise HTTPError(404, f"modality {modality!r} ({kind or 'unknown kind'}) has no image to show")
    if row not in self._cache:
      with self.lock:
        stored = self.stored(row)
      if len(self._cache) >= CACHE:
        self._cache.pop(next(iter(self._cache)))
      self._cache[row] = THUMBNAILS[kind](stored)
    return self._cache[row]

  def recording(self, row: int) -> pathlib.Path | None:
    """The WAV file of table row `row` inside one of the audio roots, or None."""
    entry_id = str(self.index.table["id"][row])
    for root in self.audio_roots:
      for candidate in (root / entry_id, root / pathlib.PurePath(entry_id).name):
        try:
          found = candidate.resolve()
        except (OSError, RuntimeError):
          continue
        if found.is_relative_to(root) and found.is_file():
          return found
    return None

  def is_audio(self, modality: str) -> bool:
    from mmvae.analysis import from_wav
    m = self.specs.get(modality)
    return m is not None and from_wav._from_wav(m)  # pylint: disable=protected-access

  def audio(self, entry_id: str, modality: str) -> bytes:
    """The recording of an audio entry as a 16-bit PCM WAV written in memory."""
    import soundfile
    row = self.row_of(entry_id, modality)
    if not self.is_audio(modality):
      raise HTTPError(404, f"modality {modality!r} is not audio")
    path = self.recording(row)
    if path is None:
      raise HTTPError(404, f"no recording of {entry_id!r}: the index stores audio features only (give "
                      "--audio-root, the folder of the corpus's WAV files)")
    try:
      wave, rate = soundfile.read(path, dtype="float32", always_2d=True)
    except (soundfile.SoundFileError, RuntimeError, ValueError) as e:
      raise HTTPError(404, f"the recording of {entry_id!r} is not readable ({e})") from None
    out = io.BytesIO()
    soundfile.write(out, np.clip(wave, -1, 1), rate, subtype="PCM_16", format="WAV")
    return out.getvalue()


def _error_text(e: Exception) -> str:
  return str(e.args[0]) if isinstance(e, KeyError) and e.args else str(e)


def _clean(message: str) -> str:
  """A query error as the page says it: the command line's flag names dropped, one line."""
  for flag in ("--text ", "--wav ", "--image ", "--video "):
    if message.startswith(flag):
      message = message[len(flag):]
  return " ".join(message.split())


def _video_suffix(name: str) -> str:
  suffix = pathlib.PurePath(name or "").suffix.lower()
  return suffix if suffix in VIDEO_SUFFIXES else ".mp4"


def upload_kind(name: str, content_type: str, content: bytes) -> str | None:
  """'wav', 'image' or 'video' of an uploaded file by its name, type and first bytes; None if none of them."""
  suffix = pathlib.PurePath(name or "").suffix.lower()
  content_type = (content_type or "").lower()
  if (content[:4] == b"RIFF" and content[8:12] == b"WAVE") or suffix == ".wav" or content_type.startswith("audio/"):
    return "wav"
  if suffix in VIDEO_SUFFIXES or content_type.startswith("video/"):
    return "video"
  if suffix in IMAGE_SUFFIXES or content_type.startswith("image/"):
    return "image"
  from PIL import Image
  try:
    with Image.open(io.BytesIO(content)) as img:
      img.verify()
    return "image"
  except Exception:  # noqa: BLE001  PIL raises many kinds for what it cannot read
    return None


# --- rendering stored arrays ---------------------------------------------------------------------------------------

def _png(pixels) -> bytes:
  from PIL import Image
  pixels = np.asarray(pixels, np.uint8)
  out = io.BytesIO()
  Image.fromarray(pixels[..., 0] if pixels.ndim == 3 and pixels.shape[-1] == 1 else pixels).save(out, "PNG")
  return out.getvalue()


def _uint8(x) -> np.ndarray:
  x = np.asarray(x)
  return x if x.dtype == np.uint8 else (np.clip(x.astype(np.float32), 0, 1) * 255 + 0.5).astype(np.uint8)


def image_png(stored_KxSxSxC) -> tuple[bytes, str]:
  """The first stored frame of an image entry, as it is, as a PNG."""
  x = np.asarray(stored_KxSxSxC)
  return _png(_uint8(x[0] if x.ndim == 4 else x)), "image/png"


def video_gif(stored_TxSxSxC) -> tuple[bytes, str]:
  """A video entry's frames as a looping GIF (10 frames a second)."""
  from PIL import Image
  frames = [_uint8(f) for f in np.asarray(stored_TxSxSxC)]
  images = [Image.fromarray(f[..., 0] if f.shape[-1] == 1 else f) for f in frames]
  out = io.BytesIO()
  images[0].save(out, "GIF", save_all=True, append_images=images[1:], duration=100, loop=0)
  return out.getvalue(), "image/gif"


def points_png(stored_Px3, size: int = 64) -> tuple[bytes, str]:
  """A point cloud seen along z: each point's (x, y) a white pixel on black, y up."""
  p = np.asarray(stored_Px3, np.float32)[:, :2]
  lo, hi = p.min(0), p.max(0)
  span = float(np.max(hi - lo)) or 1.0
  ij = np.clip(((p - lo) / span * (size - 1)).round().astype(int), 0, size - 1)
  canvas = np.zeros((size, size), np.uint8)
  canvas[size - 1 - ij[:, 1], ij[:, 0]] = 255
  return _png(canvas), "image/png"


THUMBNAILS = {"image": image_png, "video": video_gif, "points": points_png}


# --- the page ------------------------------------------------------------------------------------------------------

_STYLE = """
body{font-family:system-ui,sans-serif;margin:1.5em;max-width:70em}
form{display:flex;gap:.6em;flex-wrap:wrap;align-items:center;margin-bottom:1em}
input[type=text]{width:24em;padding:.3em}
.error{color:#a00;font-weight:bold}
.grid{display:grid;grid-template-columns:repeat(auto-fill,minmax(11em,1fr));gap:.8em}
.card{border:1px solid #ccc;border-radius:6px;padding:.5em;font-size:.85em;overflow-wrap:anywhere}
.card img,.generated img{width:96px;height:96px;image-rendering:pixelated;background:#eee;display:block}
.card audio{width:100%}
.note{color:#666;font-style:italic}
.generated{border:2px solid #369;border-radius:6px;padding:.5em;margin-bottom:1em;display:inline-block}
"""


def _e(x) -> str:
  return html.escape(str(x), quote=True)


def page(app: App, text: str = "", k: int | None = None, modality: str = "", results=None, generated=None,
         error: str | None = None, source: str | None = None) -> str:
  """The whole HTML page: the form, then an error line, the generated image and the results grid."""
  k = app.k if k is None else k
  accepts = app.accepts()
  accept_attr = ",".join({"wav": ".wav,audio/wav,audio/x-wav", "image": "image/*",
                          "video": "video/*," + ",".join(VIDEO_SUFFIXES)}[a] for a in accepts)
  kinds = app.kinds()
  options = "".join(f'<option value="{_e(m)}"{" selected" if m == modality else ""}>{_e(m)}</option>'
                    for m in app.index.modalities)
  parts = [
      "<!doctype html><html><head><meta charset='utf-8'><title>mmvae serve</title>",
      f"<style>{_STYLE}</style></head><body>",
      f"<h1>mmvae serve</h1><p>{_e(app.path)}: {len(app.index)} entries of "
      + ", ".join(f"{_e(m)} ({_e(kinds[m] or '?')}, {app.index.record['modalities'][m]['count']})"
                  for m in app.index.modalities) + "</p>",
      "<form id='query' method='post' action='/query' enctype='multipart/form-data'>",
      f"<input type='text' name='text' id='text' value='{_e(text)}' placeholder='"
      + ("a sentence" if app.has_text() else "this index has no text modality") + "'>",
      f"<input type='file' name='file' id='file' accept='{_e(accept_attr)}'>" if accepts else "",
      f"<label>k <input type='number' name='k' id='k' min='1' max='{MAX_K}' value='{int(k)}'></label>",
      f"<label>search <select name='modality' id='modality'><option value=''>every other modality</option>"
      f"{options}</select></label>",
      "<button type='submit' id='submit'>Search</button></form>",
      "<script>document.getElementById('file')?.addEventListener('change',e=>{if(e.target.value)"
      "document.getElementById('text').value=''})</script>",  # a chosen file replaces the text shown
      f"<p class='note'>Upload: {_e(', '.join(accepts) or 'nothing (no raw-input modality)')}, at most "
      f"{app.max_upload_bytes / (1 << 20):.3g} MB.</p>",
  ]
  if error:
    parts.append(f"<p class='error' id='error' role='alert'>{_e(error)}</p>")
  if generated:
    parts.append("<div class='generated' id='generated'><img alt='generated' src='data:image/png;base64,"
                 f"{base64.b64encode(generated).decode()}'><div>generated from the voice in "
                 f"the {_e(source)}</div></div>")
  if results is not None:
    what = f"the text {text!r}" if source is None else f"the {source}"
    parts.append(f"<h2>{len(results)} nearest to {_e(what)}</h2><div class='grid' id='results'>")
    parts.extend(_card(app, r, kinds) for r in results)
    parts.append("</div>")
  parts.append("</body></html>")
  return "\n".join(parts)


def _card(app: App, r: dict, kinds: dict) -> str:
  q = urllib.parse.urlencode({"id": r["id"], "modality": r["modality"]})
  kind = kinds.get(r["modality"], "")
  note = app.note_of_picture(r) if kind in THUMBNAILS else None
  if note:
    media = f"<p class='note'>{_e(note)}</p>"
  elif kind in THUMBNAILS:
    media = f"<img src='/entry/image?{_e(q)}' alt='{_e(r['id'])}'>"
  elif app.is_audio(r["modality"]):
    media = (f"<audio controls preload='none' src='/entry/audio?{_e(q)}'></audio>"
             if app.recording(r["row"]) is not None else
             "<p class='note'>no raw audio: the index stores audio features only</p>")
  else:
    media = ""
  label = f"{r['label']}" + (f" ({r['identity']})" if r.get("identity") and r["identity"] != str(r["label"]) else "")
  text = f"<div>&ldquo;{_e(r['text'])}&rdquo;</div>" if r.get("text") else ""
  like = urllib.parse.urlencode({"id": r["id"], "of": r["modality"]})
  return (f"<div class='card' data-id='{_e(r['id'])}' data-modality='{_e(r['modality'])}' "
          f"data-score='{r['score']:.6f}'>{media}<div><b>#{r['rank']}</b> score {r['score']:.4f}</div>"
          f"<div>{_e(r['modality'])} &middot; label {_e(label)}</div>{text}<div class='note'>{_e(r['id'])} "
          f"({_e(r['split'])}) <a href='/query?{_e(like)}'>nearest</a></div></div>")


# --- HTTP ----------------------------------------------------------------------------------------------------------

class Handler(BaseHTTPRequestHandler):
  """Routes of the page; every refusal is a one-line message, never a traceback."""

  server_version = "mmvae-serve"
  protocol_version = "HTTP/1.1"

  @property
  def app(self) -> App:
    return self.server.app

  def log_message(self, format, *args):  # noqa: A002  pylint: disable=redefined-builtin
    del format, args  # quiet: the command line shows errors only

  def do_GET(self):  # noqa: N802
    self._handle("GET")

  def do_POST(self):  # noqa: N802
    self._handle("POST")

  def _handle(self, method: str) -> None:
    url = urllib.parse.urlsplit(self.path)
    route = url.path
    api = route == "/api/query"
    try:
      if method == "GET" and route == "/":
        self._send(200, page(self.app).encode(), "text/html; charset=utf-8")
      elif route in ("/query", "/api/query"):
        self._query(api, urllib.parse.parse_qs(url.query) if method == "GET" else None)
      elif method == "GET" and route == "/entry/image":
        params = _params(url.query)
        body, content_type = self.app.thumbnail(params.get("id", ""), params.get("modality", ""))
        self._send(200, body, content_type, cache=True)
      elif method == "GET" and route == "/entry/audio":
        params = _params(url.query)
        self._send(200, self.app.audio(params.get("id", ""), params.get("modality", "")), "audio/wav", cache=True)
      else:
        self._drop_body()
        raise HTTPError(404, f"{route} is not a page of mmvae serve")
    except HTTPError as e:
      self._refuse(e.status, str(e), api or route.startswith("/entry/"))
    except Exception as e:  # noqa: BLE001  a bug or a broken run: one line on the page and the console
      line = f"{type(e).__name__}: {' '.join(str(e).split())}"
      print(f"mmvae serve: error: {line}", file=sys.stderr, flush=True)
      self._refuse(500, f"internal error ({line})", api or route.startswith("/entry/"))

  def _query(self, api: bool, get_params) -> None:
    if get_params is not None:
      fields = {k: (None, "", v[-1].encode()) for k, v in get_params.items()}
    else:
      fields = self._form()
    value = lambda name: fields[name][2].decode("utf-8", "replace") if name in fields else ""  # noqa: E731
    text = value("text")
    try:
      k = int(value("k") or self.app.k)
    except ValueError:
      raise HTTPError(400, f"k {value('k')!r}: give a whole number of results") from None
    if not 1 <= k <= MAX_K:
      raise HTTPError(400, f"k {k}: give a number of results from 1 to {MAX_K}")
    modality = value("modality") or None
    upload = fields.get("file")
    if upload is not None and not upload[0] and not upload[2]:
      upload = None  # the form's file field with no file chosen
    try:
      results, generated = self.app.query(text, upload, k, modality, value("id") or None, value("of") or None)
    except HTTPError as e:
      if api:
        raise
      body = page(self.app, text, k, modality or "", error=str(e)).encode()
      self._send(e.status, body, "text/html; charset=utf-8")
      return
    if api:
      self._send(200, json.dumps(results, indent=1).encode(), "application/json")
      return
    name = (f"file {upload[0] or 'upload'!r}" if upload is not None else
            f"entry {value('id')!r}" + (f" of {value('of')}" if value("of") else "") if value("id") else None)
    body = page(self.app, text if upload is None else "", k, modality or "", results, generated,
                source=name).encode()
    self._send(200, body, "text/html; charset=utf-8")

  def _form(self) -> dict:
    """{field: (filename or None, content type, bytes)} of a multipart or urlencoded body within the size limit."""
    length = self.headers.get("Content-Length")
    if length is None:
      raise HTTPError(411, "a query needs a Content-Length")
    try:
      length = int(length)
    except ValueError:
      raise HTTPError(400, f"Content-Length {length!r} is not a number") from None
    limit = self.app.max_upload_bytes
    if length > limit:
      self._drop_body(length)
      raise HTTPError(413, f"the upload is {length / (1 << 20):.3g} MB, over the limit of {limit / (1 << 20):.3g} MB "
                      "(mmvae serve --max-upload-mb)")
    body = self.rfile.read(length)
    content_type = self.headers.get("Content-Type", "")
    if content_type.startswith("application/x-www-form-urlencoded"):
      return {k: (None, "", v[-1].encode()) for k, v in urllib.parse.parse_qs(body.decode("utf-8", "replace")).items()}
    if not content_type.startswith("multipart/form-data"):
      raise HTTPError(400, f"a query is a form (multipart/form-data or urlencoded), not {content_type or 'nothing'}")
    message = email.parser.BytesParser(policy=email.policy.HTTP).parsebytes(
        b"Content-Type: " + content_type.encode("latin-1") + b"\r\nMIME-Version: 1.0\r\n\r\n" + body)
    if not message.is_multipart():
      raise HTTPError(400, "the form's body is not readable multipart data")
    fields = {}
    for part in message.iter_parts():
      name = part.get_param("name", header="content-disposition")
      if name:
        fields[name] = (part.get_filename(), part.get_content_type(), part.get_payload(decode=True) or b"")
    return fields

  def _drop_body(self, length: int | None = None) -> None:
    """Reads and drops a request body (up to DRAIN_MAX; above it the connection is closed unread)."""
    if length is None:
      try:
        length = int(self.headers.get("Content-Length") or 0)
      except ValueError:
        length = 0
    if length > DRAIN_MAX:
      self.close_connection = True
      return
    while length > 0:
      chunk = self.rfile.read(min(length, 1 << 20))
      if not chunk:
        break
      length -= len(chunk)

  def _refuse(self, status: int, message: str, plain: bool) -> None:
    if self.path.startswith("/api/"):
      self._send(status, json.dumps({"error": message}).encode(), "application/json")
    elif plain:
      self._send(status, (message + "\n").encode(), "text/plain; charset=utf-8")
    else:
      self._send(status, page(self.app, error=message).encode(), "text/html; charset=utf-8")

  def _send(self, status: int, body: bytes, content_type: str, cache: bool = False) -> None:
    self.send_response(status)
    self.send_header("Content-Type", content_type)
    self.send_header("Content-Length", str(len(body)))
    self.send_header("X-Content-Type-Options", "nosniff")
    self.send_header("Cache-Control", "max-age=3600" if cache else "no-store")
    if self.close_connection or status == 413:
      self.send_header("Connection", "close")
      self.close_connection = True
    self.end_headers()
    self.wfile.write(body)


def _params(query: str) -> dict:
  return {k: v[-1] for k, v in urllib.parse.parse_qs(query, keep_blank_values=True).items()}


def make_server(index_path, host: str = "127.0.0.1", port: int = 8080, max_upload_mb: float = 20, k: int = 10,
                audio_root=None) -> ThreadingHTTPServer:
  """A server over the index at INDEX_PATH, bound (port 0: any free port) but not yet serving; `.app` is its App."""
  if max_upload_mb <= 0:
    raise ValueError(f"--max-upload-mb {max_upload_mb}: give a positive size")
  if not 1 <= k <= MAX_K:
    raise ValueError(f"--k {k}: give a number of results from 1 to {MAX_K}")
  app = App(index_path, int(max_upload_mb * (1 << 20)), k, audio_root)
  try:
    server = ThreadingHTTPServer((host, port), Handler)
  except OSError as e:
    raise ValueError(f"--host {host} --port {port}: cannot listen there ({e.strerror or e})") from None
  server.daemon_threads = True
  server.app = app
  return server


def run(index_path, host: str = "127.0.0.1", port: int = 8080, max_upload_mb: float = 20, k: int = 10,
        audio_root=None) -> None:
  """`mmvae serve`: serves the page until Ctrl-C."""
  server = make_server(index_path, host, port, max_upload_mb, k, audio_root)
  app = server.app
  bound_host, bound_port = server.server_address[:2]
  print(f"mmvae serve: {app.path} ({len(app.index)} entries: {', '.join(app.index.modalities)}) at "
        f"http://{bound_host}:{bound_port}/ ; Ctrl-C stops", flush=True)
  if host not in ("127.0.0.1", "localhost", "::1"):
    print(f"mmvae serve: warning: listening on {host}: other machines can reach this page", flush=True)
  try:
    server.serve_forever()
  except KeyboardInterrupt:
    print("mmvae serve: stopped", flush=True)
  finally:
    server.server_close()
