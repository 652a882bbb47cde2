"""Coherence of generated data: an independent classifier per modality, trained on real training data.

Each modality g gets its own classifier of the dataset's label (an RBF support-vector machine on the
features below, kernel width from their variance), fitted on REAL training examples of g only, never on
anything a model made:
  image        pixels in [0, 1] (every stored frame is a training example)
  spectrogram  a [T, F] spectrogram's per-bin mean and std over time; a pooled vector as it is
  tokens       bag-of-words counts over the vocabulary (padding, id 0, left out)
  other kinds  the values, flattened
A kind module may offer `classifier_features(m, data_N) -> [N, D]` to replace its entry here.

Cross coherence q -> g: the share of test examples whose g decoded from q's posterior mean the g
classifier assigns the example's own label. Chance of an accuracy is sum_c P(pred = c) P(true = c):
what the same predictions would score if they were independent of the truth (a collapsed decoder
whose outputs all get one label scores exactly its chance, whatever the class mix).

Joint coherence: decode z ~ N(0, I) into every modality; the share of samples on whose class every
modality's classifier agrees. Chance: sum_c prod_m P_m(c), P_m the marginal frequency of class c among
modality m's predictions on these samples: the agreement of independent predictions with those marginals.

Identity attributes (gender, ...) of image modalities are scored the same way as the label.
"""

import numpy as np
import threadpoolctl
from sklearn import svm

# A kernel machine fits in O(N^2): a seeded subsample beyond this keeps each classifier to minutes on VoxCeleb1.
MAX_TRAIN_EXAMPLES = 10000
MAX_CLASSES = 50  # attributes with more values (e.g. nationality) are not scored
ATTRIBUTE_KINDS = ("image",)  # kinds whose generated data is also scored for identity attributes


def pixels(images) -> np.ndarray:
  """[N, ...] images (uint8 0..255 or float 0..1) -> float32 [N, D] in [0, 1]."""
  x = np.asarray(images)
  x = x.astype(np.float32) / 255.0 if x.dtype == np.uint8 else x.astype(np.float32)
  return x.reshape(len(x), -1)


def _time_stats(x) -> np.ndarray:
  x = np.asarray(x, np.float32)
  if x.ndim == 3:  # [N, T, F]: what the spectrum is, not when
    return np.concatenate([x.mean(1), x.std(1)], axis=1)
  return x.reshape(len(x), -1)


def bag_of_words(ids_NxL, vocab_size: int) -> np.ndarray:
  """Token counts [N, V] (id 0, padding, not counted)."""
  ids = np.asarray(ids_NxL, np.int64).reshape(len(ids_NxL), -1)
  counts = np.zeros((len(ids), vocab_size), np.float32)
  rows = np.repeat(np.arange(len(ids)), ids.shape[1])
  np.add.at(counts, (rows, np.clip(ids.ravel(), 0, vocab_size - 1)), 1.0)
  counts[:, 0] = 0.0
  return counts


def _vocab_size(m, data) -> int:
  vocab = m.get("vocab")
  return len(vocab) if vocab else int(np.max(data, initial=0)) + 1


FEATURES = {  # kind -> (Modality, data [N, ...] in the stored value space) -> float [N, D]
    "image": lambda m, x: pixels(x),
    "spectrogram": lambda m, x: _time_stats(x),
    "tokens": lambda m, x: bag_of_words(x, _vocab_size(m, x)),
}


def features(m, data) -> np.ndarray:
  """What modality m's classifier sees of data [N, ...] (stored or decoded, one frame per example)."""
  own = getattr(m.kind_module, "classifier_features", None)
  if own is not None:
    return np.asarray(own(m, data), np.float32)
  fn = FEATURES.get(m.kind, lambda _, x: np.asarray(x, np.float32).reshape(len(x), -1))
  return fn(m, np.asarray(data))


def examples(m, data, targets):
  """One example per stored frame when data carries a frame axis ([N, K, ...]), targets repeated."""
  data, targets = np.asarray(data), np.asarray(targets)
  if data.ndim == len(m.model_shape) + 2:
    k = data.shape[1]
    return data.reshape((-1,) + data.shape[2:]), np.repeat(targets, k)
  return data, targets


def _subsample(data, targets, seed: int, max_examples: int):
  """At most max_examples (data, target) pairs, a seeded choice: before features, so memory stays bounded."""
  if len(data) <= max_examples:
    return data, targets
  keep = np.sort(np.random.default_rng(seed).choice(len(data), max_examples, replace=False))
  return data[keep], targets[keep]


def fit(x_NxD, targets, seed: int = 0, max_examples: int = MAX_TRAIN_EXAMPLES):
  """Features -> an RBF support-vector machine (one-vs-one; gamma = 1 / (D * variance of the features)).

  Chosen over the linear classifier used before because the coherence it measures cannot exceed the
  classifier's own accuracy on real data: on AV-digits' 2,400 training digits a standardised logistic
  regression reads 87% of real test MNIST digits correctly, this 95% (spoken digits: 94% -> 98%).
  """
  x, y = _subsample(np.asarray(x_NxD, np.float32), np.asarray(targets), seed, max_examples)
  if len(np.unique(y)) < 2:
    raise ValueError("a coherence classifier needs at least two classes in the training data")
  clf = svm.SVC(C=10.0, gamma="scale", random_state=seed)
  # Small fits lose more to BLAS threads on a busy machine than they gain.
  with threadpoolctl.threadpool_limits(limits=1 if x.size < 20_000_000 else None):
    return clf.fit(x, y)


