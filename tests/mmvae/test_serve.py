"""`mmvae serve`: the page and /api/query over HTTP (urllib, a server on a free port in a thread), and in headless
Chromium driven by Selenium. Results are checked against mmvae.Index opened on its own, thumbnails against the
prepared dataset's arrays, recordings against the WAV files read with soundfile."""

import html
import http.client
import io
import json
import pathlib
import re
import shutil
import tempfile
import threading
import urllib.error
import urllib.parse
import urllib.request
import uuid

import numpy as np
import pytest

import mmvae
from mmvae import cli, data, serve
from mmvae import index as index_lib


def _start(index_path, **kwargs):
  server = serve.make_server(index_path, port=0, **kwargs)
  threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True).start()
  return server, f"http://127.0.0.1:{server.server_address[1]}"


@pytest.fixture
def started():
  servers = []

  def start(index_path, **kwargs):
    server, base = _start(index_path, **kwargs)
    servers.append(server)
    return base

  yield start
  for server in servers:
    server.shutdown()
    server.server_close()


def _get(url):
  """(status, headers, body) of a GET, errors included."""
  try:
    with urllib.request.urlopen(url, timeout=60) as r:
      return r.status, r.headers, r.read()
  except urllib.error.HTTPError as e:
    return e.code, e.headers, e.read()


def _post(url, fields=(), files=()):
  """(status, body) of a multipart/form-data POST: fields (name, value), files (name, filename, type, bytes)."""
  boundary = uuid.uuid4().hex
  parts = [f"--{boundary}\r\nContent-Disposition: form-data; name=\"{n}\"\r\n\r\n{v}\r\n".encode()
           for n, v in fields]
  parts += [f"--{boundary}\r\nContent-Disposition: form-data; name=\"{n}\"; filename=\"{f}\"\r\n"
            f"Content-Type: {t}\r\n\r\n".encode() + body + b"\r\n" for n, f, t, body in files]
  body = b"".join(parts) + f"--{boundary}--\r\n".encode()
  request = urllib.request.Request(url, data=body, method="POST",
                                    headers={"Content-Type": f"multipart/form-data; boundary={boundary}"})
  try:
    with urllib.request.urlopen(request, timeout=120) as r:
      return r.status, r.read()
  except urllib.error.HTTPError as e:
    return e.code, e.read()


def _error_line(page: bytes) -> str:
  found = re.search(rb"<p class='error' id='error' role='alert'>(.*?)</p>", page)
  assert found, page[-800:]
  return html.unescape(found.group(1).decode())


def _card_ids(page: bytes) -> list[str]:
  return [html.unescape(i.decode()) for i in re.findall(rb"<div class='card' data-id='([^']*)'", page)]


# --- fast: an index of random vectors over the synthetic corpus's entries (no run behind it) ------------------------

@pytest.fixture(scope="module")
def vector_index(synthetic_dataset, tmp_path_factory):
  ds = data.Dataset(synthetic_dataset)
  rng = np.random.default_rng(0)
  vectors, tables = {}, {}
  for m in ("audio", "face"):
    rows = [(s, i, l) for s in ("train", "test") for i, l in zip(ds.arrays(s)["id"], ds.arrays(s)["label"])]
    vectors[m] = rng.normal(size=(len(rows), 8)).astype(np.float32)
    tables[m] = {"id": np.array([r[1] for r in rows]), "label": np.array([r[2] for r in rows]),
                 "split": np.array([r[0] for r in rows])}
  out = tmp_path_factory.mktemp("serve") / "INDEX"
  index_lib.write(out, vectors, tables, manifest=ds.manifest,
                  info={"dataset": {"path": str(synthetic_dataset), "fingerprint": ds.manifest["fingerprint"]}})
  return out


