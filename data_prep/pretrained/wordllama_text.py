"""WordLlama sentence vectors (256-d, L2-normalised) of an example's text, from the installed wheel only.

WordLlama (MIT) is a token-embedding table distilled from large language models (config l2_supercat: the Llama-2
tokenizer, 256-d): a sentence's vector is the mean of its tokens' vectors. The wheel ships the 256-d weights
(`wordllama/weights/l2_supercat_256.safetensors`) and the tokenizer (`wordllama/tokenizers/...json`), but
`WordLlama.load()` looks for the tokenizer in `wordllama/tokenizer/` and else downloads it; loading with
`cache_dir=<the package folder>` makes its cache lookup (`cache_dir/tokenizers/`) find the shipped file, and
`disable_download=True` turns any miss into an error instead of a download. Nothing is fetched at run time.
"""

import functools
import importlib.util
import logging
import pathlib
import sys

import numpy as np

NAME = "wordllama"
DIM = 256
INSTALL = "pip install wordllama"
CONFIG = "l2_supercat"
WEIGHTS = f"weights/{CONFIG}_{DIM}.safetensors"
TOKENIZER = f"tokenizers/{CONFIG}_tokenizer_config.json"
MISSING = f"the wordllama sentence encoder needs the wordllama package: {INSTALL}"


def package_dir() -> pathlib.Path:
  """The installed wordllama package's folder, or a one-line ValueError naming INSTALL."""
  spec = importlib.util.find_spec("wordllama")
  if spec is None or not spec.submodule_search_locations:
    raise ValueError(MISSING)
  return pathlib.Path(list(spec.submodule_search_locations)[0])


@functools.lru_cache(maxsize=1)
def load_model():
  """WordLlama l2_supercat 256-d from the installed wheel, with downloads disabled."""
  folder = package_dir()
  missing = [f for f in (WEIGHTS, TOKENIZER) if not (folder / f).is_file()]
  if missing:
    raise ValueError(f"{folder}: the installed wordllama lacks {', '.join(missing)}; reinstall it: {INSTALL}")
  # wordllama.inference calls logging.basicConfig(level=INFO) at import: keep the root logger as it was.
  root = logging.getLogger()
  level, handlers = root.level, list(root.handlers)
  try:
    from wordllama import WordLlama  # pylint: disable=g-import-not-at-top
  except ImportError:
    raise ValueError(MISSING) from None
  finally:
    for h in root.handlers[:]:
      if h not in handlers:
        root.removeHandler(h)
    root.setLevel(level)
  return WordLlama.load(CONFIG, cache_dir=folder, dim=DIM, disable_download=True)


def embed_texts(texts: list[str]) -> np.ndarray:
  """Sentences -> [N, DIM] float32, each row the L2-normalised mean of its token vectors."""
  empty = [i for i, t in enumerate(texts) if not isinstance(t, str) or not t.strip()]
  if empty:
    raise ValueError(f"text {empty[0]} is empty or not a string ({texts[empty[0]]!r}); wordllama needs words")
  if not texts:
    return np.zeros((0, DIM), np.float32)
  x_NxD = np.asarray(load_model().embed(list(texts), norm=False), dtype=np.float32)
  norms_N = np.linalg.norm(x_NxD, axis=1, keepdims=True)
  return x_NxD / np.maximum(norms_N, 1e-12)


def embed_examples(specs: list[dict], progress: bool = True) -> np.ndarray:
  """Example specs (with 'text') -> [N, DIM] float32, row i for specs[i]."""
  load_model()  # a missing package fails before any work
  texts = []
  for spec in specs:
    text = spec.get("text")
    if not isinstance(text, str) or not text.strip():
      raise ValueError(f"example {spec.get('id')!r} has no text (spec['text'] is {text!r}); wordllama needs it")
    texts.append(text)
  out_NxD = embed_texts(texts)
  if progress:
    print(f"{NAME}: {len(specs)}/{len(specs)} examples", file=sys.stderr, flush=True)
  return out_NxD
