"""Free text (issue 27 items 3-4): the subword tokenizer, the free mmdigits grammar, and queries in words the corpus
never used. Expected values are literal strings or come from an independent reader (digit_text.digit_of, the
`tokenizers` library reading the saved tokenizer.json), never from the code under test."""

import collections
import json

import numpy as np
import pytest

from data_prep import digit_text, free_text, subword
from mmvae import modalities
from mmvae import index as index_lib



@pytest.fixture(scope="module")
def sentences():
  return free_text.describe_all([i % 10 for i in range(2000)], seed=0)


@pytest.fixture(scope="module")
def tokenizer(sentences):
  return subword.train(sentences)


def _text_modality(tokenizer, length=16) -> modalities.Modality:
  vocab, merges = subword.model_of(tokenizer)
  return modalities.from_dict({"name": "text", "kind": "tokens", "shape": [length], "dtype": "int32",
                               "vocab": list(vocab), "merges": list(merges), "tokenizer": subword.FILE})


def test_tokenizer_round_trip(tokenizer, sentences):
  vocab, _ = subword.model_of(tokenizer)
  assert vocab[:2] == ("[PAD]", "[UNK]") and len(vocab) == subword.VOCAB_SIZE
  longest = max(len(subword.ids(tokenizer, s)) for s in sentences)
  for s in sentences:
    row = subword.encode(tokenizer, s, longest)
    assert row.dtype == np.int32 and row.shape == (longest,)
    assert subword.UNK_ID not in row  # the training text has no unknown character
    assert subword.decode(vocab, row) == s  # the sentence itself, padding left out
  # Subwords are used: every digit word is one piece, while some grammar words are cut into several.
  assert all(len(subword.ids(tokenizer, w)) == 1 for w in digit_text.DIGIT_WORDS)
  assert any(len(subword.ids(tokenizer, w)) > 1 for w in free_text.words())
  # Normalised as digit_text.tokenize: case, accents, apostrophes, punctuation, runs of spaces.
  assert subword.decode(vocab, subword.ids(tokenizer, "  It's a SEVEN,  drawn  Café-style!")) == \
      "its a seven drawn cafe style"
  # The same text gives the same model (plain BPE: the library's WordPiece trainer does not, see subword.py).
  again = subword.train(sentences)
  assert subword.model_of(again) == subword.model_of(tokenizer) and again.to_str() == tokenizer.to_str()


def test_unknown_words_are_pieces_or_unk_never_an_error(tokenizer):
  vocab, _ = subword.model_of(tokenizer)
  # Words no sentence uses, of letters the alphabet has: cut into known pieces, no [UNK], decoded back.
  ids = subword.ids(tokenizer, "quixotic penguins juggle sevens")
  assert subword.UNK_ID not in ids and subword.decode(vocab, ids) == "quixotic penguins juggle sevens"
  # Characters outside the alphabet: one [UNK] per run of them, the other words kept.
  ids = subword.ids(tokenizer, "東京 seven ß")
  assert [vocab[i] for i in ids].count("[UNK]") == 2
  assert subword.decode(vocab, ids) == "[UNK] seven [UNK]"
  # The query path: a row of the modality's length, cut when longer, and one-line errors for no words.
  m = _text_modality(tokenizer, length=6)
  row = index_lib.text_tokens("a zebra named Ωmega 東京 recites sevens", m)
  assert row.shape == (6,) and row.dtype == np.int32 and np.all(row > 0)  # longer than 6 pieces: cut, no padding
  assert subword.UNK_ID in index_lib.text_tokens("Ω", m)
  for text, says in (("", "is empty"), ("   ", "is empty"), ("?! ...", "has no words")):
    with pytest.raises(ValueError, match=says) as e:
      index_lib.text_tokens(text, m)
    assert "\n" not in str(e.value)


def test_the_saved_tokenizer_is_the_manifest_model(tokenizer, tmp_path, sentences):
  from tokenizers import Tokenizer
  subword.save(tokenizer, tmp_path / subword.FILE)
  saved = Tokenizer.from_file(str(tmp_path / subword.FILE))
  vocab, merges = subword.model_of(tokenizer)
  rebuilt = subword.from_model(vocab, merges)
  for s in sentences[:200] + ["quixotic penguins", "東京 Ω seven"]:
    assert rebuilt.encode(s).ids == saved.encode(s).ids
  assert saved.get_vocab() == {p: i for i, p in enumerate(vocab)}


def test_free_grammar_is_seeded_and_varied(sentences):
  digits = [i % 10 for i in range(2000)]
  assert free_text.describe_all(digits, seed=0) == sentences
  other = free_text.describe_all(digits, seed=1)
  assert sum(a != b for a, b in zip(sentences, other)) > 1500
  assert len(set(sentences)) > 1500  # 2,000 draws, nearly all distinct
  words = collections.Counter(w for s in sentences for w in s.split())
  assert len(words) > 150  # synonyms, fillers, motion phrases
  assert len({s.split()[0] for s in sentences}) > 30  # many ways to start (word order)
  for d, s in zip(digits, sentences):
    assert digit_text.digit_of(s) == d, s  # names its digit exactly once (digit_text's own reader)
  for d in range(10):  # the digit as numeral and as word
    mine = [s.split() for dd, s in zip(digits, sentences) if dd == d]
    assert any(str(d) in t for t in mine) and any(digit_text.DIGIT_WORDS[d] in t for t in mine)
  # A closed-grammar description is rarely a free sentence: the free grammar is larger.
  closed = {t for d in range(10) for t in digit_text.all_descriptions(d)}
  assert len(set(sentences) - closed) > 1400