def test_id_queries_are_the_cosine_ranking_and_a_rebuilt_index_is_picked_up(vector_index, started, tmp_path):
  copy = tmp_path / "INDEX"
  shutil.copytree(vector_index, copy)
  base = started(copy)
  index = mmvae.Index.open(copy)
  stored = {m: np.array([index.indexes[m].reconstruct(i) for i in range(r["count"])], np.float64)
            for m, r in index.record["modalities"].items()}
  ids = {m: index.table["id"][r["offset"]:r["offset"] + r["count"]] for m, r in index.record["modalities"].items()}
  for row in (0, 17, 60):
    entry = str(ids["audio"][row])
    status, _, body = _get(f"{base}/api/query?" + urllib.parse.urlencode({"id": entry, "of": "audio", "k": 6}))
    assert status == 200
    got = json.loads(body)
    q = stored["audio"][row]
    cos = stored["face"] @ q / (np.linalg.norm(stored["face"], axis=1) * np.linalg.norm(q))
    best = np.argsort(-cos, kind="stable")[:6]
    assert [r["id"] for r in got] == [str(ids["face"][i]) for i in best]
    np.testing.assert_allclose([r["score"] for r in got], cos[best], atol=1e-5)
    assert all(set(index_lib.RESULT_KEYS) <= set(r) for r in got)
    # The page: the same entries in order, each card linking to its own neighbours.
    status, _, page = _get(f"{base}/query?" + urllib.parse.urlencode({"id": entry, "of": "audio", "k": 6}))
    assert status == 200 and _card_ids(page) == [r["id"] for r in got]
    assert page.count(b">nearest</a>") == 6
  # An index rebuilt in place (as `mmvae index` or --add swap one in) is reopened by the running server.
  face_ids = np.array([f"new{i}" for i in range(5)])
  index_lib.write(copy, {"face": np.eye(5, 8, dtype=np.float32)}, {"face": {"id": face_ids, "split": ["x"] * 5}})
  status, _, body = _get(f"{base}/api/query?" + urllib.parse.urlencode({"id": "new3", "k": 2, "modality": "face"}))
  assert status == 200 and [r["id"] for r in json.loads(body)][0] == "new3"


def test_thumbnails_are_the_datasets_first_frames_looked_up_by_id_only(vector_index, synthetic_dataset, started):
  from PIL import Image
  base = started(vector_index)
  ds = data.Dataset(synthetic_dataset)
  test = ds.arrays("test")
  for i in (0, 5, 15):
    status, headers, body = _get(f"{base}/entry/image?" + urllib.parse.urlencode({"id": test["id"][i],
                                                                                  "modality": "face"}))
    assert status == 200 and headers["Content-Type"] == "image/png"
    np.testing.assert_array_equal(np.asarray(Image.open(io.BytesIO(body))), test["face"][i, 0])
  # Unknown ids, a modality with no picture, and traversal attempts: 404, nothing read from disk.
  secret = (vector_index / "index.json").read_text()
  for query in ({"id": "nope", "modality": "face"}, {"id": str(test["id"][0]), "modality": "audio"},
                {"id": "../index.json", "modality": "face"}, {"id": "../../../../etc/passwd", "modality": "face"},
                {"id": str(vector_index / "index.json"), "modality": "face"}, {}):
    status, _, body = _get(f"{base}/entry/image?" + urllib.parse.urlencode(query))
    assert status == 404 and b"mmvae-index" not in body and b"root:" not in body, (query, body)
  conn = http.client.HTTPConnection("127.0.0.1", int(base.rsplit(":", 1)[1]), timeout=30)
  for raw in ("/../index.json", "/entry/../../index.json", "/%2e%2e/%2e%2e/etc/passwd", "/entry/image/../../x",
              "//etc/passwd", "/index.json", "/manifest.json"):
    conn.request("GET", raw)
    r = conn.getresponse()
    body = r.read()
    assert r.status == 404 and secret.encode()[:40] not in body and b"root:" not in body, (raw, r.status)
  conn.close()


