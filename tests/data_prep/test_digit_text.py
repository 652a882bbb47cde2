"""AV-digits text modality: grammar descriptions name their digit once, vocabulary, encode/decode, reader."""

import re

import numpy as np
import pytest

from data_prep import digit_text

# Written out here, not taken from the module, so a wrong word list there fails these tests.
WORDS = "zero one two three four five six seven eight nine".split()
MENTION = re.compile(r"\b(?:[0-9]|" + "|".join(WORDS) + r")\b")
SYNONYMS = ("digit", "number", "numeral", "figure")


@pytest.fixture(scope="module")
def sample():
  """3000 (digit, description) pairs from one seed."""
  digits = np.random.default_rng(123).integers(0, 10, 3000)
  return list(zip(digits.tolist(), digit_text.describe_all(digits, seed=7)))


def assert_names_only(text, digit):
  """`text` mentions `digit` exactly once, as numeral or word, and nothing else that looks like a digit."""
  assert MENTION.findall(text) in ([str(digit)], [WORDS[digit]]), text
  assert re.findall(r"\d", text) in ([], [str(digit)]), text
  others = [w for w in text.split() if w not in (str(digit), WORDS[digit])]
  assert not [w for w in others for name in WORDS if name in w], text  # no "none", "often", ...


def test_every_description_names_its_digit_once_and_no_other(sample):
  for digit, text in sample:
    assert_names_only(text, digit)
    assert text == text.strip() and "  " not in text and text == text.lower()


def test_every_description_of_every_digit_in_the_whole_grammar_names_only_it():
  for digit in range(10):
    texts = digit_text.all_descriptions(digit)
    assert len(texts) == len(set(texts)) > 100
    for text in texts:
      assert_names_only(text, digit)


def test_sample_covers_the_surface_forms_and_distractors(sample):
  seen = set()
  for digit, text in sample:
    n, w = str(digit), WORDS[digit]
    seen.add("numeral alone" if text == n else "word alone" if text == w else None)
    if re.fullmatch(rf"(?:a|an|the) [a-z ]*(?:{n}|{w})", text) and not set(text.split()) & set(SYNONYMS):
      seen.add("article + modifiers + digit")  # "a handwritten 7"
    if re.fullmatch(rf"(?:[a-z]+ )*(?:{'|'.join(SYNONYMS)}) (?:{n}|{w})", text):
      seen.add("noun phrase")  # "the digit seven", "number 7"
    if re.match(r"(it is|this is|here is|this shows) ", text):
      seen.add("sentence")  # "it is a seven"
  assert {"numeral alone", "word alone", "article + modifiers + digit", "noun phrase", "sentence"} <= seen
  words = {w for _, text in sample for w in text.split()}
  assert set(SYNONYMS) <= words
  assert {"a", "the", "written", "clearly", "small", "bold", "handwritten"} <= words
  for form in ("the digit seven", "a handwritten 7", "number seven", "it is a seven", "7", "seven"):
    assert form in digit_text.all_descriptions(7)


def test_article_agrees_with_the_digit(sample):
  texts = [t for _, t in sample]
  assert not [t for t in texts if re.search(r"\ba (8|eight)\b", t)]
  assert not [t for t in texts if re.search(r"\ban (?!8\b|eight\b)", t)]
  assert any(re.search(r"\ban (8|eight)\b", t) for t in texts)


def test_descriptions_are_deterministic_given_the_seed():
  digits = [3, 1, 4, 1, 5, 9, 2, 6, 5, 3, 5, 8, 9, 7, 9] * 4
  first = digit_text.describe_all(digits, seed=0)
  assert digit_text.describe_all(digits, seed=0) == first
  assert digit_text.describe_all(np.array(digits), seed=0) == first
  assert digit_text.describe_all(digits, seed=1) != first
  assert len(first) == len(digits)
  a, b = np.random.default_rng(5), np.random.default_rng(5)
  assert [digit_text.describe(7, a) for _ in range(20)] == [digit_text.describe(7, b) for _ in range(20)]


@pytest.mark.parametrize("bad", [-1, 10, 42])
def test_describe_rejects_a_digit_out_of_range(bad):
  with pytest.raises(ValueError, match="0-9"):
    digit_text.describe(bad, np.random.default_rng(0))