# --- prep mmdigits --text free, a tiny contrastive run and its index --------------------------------------------

@pytest.fixture(scope="module")
def free(subset, shared_data, tmp_path_factory):
  from mmvae import cli
  out = tmp_path_factory.mktemp("mmdigits") / "free"
  assert cli.main(["prep", "mmdigits", "--fsdd", str(subset), "--mnist", str(shared_data / "mnist-t10k"),
                   "--out", str(out), "--text", "free", "--workers", "1"]) == 0
  return out


def test_prep_free_text_saves_a_tokenizer_whose_tokens_decode_back(free):
  from tokenizers import Tokenizer
  from mmvae import data
  manifest = json.loads((free / "manifest.json").read_text())
  assert [m["name"] for m in manifest["modalities"]] == ["audio", "image", "text", "video", "pointcloud"]
  entry = manifest["modalities"][2]
  assert entry["kind"] == "tokens" and entry["tokenizer"] == "tokenizer.json"
  saved = Tokenizer.from_file(str(free / entry["tokenizer"]))  # the library's own reader
  assert saved.get_vocab() == {p: i for i, p in enumerate(entry["vocab"])}
  ds = data.Dataset(free)
  decoded = set()
  for split in ("train", "validation", "test"):
    arrays = ds.arrays(split)
    for ident, label, ids in zip(arrays["id"], arrays["label"], arrays["text"]):
      ids = [int(i) for i in ids if i != 0]
      text = saved.decode(ids)
      assert digit_text.digit_of(text) == int(label), (ident, text)
      assert saved.encode(text).ids == ids  # encoding the decoded sentence gives the stored ids back
      decoded.add(text)
  assert len(decoded) > 0.8 * sum(ds.manifest["splits"][s]["examples"] for s in ds.manifest["splits"])


@pytest.fixture(scope="module")
def free_index(free, tmp_path_factory):
  from mmvae import cli
  from mmvae import config as config_lib
  from mmvae.train import entry
  workdir = tmp_path_factory.mktemp("free_run") / "run"
  config = config_lib.load("mcvs:tiny", ["model.kind=contrastive", "data.modalities=('audio','text','video')",
                                         "model.encoders.text=conv"])
  entry.train(config, free, workdir)
  out = tmp_path_factory.mktemp("free_index") / "INDEX"
  assert cli.main(["index", "--workdir", str(workdir), "--out", str(out), "--splits", "test"]) == 0
  return out


def test_a_query_in_words_the_corpus_never_used_returns_results(free, free_index, capsys):
  from mmvae import cli
  manifest = json.loads((free / "manifest.json").read_text())
  query = "a penguin juggles quixotic zebras in Zürich 東京"
  vocab = manifest["modalities"][2]["vocab"]
  assert not {"penguin", "juggles", "quixotic", "zebras"} & {p.lstrip(subword.META) for p in vocab}
  assert cli.main(["query", str(free_index), "--text", query, "--k", "5", "--json"]) == 0
  results = json.loads(capsys.readouterr().out)
  assert len(results) == 5 and all(set(index_lib.RESULT_KEYS) <= set(r) for r in results)
  assert {r["modality"] for r in results} <= {"audio", "video"}
  # The stored text column reads as words, not pieces.
  index = index_lib.Index.open(free_index)
  texts = index.table["text"][index.table["modality"] == "text"]
  assert all(digit_text.digit_of(t) is not None for t in texts) and not any(subword.META in t for t in texts)
  for text, says in (("", "is empty"), ("?!", "has no words")):
    assert cli.main(["query", str(free_index), "--text", text]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and says in err, err


def test_a_video_file_finds_its_own_clip_first(free, free_index, tmp_path, capsys):
  """A stored test clip written out as a GIF and queried with --video: through the run's own resizing (none here:
  same size) the query is that clip exactly, so its entry is first among the videos at cosine 1."""
  from PIL import Image
  from mmvae import cli, data
  test = data.Dataset(free).arrays("test")
  clip = test["video"][4]  # uint8 [T, S, S, 1]
  frames = [Image.fromarray(f[:, :, 0], "L") for f in clip]
  gif = tmp_path / "clip.gif"
  frames[0].save(gif, save_all=True, append_images=frames[1:], duration=100, loop=0)
  assert cli.main(["query", str(free_index), "--video", str(gif), "--modality", "video", "--k", "3", "--json"]) == 0
  results = json.loads(capsys.readouterr().out)
  assert results[0]["score"] > 1 - 1e-5
  tied = [r["id"] for r in results if r["score"] > 1 - 1e-5]
  assert str(test["id"][4]) in tied
  bad = tmp_path / "bad.mp4"
  bad.write_bytes(b"not a video")
  assert cli.main(["query", str(free_index), "--video", str(bad)]) == 2
  err = capsys.readouterr().err
  assert err.count("\n") == 1 and "not a readable video" in err