def test_recordings_are_the_corpus_wavs_and_missing_ones_are_said(vector_index, synthetic_dataset, started, tmp_path):
  import soundfile
  base = started(vector_index)
  entry = str(data.Dataset(synthetic_dataset).arrays("test")["id"][3])  # id90001/<video>/0000N.wav
  status, headers, body = _get(f"{base}/entry/audio?" + urllib.parse.urlencode({"id": entry, "modality": "audio"}))
  assert status == 200 and headers["Content-Type"] == "audio/wav"
  got, rate = soundfile.read(io.BytesIO(body), dtype="float64")
  want, want_rate = soundfile.read(synthetic_dataset / "raw" / "wav" / entry, dtype="float64")
  assert rate == want_rate and got.shape == want.shape
  np.testing.assert_allclose(got, want, atol=1.5 / 32768)  # 16-bit PCM
  # The page's audio card names the recording; an index whose dataset has no raw audio says so instead.
  copy = tmp_path / "INDEX"
  shutil.copytree(vector_index, copy)
  record = json.loads((copy / "index.json").read_text())
  record["dataset"] = {"path": str(tmp_path / "gone")}
  (copy / "index.json").write_text(json.dumps(record))
  app = serve.App(copy)
  result = mmvae.Index.open(copy).query(id=entry, of="audio", modality="audio", k=1)
  card = serve.page(app, results=result)
  assert "no raw audio" in card and "<audio" not in card
  card = serve.page(serve.App(vector_index), results=result)
  assert "<audio controls" in card and "no raw audio" not in card
  other = started(copy)
  status, _, body = _get(f"{other}/entry/image?" + urllib.parse.urlencode({"id": entry, "modality": "face"}))
  assert status == 404 and b"gone" in body


def test_oversized_empty_and_unreadable_uploads_are_refused_with_a_message(vector_index, started):
  base = started(vector_index, max_upload_mb=0.01)
  status, body = _post(f"{base}/query", [("text", "")], [("file", "big.wav", "audio/wav", b"\0" * 20_000)])
  assert status == 413 and "over the limit of 0.01 MB" in _error_line(body) and b"Traceback" not in body
  status, body = _post(f"{base}/api/query", [], [("file", "big.wav", "audio/wav", b"\0" * 20_000)])
  assert status == 413 and "over the limit" in json.loads(body)["error"]
  status, body = _post(f"{base}/query", [("text", "   "), ("k", "5")], [("file", "", "application/octet-stream", b"")])
  assert status == 400 and _error_line(body).startswith("empty query: type a text or choose a file")
  status, body = _post(f"{base}/query", [], [("file", "notes.bin", "application/octet-stream", b"\x01\x02junk")])
  assert status == 400 and "is not a WAV file, an image or a video" in _error_line(body)
  status, body = _post(f"{base}/query", [("k", "many")], [("file", "x.wav", "audio/wav", b"RIFF")])
  assert status == 400 and "k 'many'" in _error_line(body)
  # A text on an index with no text modality: the library's one line, on the page and from the API.
  status, body = _post(f"{base}/query", [("text", "a face")])
  assert status == 400 and "has no text (tokens) modality" in _error_line(body)
  status, _, body = _get(f"{base}/api/query?text=a+face")
  assert status == 400 and "has no text (tokens) modality" in json.loads(body)["error"]


def test_missing_index_is_one_line_and_a_nonzero_exit(tmp_path, capsys):
  assert cli.main(["serve", str(tmp_path / "nothing"), "--port", "0"]) == 2
  err = capsys.readouterr().err
  assert err.count("\n") == 1 and err.startswith("mmvae serve: error: ") and "is not an mmvae index" in err


def test_default_binds_localhost_only(vector_index):
  server = serve.make_server(vector_index, port=0)
  try:
    assert server.server_address[0] == "127.0.0.1"
  finally:
    server.server_close()


# --- a real (tiny) trained run with audio, image and text: avdigits:tiny on 30 FSDD recordings -----------------------

@pytest.fixture(scope="module")
def avdigits(shared_data, tmp_path_factory):
  """(index folder, FSDD recordings folder, run folder) of avdigits:tiny trained 4 steps, indexed (~45 s)."""
  from data_prep import prepare
  from mmvae import config as config_lib
  from mmvae.train import entry
  tmp = tmp_path_factory.mktemp("serve_av")
  recordings = tmp / "fsdd" / "recordings"
  recordings.mkdir(parents=True)
  for digit in range(10):
    for speaker, take in (("jackson", 0), ("theo", 7), ("george", 30)):
      name = f"{digit}_{speaker}_{take}.wav"
      shutil.copy(shared_data / "fsdd/recordings" / name, recordings / name)
  prepare.prepare_avdigits(tmp / "fsdd", shared_data / "mnist-t10k", tmp / "data", config="avdigits:tiny", workers=1)
  entry.train(config_lib.load("avdigits:tiny"), tmp / "data", tmp / "run")
  assert cli.main(["index", "--workdir", str(tmp / "run"), "--out", str(tmp / "INDEX")]) == 0
  return tmp / "INDEX", recordings, tmp / "run"