def test_vocab_layout_and_it_covers_exactly_the_grammar(sample):
  vocab = digit_text.VOCAB
  assert vocab[:2] == ("<pad>", "<unk>") and len(set(vocab)) == len(vocab)
  assert set("0123456789") | set(WORDS) <= set(vocab)
  grammar = {w for d in range(10) for t in digit_text.all_descriptions(d) for w in t.split()}
  assert grammar == set(vocab[2:])  # every word it can say, and no word it never says
  for _, text in sample:
    ids = digit_text.encode(text)
    assert digit_text.UNK_ID not in ids and ids[0] != digit_text.PAD_ID


def test_max_tokens_is_the_longest_description():
  enumerated = max(len(t.split()) for d in range(10) for t in digit_text.all_descriptions(d))
  assert digit_text.MAX_TOKENS == enumerated
  drawn = [len(t.split()) for t in digit_text.describe_all(np.arange(20000) % 10, seed=3)]
  assert max(drawn) == digit_text.MAX_TOKENS
  # By hand: "it looks like" + article + "clearly written" + noun + digit.
  assert digit_text.MAX_TOKENS == 8
  assert "it looks like a clearly written figure 3" in digit_text.all_descriptions(3)


def test_tokenize_lowercases_and_strips_punctuation():
  assert digit_text.tokenize("The Digit, Seven!") == ["the", "digit", "seven"]
  assert digit_text.tokenize("  it's a hand-drawn 7.\n") == ["its", "a", "hand", "drawn", "7"]
  assert digit_text.tokenize("") == []


def test_encode_decode_round_trip_and_padding(sample):
  ids_of = {w: i for i, w in enumerate(digit_text.VOCAB)}
  ids = digit_text.encode("the digit seven")
  assert ids.dtype == np.int32 and ids.shape == (digit_text.MAX_TOKENS,)
  assert ids.tolist() == [ids_of["the"], ids_of["digit"], ids_of["seven"]] + [0] * (digit_text.MAX_TOKENS - 3)
  assert digit_text.encode("A bold Figure 3.", length=12).tolist() == (
      [ids_of["a"], ids_of["bold"], ids_of["figure"], ids_of["3"]] + [0] * 8)
  for _, text in sample[:500]:
    ids = digit_text.encode(text)
    n = len(text.split())
    assert (ids[:n] > 1).all() and (ids[n:] == 0).all()
    assert digit_text.decode(ids) == text
    assert digit_text.decode(list(ids)) == text
  assert digit_text.decode([]) == "" and digit_text.decode(np.zeros(5, np.int32)) == ""


def test_unknown_word_is_unk_and_too_long_raises():
  ids_of = {w: i for i, w in enumerate(digit_text.VOCAB)}
  assert digit_text.encode("the zebra 7", length=4).tolist() == [ids_of["the"], 1, ids_of["7"], 0]
  assert digit_text.decode(digit_text.encode("the zebra 7")) == "the <unk> 7"
  assert digit_text.encode("<pad>", length=1).tolist() == [1]  # markup in text is a word, not padding
  with pytest.raises(ValueError, match="9 tokens, more than length 8") as err:
    digit_text.encode("it looks like a very clearly written figure 3")
  assert "\n" not in str(err.value)
  with pytest.raises(ValueError, match="more than length 2"):
    digit_text.encode("the digit 7", length=2)
  with pytest.raises(ValueError):
    digit_text.decode([len(digit_text.VOCAB)])


@pytest.mark.parametrize("text, digit", [
    ("the digit seven", 7), ("7", 7), ("a bold figure 3", 3), ("hello", None), ("3 or 4", None),
    ("", None), ("Number NINE!", 9), ("seven, that is 7", 7), ("three 4", None), ("34", None),
    ("a 10", None), ("it is an eight", 8), ("zero", 0), ("none of them", None), ("3,4", None)])
def test_digit_of_hand_written_examples(text, digit):
  assert digit_text.digit_of(text) == digit


def test_digit_of_reads_ids_and_every_generated_description(sample):
  assert digit_text.digit_of(digit_text.encode("the digit seven")) == 7
  assert digit_text.digit_of(np.zeros(8, np.int32)) is None
  for digit, text in sample:
    assert digit_text.digit_of(text) == digit
    assert digit_text.digit_of(digit_text.encode(text)) == digit
