"""Free text for multi-modal digits (`prep mmdigits --text free`): varied sentences about a digit from a seeded grammar.

A small context-free grammar: a sentence is one of START's forms, each a string whose {slots} are filled by one of
the slot's alternatives (alternatives may hold slots themselves; '' leaves a slot out), drawn uniformly, recursively:
synonyms (digit, number, figure, glyph, ...), word order ("a slanted seven drifting left", "seven is what i see",
"is that a 7"), filler phrases ("i think", "as far as i can tell") and motion phrases (the `video` modality moves
and turns). The digit is named exactly once, as the numeral ("7") or the English word ("seven"); no other word
names a number, so the digit is the only thing a sentence says about its example. "a" becomes "an" before a vowel
sound. The closed grammar of data_prep/digit_text.py stays the default text of avdigits and mmdigits.
"""

import re

import numpy as np

from data_prep import digit_text

DIGIT = "d"  # the slot of the digit mention
START = (
    "{filler} {opener} {article} {adjs} {noun} {d} {motion}",
    "{opener} {article} {adjs} {d} {motion} {filler}",
    "{det} {adjs} {noun} {d} {motion}",
    "{d} {motion} {filler}",
    "{d} is what {seer} {sees}",
    "{filler} {d} is {where}",
    "{question} {det} {adjs} {d} {motion}",
    "{det} {noun} {where} is {det_less} {d}",
    "{writer} {wrote} {det} {adjs} {d} {where}",
    "{det} {noun} {d} {linking} {adj} and {motion_verb}",
    "{opener} {d}",
    "{d}",
)
RULES = {
    "filler": ("", "", "i think", "i believe", "apparently", "clearly", "if i am not mistaken", "as far as i can tell",
               "in my opinion", "more or less", "without a doubt", "probably", "maybe", "honestly", "at a glance",
               "if you ask me", "i would say", "so it seems", "no doubt", "to me", "oh look"),
    "opener": ("this is", "here is", "here we have", "this shows", "the picture shows", "the clip shows",
               "you can see", "i can see", "i see", "there is", "we are looking at", "it looks like", "it seems to be",
               "this must be", "this could be", "what we have here is", "look at", "check out", "the screen shows",
               "the camera caught", "i spotted", "my guess is", "that is"),
    "det": ("a", "the", "a", "the", "this", "that"),
    "article": ("a", "the"),
    "det_less": ("", "a", "the"),
    "adjs": ("", "", "{adj}", "{adj}", "{adverb} {adj}", "{adj} {adj2}"),
    "adj": ("small", "large", "tiny", "big", "bold", "thin", "thick", "faint", "dark", "bright", "blurry", "sharp",
            "handwritten", "scribbled", "neat", "messy", "slanted", "wobbly", "crooked", "shaky", "careful", "hasty",
            "pale", "heavy", "rough", "smooth", "wide", "narrow", "tall", "curly", "plain", "simple", "odd",
            "lonely", "little", "clear", "fuzzy", "grey", "black", "white", "old", "fresh"),
    "adj2": ("looking", "drawn", "written", "printed", "inked", "sketched"),
    "adverb": ("very", "rather", "quite", "slightly", "somewhat", "really", "pretty", "fairly", "neatly", "roughly",
               "carefully", "hastily"),
    "noun": ("", "", "digit", "number", "numeral", "figure", "symbol", "character", "glyph", "sign", "mark"),
    "motion": ("", "", "{motion_verb}", "{motion_adverb} {motion_verb}", "{motion_verb} {motion_adverb}",
               "{motion_verb} {place}", "that is {motion_verb} {place}", "{motion_adverb} {motion_verb} {place}"),
    "motion_verb": ("moving", "drifting", "sliding", "turning", "rotating", "spinning", "gliding", "wandering",
                    "floating", "tilting", "shifting", "swaying", "wobbling", "rolling", "creeping", "travelling"),
    "motion_adverb": ("slowly", "gently", "steadily", "quickly", "a little", "a bit", "smoothly", "lazily",
                      "barely"),
    "place": ("across the frame", "across the screen", "to the left", "to the right", "upwards", "downwards",
              "in place", "around the centre", "over the grid", "on the page", "along a line", "through the picture",
              "near the middle", "toward the corner"),
    "where": ("on the screen", "in the picture", "in this clip", "on the page", "right here", "in the frame",
              "shown here", "drawn here", "in view"),
    "seer": ("i", "we", "you", "someone", "the camera", "my friend", "the viewer"),
    "sees": ("saw", "noticed", "spotted", "caught", "found", "can see", "just saw"),
    "writer": ("i", "we", "someone", "somebody", "my friend", "the teacher", "a child", "a student"),
    "wrote": ("wrote", "drew", "scribbled", "sketched", "painted", "printed", "put down", "traced"),
    "question": ("is that", "is this", "could this be", "might that be", "do you see", "can you spot", "is it"),
    "linking": ("is", "looks", "seems", "appears", "was"),
}
FORMS = len(START)
_SLOT = re.compile(r"\{(\w+)\}")
_VOWEL_SOUND = frozenset("aeio")


def _expand(form: str, digit: int, rng: np.random.Generator) -> str:
  """FORM with every slot filled, left to right, each alternative uniformly (the digit: numeral or word)."""
  def fill(match):
    name = match.group(1)
    if name == DIGIT:
      return digit_text.NUMERALS[digit] if rng.integers(2) == 0 else digit_text.DIGIT_WORDS[digit]
    options = RULES[name]
    return _expand(options[int(rng.integers(len(options)))], digit, rng)
  return _SLOT.sub(fill, form)


def _articles(sentence: str) -> str:
  """Empty slots dropped; 'a' -> 'an' before a vowel sound (an eight, an 8, an odd; a one)."""
  tokens = sentence.split()
  for i in range(len(tokens) - 1):
    nxt = tokens[i + 1]
    if tokens[i] == "a" and (nxt == "8" or (nxt[0] in _VOWEL_SOUND and nxt != "one")):
      tokens[i] = "an"
  return " ".join(tokens)


def describe(digit: int, rng: np.random.Generator) -> str:
  """One sentence about `digit` drawn from the grammar with `rng` (a form of START, then its slots)."""
  d = digit_text.check_digit(digit)
  return _articles(_expand(START[int(rng.integers(FORMS))], d, rng))


def describe_all(digits, seed: int) -> list[str]:
  """One sentence per digit, in order, all drawn from np.random.default_rng(seed)."""
  rng = np.random.default_rng(seed)
  return [describe(d, rng) for d in digits]


def words() -> list[str]:
  """Every word the grammar can use besides the digit mentions (sorted)."""
  found = {w for options in (*RULES.values(), START) for alt in options for w in _SLOT.sub(" ", alt).split()}
  return sorted(found | {"an"})