def _same(got, want):
  assert [(r["id"], r["modality"], r["label"], r["rank"]) for r in got] == \
      [(r["id"], r["modality"], r["label"], r["rank"]) for r in want]
  np.testing.assert_allclose([r["score"] for r in got], [r["score"] for r in want], atol=1e-5)


def test_text_wav_and_image_queries_equal_the_library_and_the_voice_generates(avdigits, started, tmp_path,
                                                                             monkeypatch):
  from PIL import Image
  index_path, recordings, run = avdigits
  base = started(index_path, audio_root=recordings)
  index = mmvae.Index.open(index_path)
  # Text: the JSON endpoint is `Index.query`'s list; the page shows the same entries in the same order.
  status, _, body = _get(f"{base}/api/query?" + urllib.parse.urlencode({"text": "the digit seven", "k": 7}))
  want = index.query(text="the digit seven", k=7)
  assert status == 200
  _same(json.loads(body), want)
  status, body = _post(f"{base}/query", [("text", "the digit seven"), ("k", "7")])
  assert status == 200 and _card_ids(body) == [r["id"] for r in want]
  assert body.count(b"<img src='/entry/image?") == sum(r["modality"] == "image" for r in want)
  assert body.count(b"<audio controls") == sum(r["modality"] == "audio" for r in want)
  # A WAV upload (multipart): Index.query on the same file, and the image `mmvae generate face` writes for it.
  monkeypatch.setattr(tempfile, "tempdir", str(tmp_path / "tmp"))
  (tmp_path / "tmp").mkdir()
  wav = recordings / "4_theo_7.wav"
  status, body = _post(f"{base}/api/query", [("k", "6"), ("modality", "image")],
                       [("file", "voice.wav", "audio/wav", wav.read_bytes())])
  assert status == 200
  _same(json.loads(body), index.query(wav=wav, k=6, modality="image"))
  status, body = _post(f"{base}/query", [("k", "6")], [("file", "voice.wav", "audio/wav", wav.read_bytes())])
  assert status == 200 and _card_ids(body) == [r["id"] for r in index.query(wav=wav, k=6)]
  generated = re.search(rb"<div class='generated' id='generated'><img alt='generated' src='data:image/png;base64,"
                        rb"([^']+)'>", body)
  assert generated
  import base64
  shown = np.asarray(Image.open(io.BytesIO(base64.b64decode(generated.group(1)))))
  assert cli.main(["generate", "face", "--workdir", str(run), "--wav", str(wav), "--out", str(tmp_path / "g.png")]) == 0
  np.testing.assert_array_equal(shown, np.asarray(Image.open(tmp_path / "g.png")))
  # An image upload.
  frame = data.Dataset(index.record["dataset"]["path"]).arrays("test")["image"][2, 0, ..., 0]
  png = io.BytesIO()
  Image.fromarray(frame).save(png, "PNG")
  status, body = _post(f"{base}/api/query", [("k", "5")], [("file", "digit.png", "image/png", png.getvalue())])
  assert status == 200
  _same(json.loads(body), index.query(image=png.getvalue(), k=5))
  # An unreadable WAV: 400 and the library's one line, naming the upload, not a temporary path.
  status, body = _post(f"{base}/query", [], [("file", "bad.wav", "audio/wav", b"RIFF\0\0\0\0WAVEnot really")])
  line = _error_line(body)
  assert status == 400 and "not a readable WAV file" in line and "'bad.wav'" in line and "mmvae-serve-" not in line
  assert list((tmp_path / "tmp").iterdir()) == []  # nothing in the system's temporary folder
  assert not list(pathlib.Path(index_path).glob(".upload-*"))  # and each upload's folder in the index is gone
  # An audio card's recording is the corpus's file.
  audio = next(r for r in want if r["modality"] == "audio")
  status, _, body = _get(f"{base}/entry/audio?" + urllib.parse.urlencode({"id": audio["id"], "modality": "audio"}))
  import soundfile
  assert status == 200
  np.testing.assert_allclose(soundfile.read(io.BytesIO(body))[0], soundfile.read(recordings / audio["id"])[0],
                             atol=1.5 / 32768)