def train_classifier(m, train_data, targets, seed: int = 0):
  """The classifier of modality m fitted on real training data (every stored frame) and its targets."""
  data, y = _subsample(*examples(m, train_data, targets), seed, MAX_TRAIN_EXAMPLES)
  return fit(features(m, data), y, seed)


def predict(clf, m, data) -> np.ndarray:
  return clf.predict(features(m, data))


def independence_chance(pred, true) -> float:
  """sum_c P(pred = c) P(true = c)."""
  pred, true = np.asarray(pred), np.asarray(true)
  classes = np.union1d(np.unique(pred), np.unique(true))
  return float(sum(np.mean(pred == c) * np.mean(true == c) for c in classes))


def agreement_chance(predictions: list) -> float:
  """sum_c prod_m P_m(c): how often independent predictions with these marginals all agree."""
  classes = np.unique(np.concatenate([np.asarray(p).astype(str) for p in predictions]))
  total = 0.0
  for c in classes:
    total += float(np.prod([np.mean(np.asarray(p).astype(str) == c) for p in predictions]))
  return total


def example_attributes(labels, identities: list, names) -> dict:
  """{attribute: per-example value (str, '' when unknown)} from the manifest's identity records."""
  records = [identities[int(i)] if 0 <= int(i) < len(identities) else {} for i in labels]
  return {name: np.array([str(r.get(name, "") or "") for r in records]) for name in names}


def _scorable(train_y, test_y) -> str:
  """'' if an attribute can be scored, else why not."""
  values = set(train_y.tolist()) - {""}
  if len(values) < 2:
    return "fewer than two values in the training split"
  if len(values) > MAX_CLASSES:
    return f"more than {MAX_CLASSES} values"
  if not (set(test_y.tolist()) - {""}):
    return "unknown for every test example"
  return ""


def _score(metrics, key, pred, true) -> None:
  metrics[f"{key}accuracy"] = float(np.mean(pred == true))
  metrics[f"{key}accuracy_chance"] = independence_chance(pred, true)


def _targets(m, train_labels, test_labels, identities, attributes, open_set, notes) -> dict:
  """{target name ('' = the label): (train values, test values)} scored for modality m."""
  targets = {} if open_set else {"": (train_labels, test_labels)}
  if m.kind not in ATTRIBUTE_KINDS or not identities:
    return targets
  tr_attr = example_attributes(train_labels, identities, attributes)
  te_attr = example_attributes(test_labels, identities, attributes)
  for name in attributes:
    why = _scorable(tr_attr[name], te_attr[name])
    if why:
      notes.append(f"Attribute {name!r} of {m.name} not scored: {why}.")
    else:
      targets[name] = (tr_attr[name], te_attr[name])
  return targets


def coherence_scores(train: dict, test: dict, generated: dict, specs: dict, identities: list = (),
                     attributes=("gender",), seed: int = 0) -> tuple[dict, list]:
  """Cross coherence of every ordered pair, the classifiers on real test data, joint coherence; (metrics, notes).

  train / test: {modality: stored data [N, ...], 'label': [N]}; generated: {'<g>_from_<q>': [N, ...]} in
  the test order, and '<g>_from_prior' for joint coherence (optional).
  """
  metrics, notes = {}, []
  train_labels, test_labels = np.asarray(train["label"]), np.asarray(test["label"])
  open_set = not set(test_labels.tolist()) <= set(train_labels.tolist())
  metrics["coherence.open_set"] = bool(open_set)
  if open_set:
    notes.append("Label accuracy is not defined: the test labels are not among the training labels the "
                 "classifiers know (open-set split); attributes and joint coherence only.")
  label_classifiers = {}
  for g, m in specs.items():
    for target, (tr_y, te_y) in _targets(m, train_labels, test_labels, list(identities), attributes, open_set,
                                         notes).items():
      tr_known = tr_y != "" if tr_y.dtype.kind == "U" else np.ones(len(tr_y), bool)
      te_known = te_y != "" if te_y.dtype.kind == "U" else np.ones(len(te_y), bool)
      clf = train_classifier(m, np.asarray(train[g])[tr_known], tr_y[tr_known], seed)
      if not target:
        label_classifiers[g] = clf
      key = f"{target}_" if target else ""
      metrics[f"coherence.{g}.{key}classes"] = int(len(clf.classes_))
      real, real_y = examples(m, np.asarray(test[g])[te_known], te_y[te_known])
      _score(metrics, f"coherence.real_{g}.{key}", predict(clf, m, real), real_y)
      for q in specs:
        if q != g and f"{g}_from_{q}" in generated:
          gen = np.asarray(generated[f"{g}_from_{q}"])[te_known]
          _score(metrics, f"coherence.{q}_to_{g}.{key}", predict(clf, m, gen), te_y[te_known])
  if all(f"{g}_from_prior" in generated for g in specs):
    if not label_classifiers:  # the label classifiers are still defined on the training labels
      label_classifiers = {g: train_classifier(m, train[g], train_labels, seed) for g, m in specs.items()}
    metrics.update(joint_coherence({g: predict(label_classifiers[g], m, generated[f"{g}_from_prior"])
                                    for g, m in specs.items()}))
  return metrics, notes


def joint_coherence(predictions: dict) -> dict:
  """Share of prior samples on whose class every modality's classifier agrees, with its chance."""
  preds = [np.asarray(p).astype(str) for p in predictions.values()]
  agree = np.all([p == preds[0] for p in preds[1:]], axis=0) if len(preds) > 1 else np.ones(len(preds[0]), bool)
  return {"coherence.joint.accuracy": float(np.mean(agree)), "coherence.joint.accuracy_chance": agreement_chance(preds),
          "coherence.joint.samples": int(len(preds[0]))}
