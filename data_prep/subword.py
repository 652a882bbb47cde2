"""Subword text: a BPE tokenizer (the `tokenizers` library) trained on a corpus's training text.

Text is normalised as data_prep/digit_text.py tokenises it (accents stripped, lowercased, apostrophes dropped,
other punctuation a space, runs of spaces one), split into words each marked by a leading META ("▁seven"), and
each word cut by the learned merges into pieces ("sevens" -> "▁seven", "s"). A character outside the alphabet
becomes [UNK] (a run of them one [UNK]), so no text fails to encode. Ids: 0 = [PAD] (the padding of a `tokens`
modality), 1 = [UNK], then the alphabet (a-z, 0-9, META: a word of them never needs [UNK]) and the learned pieces.

BPE, not WordPiece: the library's WordPiece trainer (and its BPE trainer with a word prefix or suffix) breaks ties
in hash order, so two trainings on the same text give different vocabularies; plain BPE with the META marker gives
the same one every time, and the dataset's fingerprint stays a function of its inputs.

Prep saves the tokenizer as OUT/tokenizer.json (the library's own format, `Tokenizer.from_file`) and the `tokens`
manifest entry names it (`"tokenizer": "tokenizer.json"`) beside the whole model: `vocab`, the pieces in id
order, and `merges`, "left right" in the order they apply. With this module's fixed normaliser and pre-tokeniser
that is the whole tokenizer, so `from_model(vocab, merges)` rebuilds the saved one from the manifest alone: an
index, which keeps a copy of the manifest, encodes a query without the dataset folder.
"""

import functools
import json

import numpy as np

from mmvae.modalities import tokens

PAD, UNK = "[PAD]", "[UNK]"
SPECIALS = (PAD, UNK)
PAD_ID, UNK_ID = 0, 1
META = tokens.WORD_START  # "▁": marks the start of a word (SentencePiece's convention)
FILE = "tokenizer.json"
VOCAB_SIZE = 256  # pieces in all: the free mmdigits grammar has ~200 words, so its rarer words are cut
ALPHABET = tuple("abcdefghijklmnopqrstuvwxyz0123456789") + (META,)


def _pipeline(model):
  """A Tokenizer around the BPE `model` with the fixed normaliser, pre-tokeniser and decoder."""
  from tokenizers import Regex, Tokenizer, decoders, normalizers, pre_tokenizers
  tokenizer = Tokenizer(model)
  tokenizer.normalizer = normalizers.Sequence([
      normalizers.NFD(), normalizers.StripAccents(), normalizers.Lowercase(), normalizers.Replace("'", ""),
      normalizers.Replace(Regex(r"[^\w\s]|_"), " "), normalizers.Replace(Regex(r"\s+"), " "), normalizers.Strip()])
  tokenizer.pre_tokenizer = pre_tokenizers.Metaspace(replacement=META, prepend_scheme="always", split=True)
  tokenizer.decoder = decoders.Metaspace(replacement=META, prepend_scheme="always", split=True)
  return tokenizer


def train(texts, vocab_size: int = VOCAB_SIZE):
  """A BPE tokenizer learned from `texts` (an iterable of str): [PAD] = 0, [UNK] = 1, the alphabet, the pieces."""
  from tokenizers import models, trainers
  if vocab_size < len(SPECIALS) + len(ALPHABET):
    raise ValueError(f"vocab_size={vocab_size}: a tokenizer needs at least {len(SPECIALS) + len(ALPHABET)} pieces "
                     "(the specials and the alphabet)")
  tokenizer = _pipeline(models.BPE(unk_token=UNK, fuse_unk=True))
  trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=list(SPECIALS), initial_alphabet=list(ALPHABET),
                                show_progress=False)
  tokenizer.train_from_iterator(list(texts), trainer)
  return from_model(*model_of(tokenizer))


def model_of(tokenizer) -> tuple[tuple[str, ...], tuple[str, ...]]:
  """(vocab: the pieces in id order, [PAD] and [UNK] first; merges: "left right" in the order they apply)."""
  model = json.loads(tokenizer.to_str())["model"]
  by_id = sorted((i, piece) for piece, i in model["vocab"].items())
  if [i for i, _ in by_id] != list(range(len(by_id))) or tuple(p for _, p in by_id[:2]) != SPECIALS:
    raise ValueError(f"a tokenizer's ids must run 0..V-1 with {PAD} = 0 and {UNK} = 1, got {by_id[:4]}...")
  merges = tuple(" ".join(m) if isinstance(m, list) else str(m) for m in model["merges"])
  return tuple(p for _, p in by_id), merges


@functools.lru_cache(maxsize=8)
def from_model(vocab: tuple[str, ...], merges: tuple[str, ...]):
  """The tokenizer of a manifest's `vocab` (id order) and `merges`; ValueError unless [PAD] = 0 and [UNK] = 1."""
  from tokenizers import models
  vocab = tuple(vocab)
  if vocab[:2] != SPECIALS:
    raise ValueError(f"a subword vocabulary starts with {PAD}, {UNK}; got {list(vocab[:2])}")
  pairs = []
  for m in merges:
    left, _, right = str(m).partition(" ")
    if not left or not right:
      raise ValueError(f"a merge is 'left right', got {m!r}")
    pairs.append((left, right))
  return _pipeline(models.BPE({p: i for i, p in enumerate(vocab)}, pairs, unk_token=UNK, fuse_unk=True))


def of_modality(m):
  """The tokenizer of a `tokens` modality prepared with one (manifest `tokenizer`), else None (a word vocabulary)."""
  if not m.get("tokenizer"):
    return None
  return from_model(tuple(m.get("vocab") or ()), tuple(m.get("merges") or ()))


def ids(tokenizer, text: str) -> list[int]:
  """The ids of a text, no padding."""
  return [i for i in tokenizer.encode(text, add_special_tokens=False).ids if i != PAD_ID]


def encode(tokenizer, text: str, length: int) -> np.ndarray:
  """Text -> int32 ids [length], padded with PAD_ID, cut to `length` pieces."""
  got = ids(tokenizer, text)[:length]
  row = np.full(length, PAD_ID, np.int32)
  row[:len(got)] = got
  return row


def decode(vocab, ids_L) -> str:
  """Ids -> text: the pieces joined, META a space; padding left out, [UNK] kept, an id outside the vocabulary <id>
  (the tokens modality's own reading, so a dataset's text reads the same everywhere)."""
  return tokens.pieces_to_text(vocab, ids_L)


def save(tokenizer, path) -> None:
  """Writes the tokenizer in the library's JSON format (`tokenizers.Tokenizer.from_file` reads it)."""
  from mmvae import files
  files.write_atomic(path, tokenizer.to_str(pretty=True))