def _chrome():
  """A headless Chromium WebDriver from the system's chromium and chromedriver, or skip saying what is missing."""
  try:
    from selenium import webdriver
  except ImportError:
    pytest.skip("selenium is not installed (pip install selenium)")
  driver_path = shutil.which("chromedriver")
  browser = shutil.which("chromium") or shutil.which("chromium-browser")
  if driver_path is None or browser is None:
    pytest.skip("chromium and chromedriver are not installed (apt-get install chromium chromium-driver)")
  options = webdriver.ChromeOptions()
  options.binary_location = browser
  for arg in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage"):
    options.add_argument(arg)
  # The given chromedriver: Selenium Manager never runs, nothing is downloaded.
  return webdriver.Chrome(service=webdriver.ChromeService(executable_path=driver_path), options=options)


def test_headless_chromium_submits_a_text_and_a_wav_and_sees_results_with_images(avdigits, started, tmp_path):
  from selenium.common.exceptions import StaleElementReferenceException, TimeoutException
  from selenium.webdriver.common.by import By
  from selenium.webdriver.support.ui import Select, WebDriverWait
  index_path, recordings, _ = avdigits
  base = started(index_path, audio_root=recordings)
  index = mmvae.Index.open(index_path)
  driver = _chrome()
  try:
    driver.set_page_load_timeout(60)
    # A submit loads a new page: an element found on the old one goes stale while a condition reads it (seen in CI
    # on a loaded machine). That means "not yet", so the wait polls again instead of failing.
    waiting = WebDriverWait(driver, 60, ignored_exceptions=(StaleElementReferenceException,))

    def wait(until):
      try:
        waiting.until(until)
      except TimeoutException:
        errors = driver.find_elements(By.ID, "error")
        pytest.fail(f"page at {driver.current_url}: {errors[0].text if errors else driver.page_source[-600:]}")

    loaded = "return arguments[0].complete && arguments[0].naturalWidth > 0"
    driver.get(base + "/")
    driver.find_element(By.ID, "text").send_keys("the digit three")
    driver.find_element(By.ID, "k").clear()
    driver.find_element(By.ID, "k").send_keys("8")
    Select(driver.find_element(By.ID, "modality")).select_by_value("image")
    driver.find_element(By.ID, "submit").click()
    wait(lambda d: d.find_elements(By.CSS_SELECTOR, "#results .card"))
    cards = driver.find_elements(By.CSS_SELECTOR, "#results .card")
    want = index.query(text="the digit three", k=8, modality="image")
    assert [c.get_attribute("data-id") for c in cards] == [r["id"] for r in want]
    images = driver.find_elements(By.CSS_SELECTOR, "#results .card img")
    assert len(images) == 8
    wait(lambda d: all(d.execute_script(loaded, img) for img in images))
    assert all(driver.execute_script("return arguments[0].naturalWidth", img) == 28 for img in images)
    # A WAV: the file input takes a path; results and the image generated from the voice appear.
    wav = recordings / "8_jackson_0.wav"
    driver.find_element(By.ID, "file").send_keys(str(wav))
    driver.find_element(By.ID, "submit").click()
    wait(lambda d: any(wav.name in h.text for h in d.find_elements(By.TAG_NAME, "h2")))
    cards = driver.find_elements(By.CSS_SELECTOR, "#results .card")
    assert [c.get_attribute("data-id") for c in cards] == [r["id"] for r in index.query(wav=wav, k=8, modality="image")]
    generated = driver.find_element(By.CSS_SELECTOR, "#generated img")
    wait(lambda d: d.execute_script(loaded, generated))
    # The result images load on their own after the generated one: waited for, not asserted at once.
    wait(lambda d: all(d.execute_script(loaded, img) for img in d.find_elements(By.CSS_SELECTOR, "#results img")))
    # An unreadable WAV: the message on the page.
    bad = tmp_path / "bad.wav"
    bad.write_bytes(b"RIFF\0\0\0\0WAVEnot really")
    driver.find_element(By.ID, "file").send_keys(str(bad))
    driver.find_element(By.ID, "submit").click()
    wait(lambda d: d.find_elements(By.ID, "error"))
    assert "not a readable WAV file" in driver.find_element(By.ID, "error").text
  finally:
    driver.quit()
