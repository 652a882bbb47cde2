"""Text modality for AV-digits: a seeded grammar of short digit descriptions, a fixed vocabulary, a reader.

Every description names its digit exactly once, as the numeral ("7") or the English word ("seven"),
surrounded by words that carry no digit information ("the", "bold", "figure", "it is", ...), so the
digit is the only thing the text says about the example. Forms (one template each, chosen uniformly):
  bare       "7", "seven"
  noun       [a|the] [modifier] digit|number|numeral|figure DIGIT    "number seven", "a bold figure 3"
  modified   a|the [modifier] DIGIT                                  "a handwritten 7", "the seven"
  sentence   OPENER a|the [modifier] [noun] DIGIT                    "it is a seven", "this shows the digit 3"
"a" becomes "an" before "8"/"eight". describe() draws one description from a numpy Generator;
all_descriptions() enumerates the whole grammar for one digit.
"""

import itertools
import operator
import re

import numpy as np

NUMERALS = tuple("0123456789")
DIGIT_WORDS = ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine")
NOUNS = ("digit", "number", "numeral", "figure")
MODIFIERS = ("small", "large", "bold", "thin", "handwritten", "written", "printed", "clearly written",
             "neatly drawn", "hand drawn")
OPENERS = ("it is", "this is", "here is", "this shows", "it looks like", "i see")
DETERMINERS = ("a", "the")
AN_BEFORE = frozenset({"8", "eight"})  # the only digit mentions that start with a vowel sound

_DIGIT = None  # the slot the digit mention fills
# Each template is a sequence of slots; a slot is a tuple of alternatives ("" = the slot is left out).
_TEMPLATES = (
    ("bare", (_DIGIT,)),
    ("noun", (("",) + DETERMINERS, ("",) + MODIFIERS, NOUNS, _DIGIT)),
    ("modified", (DETERMINERS, ("",) + MODIFIERS, _DIGIT)),
    ("sentence", (OPENERS, DETERMINERS, ("",) + MODIFIERS, ("",) + NOUNS, _DIGIT)),
)
FORMS = tuple(name for name, _ in _TEMPLATES)

# Fixed order: ids must not move when the grammar grows, so new words go at the end.
VOCAB = ("<pad>", "<unk>") + NUMERALS + DIGIT_WORDS + (
    "a", "an", "the", "digit", "number", "numeral", "figure",
    "small", "large", "bold", "thin", "handwritten", "written", "printed", "clearly", "neatly", "drawn", "hand",
    "it", "is", "this", "here", "shows", "looks", "like", "i", "see")
PAD_ID, UNK_ID = 0, 1
_IDS = {word: i for i, word in enumerate(VOCAB)}


def _slot_tokens(slot) -> int:
  """Most tokens one slot can contribute (the digit mention is always one token)."""
  return 1 if slot is _DIGIT else max(len(alt.split()) for alt in slot)


# Slots are filled independently, so the longest description is the longest template's slot maxima;
# the tests check this against an exhaustive enumeration of the grammar.
MAX_TOKENS = max(sum(_slot_tokens(s) for s in slots) for _, slots in _TEMPLATES)

_PUNCT = re.compile(r"[^\w\s]|_")


def check_digit(digit) -> int:
  """An int in 0..9 (numpy ints too), or ValueError/TypeError."""
  if isinstance(digit, (bool, np.bool_)):
    raise TypeError(f"digit must be an int 0-9, got {digit!r}")
  d = operator.index(digit)
  if not 0 <= d <= 9:
    raise ValueError(f"digit must be in 0-9, got {d}")
  return d


def _render(parts) -> str:
  """Chosen slot alternatives -> one description: empty slots dropped, 'a' -> 'an' before a vowel sound."""
  tokens = " ".join(p for p in parts if p).split()
  for i in range(len(tokens) - 1):
    if tokens[i] == "a" and tokens[i + 1] in AN_BEFORE:
      tokens[i] = "an"
  return " ".join(tokens)


def describe(digit: int, rng: np.random.Generator) -> str:
  """One description of `digit` drawn from the grammar with `rng` (template, then each slot, uniformly)."""
  d = check_digit(digit)
  _, slots = _TEMPLATES[int(rng.integers(len(_TEMPLATES)))]
  parts = []
  for slot in slots:
    if slot is _DIGIT:
      parts.append(NUMERALS[d] if rng.integers(2) == 0 else DIGIT_WORDS[d])
    else:
      parts.append(slot[int(rng.integers(len(slot)))])
  return _render(parts)


def describe_all(digits, seed: int) -> list[str]:
  """One description per digit, in order, all drawn from np.random.default_rng(seed)."""
  rng = np.random.default_rng(seed)
  return [describe(d, rng) for d in digits]


def all_descriptions(digit: int) -> list[str]:
  """Every description the grammar can make for `digit` (distinct, in grammar order)."""
  d = check_digit(digit)
  mention = (NUMERALS[d], DIGIT_WORDS[d])
  out = {}
  for _, slots in _TEMPLATES:
    for parts in itertools.product(*(mention if s is _DIGIT else s for s in slots)):
      out.setdefault(_render(parts), None)
  return list(out)


def tokenize(text: str) -> list[str]:
  """Lowercase, drop apostrophes, turn other punctuation into spaces, split on whitespace."""
  return _PUNCT.sub(" ", text.lower().replace("'", "")).split()


def encode(text: str, length: int = MAX_TOKENS) -> np.ndarray:
  """Text -> int32 ids [length], padded with PAD_ID; an unknown word is UNK_ID; too many tokens: ValueError."""
  tokens = tokenize(text)
  if len(tokens) > length:
    raise ValueError(f"text has {len(tokens)} tokens, more than length {length}: {' '.join(tokens)[:80]!r}")
  ids = np.full(length, PAD_ID, np.int32)
  ids[:len(tokens)] = [_IDS.get(t, UNK_ID) for t in tokens]
  return ids


def decode(ids) -> str:
  """Ids -> the non-pad tokens joined by spaces; an id outside the vocabulary is a ValueError."""
  ids = np.asarray(ids).reshape(-1)
  if ids.size and (not np.issubdtype(ids.dtype, np.integer) or ids.min() < 0 or ids.max() >= len(VOCAB)):
    raise ValueError(f"ids must be integers in 0..{len(VOCAB) - 1}, got {ids.tolist()[:20]}")
  return " ".join(VOCAB[i] for i in ids.tolist() if i != PAD_ID)


def digit_of(text_or_ids) -> int | None:
  """The digit a description names (numeral or English word); None if it names none, or two different ones."""
  text = text_or_ids if isinstance(text_or_ids, str) else decode(text_or_ids)
  found = set()
  for token in tokenize(text):
    if token.isdigit() and token.isascii():
      if len(token) > 1:
        return None  # a multi-digit number ("34", "10") names no single digit
      found.add(int(token))
    elif token in DIGIT_WORDS:
      found.add(DIGIT_WORDS.index(token))
  return found.pop() if len(found) == 1 else None
