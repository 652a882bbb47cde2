"""Coherence of generated faces: an independent pixel classifier trained on real training faces.

Chance level of an accuracy is sum_c P(pred = c) P(true = c): the accuracy the same predictions
would get if they were independent of the truth. It equals the accuracy of a classifier that
ignores its input (e.g. a collapsed decoder whose faces all get one label), whatever the class mix.
"""

import numpy as np
import threadpoolctl
from sklearn import linear_model, pipeline, preprocessing

MAX_TRAIN_IMAGES = 20000  # a seeded subsample beyond this keeps the classifier to minutes on VoxCeleb1
MAX_CLASSES = 50  # attributes with more values (e.g. nationality) are not scored


def pixels(faces) -> np.ndarray:
  """[N, ...] faces (uint8 0..255 or float 0..1) -> float32 [N, D] in [0, 1]."""
  x = np.asarray(faces)
  x = x.astype(np.float32) / 255.0 if x.dtype == np.uint8 else x.astype(np.float32)
  return x.reshape(len(x), -1)


def frames_with_targets(faces_NxKxSxSxC, targets_N):
  """Every frame of every example as its own image, with the example's target repeated."""
  faces = np.asarray(faces_NxKxSxSxC)
  k = faces.shape[1]
  return faces.reshape((-1,) + faces.shape[2:]), np.repeat(np.asarray(targets_N), k)


def train_classifier(images, targets, seed: int = 0, max_images: int = MAX_TRAIN_IMAGES):
  """Standardised pixels -> multinomial logistic regression."""
  x, y = pixels(images), np.asarray(targets)
  if len(np.unique(y)) < 2:
    raise ValueError("the coherence classifier needs at least two classes in the training faces")
  if len(x) > max_images:
    keep = np.random.default_rng(seed).choice(len(x), max_images, replace=False)
    x, y = x[keep], y[keep]
  clf = pipeline.make_pipeline(preprocessing.StandardScaler(),
                               linear_model.LogisticRegression(C=0.1, max_iter=500, random_state=seed))
  # Small fits lose more to BLAS threads on a busy machine than they gain.
  with threadpoolctl.threadpool_limits(limits=1 if x.size < 20_000_000 else None):
    return clf.fit(x, y)


def independence_chance(pred, true) -> float:
  """sum_c P(pred = c) P(true = c)."""
  pred, true = np.asarray(pred), np.asarray(true)
  classes = np.union1d(np.unique(pred), np.unique(true))
  return float(sum(np.mean(pred == c) * np.mean(true == c) for c in classes))


def example_attributes(labels, identities: list, names) -> dict:
  """{attribute: per-example value (str, '' when unknown)} from the manifest's identity records."""
  out = {}
  for name in names:
    out[name] = np.array([str(identities[int(i)].get(name, "") or "") for i in labels])
  return out


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


def coherence_scores(train_faces, train_labels, test_real_faces, test_labels, generated_faces,
                     identities: list, attributes=("gender",), seed: int = 0) -> tuple[dict, list]:
  """Identity and attribute accuracy of faces generated from test voices, with chance levels.

  train_faces / test_real_faces: [N, K, S, S, C]; generated_faces: [M, S, S, C], one per test
  example (same order as test_labels). Returns (metrics with 'coherence.' keys, notes for the report).
  """
  metrics, notes = {}, []
  train_labels, test_labels = np.asarray(train_labels), np.asarray(test_labels)
  targets = {"identity": (train_labels, test_labels)}
  open_set = not set(test_labels.tolist()) <= set(train_labels.tolist())
  if open_set:
    targets.pop("identity")
    notes.append("Identity accuracy is not defined: the test identities are not among the training "
                 "identities the classifier knows (open-set split); only attributes are scored.")
  metrics["coherence.open_set"] = bool(open_set)
  tr_attr = example_attributes(train_labels, identities, attributes)
  te_attr = example_attributes(test_labels, identities, attributes)
  for name in attributes:
    why = _scorable(tr_attr[name], te_attr[name])
    if why:
      notes.append(f"Attribute {name!r} not scored: {why}.")
      continue
    targets[name] = (tr_attr[name], te_attr[name])
  for name, (tr_y, te_y) in targets.items():
    tr_known = tr_y != "" if tr_y.dtype.kind == "U" else np.ones(len(tr_y), bool)
    te_known = te_y != "" if te_y.dtype.kind == "U" else np.ones(len(te_y), bool)
    images, y = frames_with_targets(np.asarray(train_faces)[tr_known], tr_y[tr_known])
    clf = train_classifier(images, y, seed=seed)
    real_x, real_y = frames_with_targets(np.asarray(test_real_faces)[te_known], te_y[te_known])
    real_pred = clf.predict(pixels(real_x))
    gen_pred = clf.predict(pixels(np.asarray(generated_faces)[te_known]))
    true = te_y[te_known]
    metrics[f"coherence.{name}_accuracy"] = float(np.mean(gen_pred == true))
    metrics[f"coherence.{name}_accuracy_chance"] = independence_chance(gen_pred, true)
    metrics[f"coherence.real_{name}_accuracy"] = float(np.mean(real_pred == real_y))
    metrics[f"coherence.real_{name}_accuracy_chance"] = independence_chance(real_pred, real_y)
    metrics[f"coherence.{name}_classes"] = int(len(clf.classes_))
  return metrics, notes
