"""Coherence of generated data: an independent classifier per modality, trained on real training data.

Each modality g gets its own classifier of the dataset's label, fitted on REAL training examples of g only,
never on anything a model made: up to SVM_MAX_CLASSES classes an RBF support-vector machine (kernel width
from the features' variance; a seeded subsample of SVM_MAX_EXAMPLES training examples), which reads real data
best; beyond, a softmax (multinomial logistic) regression on standardised features, trained with Adam in
JAX, which scales to VoxCeleb1's 1,251 identities and 150,000 test rows. The features are the modality
kind's hook `classifier_features(m, data_N) -> [N, D]` (mmvae/modalities):
  image        pixels in [0, 1] (every stored frame is a training example)
  spectrogram  a [T, F] spectrogram's per-bin mean and std over time; a pooled vector as it is
  tokens       bag-of-words counts over the vocabulary (padding, id 0, left out)
  other kinds  the values, flattened (the default, modalities/base.py)

Cross coherence q -> g: the share of test examples whose g decoded from q's posterior mean the g
classifier assigns the example's own label. Chance of an accuracy is sum_c P(pred = c) P(true = c):
what the same predictions would score if they were independent of the truth (a collapsed decoder
whose outputs all get one label scores exactly its chance, whatever the class mix).

Joint coherence: decode z ~ N(0, I) into every modality; the share of samples on whose class every
modality's classifier agrees. Chance: sum_c prod_m P_m(c), P_m the marginal frequency of class c among
modality m's predictions on these samples: the agreement of independent predictions with those marginals.

Identity attributes (gender, ...) of image modalities are scored the same way as the label.

Given each test row's cluster (its video, or its identity on an open-set split: bootstrap.choose_clusters), every
accuracy of test rows gets a 95% interval, `accuracy_ci_low` / `accuracy_ci_high`, from the same clustered
bootstrap as retrieval (mmvae/metrics/bootstrap.py) over the per-row correct flags.
"""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import optax
import threadpoolctl
from sklearn import svm

from mmvae import modalities
from mmvae.metrics import bootstrap

# A kernel machine fits in O(N^2): a seeded subsample beyond SVM_MAX_EXAMPLES keeps it to minutes. It predicts
# through every pair of classes (one-vs-one), so beyond SVM_MAX_CLASSES (VoxCeleb1's 1,251: 781,875 pairs) the
# softmax regression classifies instead.
SVM_MAX_EXAMPLES = 10000
SVM_MAX_CLASSES = 100
# Training examples of the softmax regression (a seeded subsample beyond), so its features stay in bounded memory.
MAX_TRAIN_EXAMPLES = 60000
SOFTMAX_DIM = 256  # wider features are projected on their leading principal components: step cost fixed
SOFTMAX_STEPS, SOFTMAX_BATCH, SOFTMAX_LR, SOFTMAX_WEIGHT_DECAY = 600, 1024, 0.005, 1e-2
PREDICT_BLOCK = 8192  # rows whose features are formed at once when predicting
MAX_CLASSES = 50  # attributes with more values (e.g. nationality) are not scored


def features(m, data) -> np.ndarray:
  """What modality m's classifier sees of data [N, ...] (stored or decoded, one frame per example): its kind's
  classifier_features hook."""
  return np.asarray(modalities.optional(m, "classifier_features")(m, np.asarray(data)), np.float32)


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


def use_svm(n_classes: int) -> bool:
  """Whether the RBF SVM (few classes) or the softmax regression (many) classifies."""
  return n_classes <= SVM_MAX_CLASSES


def classifier_kind(clf) -> str:
  """Which classifier a fitted one is: 'rbf_svm' or 'softmax' (recorded as coherence.<g>.[<attr>_]classifier)."""
  return "softmax" if isinstance(clf, SoftmaxClassifier) else "rbf_svm"


def _max_examples(targets) -> int:
  return SVM_MAX_EXAMPLES if use_svm(len(np.unique(np.asarray(targets)))) else MAX_TRAIN_EXAMPLES


def fit(x_NxD, targets, seed: int = 0):
  """Features -> an RBF SVM (gamma = 1 / (D * variance)) for few classes, a SoftmaxClassifier for many.

  The SVM stays wherever it can run because the coherence it measures cannot exceed the classifier's own
  accuracy on real data. Real MNIST test digits read correctly (2,000 of them), trained on 2,400 / 8,000:
  SVM 94.0% / 98.2%, scikit-learn's LogisticRegression on standardised pixels 87.7% / 90.3%, the softmax
  regression here 81.7% / 91.8% (spoken digits, SVM vs logistic regression: 98% vs 94%).
  """
  x, y = np.asarray(x_NxD, np.float32), np.asarray(targets)
  n_classes = len(np.unique(y))
  if n_classes < 2:
    raise ValueError("a coherence classifier needs at least two classes in the training data")
  x, y = _subsample(x, y, seed, _max_examples(y))
  if not use_svm(n_classes):
    return SoftmaxClassifier.fit(x, y, seed)
  clf = svm.SVC(C=10.0, gamma="scale", random_state=seed)
  # Small fits lose more to BLAS threads on a busy machine than they gain.
  with threadpoolctl.threadpool_limits(limits=1 if x.size < 20_000_000 else None):
    return clf.fit(x, y)


@functools.partial(jax.jit, static_argnames=("n_classes", "steps", "lr", "weight_decay"))
def _train_softmax(x_NxD, y_N, batches_SxB, n_classes: int, steps: int, lr: float, weight_decay: float):
  """(weights [D, C], bias [C]) of a softmax regression, Adam with a cosine-decayed rate over the given batches."""
  params = {"w": jnp.zeros((x_NxD.shape[1], n_classes), jnp.float32), "b": jnp.zeros(n_classes, jnp.float32)}
  opt = optax.adamw(optax.cosine_decay_schedule(lr, steps), weight_decay=weight_decay)

  def loss(p, idx_B):
    logits_BxC = x_NxD[idx_B] @ p["w"] + p["b"]
    return optax.softmax_cross_entropy_with_integer_labels(logits_BxC, y_N[idx_B]).mean()

  def step(carry, idx_B):
    p, state = carry
    updates, state = opt.update(jax.grad(loss)(p, idx_B), state, p)
    return (optax.apply_updates(p, updates), state), None

  (params, _), _ = jax.lax.scan(step, (params, opt.init(params)), batches_SxB)
  return params["w"], params["b"]


class SoftmaxClassifier:
  """Multinomial logistic regression on standardised (and, when wide, PCA-projected) features."""

  def __init__(self, classes, mean_D, scale_D, project_DxK, w_KxC, b_C):
    self.classes_, self.mean_D, self.scale_D = classes, mean_D, scale_D
    self.project_DxK, self.w_KxC, self.b_C = project_DxK, w_KxC, b_C

  @classmethod
  def fit(cls, x_NxD, targets, seed: int = 0, steps: int = SOFTMAX_STEPS, batch: int = SOFTMAX_BATCH):
    """Fits on every row (seeded minibatches, a fixed number of steps: the same fit for the same data)."""
    x = np.asarray(x_NxD, np.float32)
    classes, y = np.unique(np.asarray(targets), return_inverse=True)
    mean, scale = x.mean(0), x.std(0)
    scale = np.where(scale > 1e-6, scale, 1.0).astype(np.float32)  # constant pixels stay 0, not NaN
    z = (x - mean) / scale
    project = None
    if z.shape[1] > SOFTMAX_DIM:
      _, vecs = np.linalg.eigh((z.T @ z).astype(np.float64) / len(z))  # z is centred: its covariance
      project = np.ascontiguousarray(vecs[:, ::-1][:, :SOFTMAX_DIM], np.float32)
      z = z @ project  # not whitened: scaling up the weak components would fit their noise
    # Seeded epochs: every row once per pass, in a new order each pass.
    rng = np.random.default_rng(seed)
    b = min(batch, len(z))
    passes = -(-steps * b // len(z))
    order = np.concatenate([rng.permutation(len(z)) for _ in range(passes)])[:steps * b]
    w, bias = _train_softmax(jnp.asarray(z), jnp.asarray(y, jnp.int32), jnp.asarray(order.reshape(steps, b)),
                             len(classes), steps, SOFTMAX_LR, SOFTMAX_WEIGHT_DECAY)
    return cls(classes, mean, scale, project, np.asarray(w), np.asarray(bias))

  def predict(self, x_NxD) -> np.ndarray:
    z = (np.asarray(x_NxD, np.float32) - self.mean_D) / self.scale_D
    if self.project_DxK is not None:
      z = z @ self.project_DxK
    return self.classes_[np.argmax(z @ self.w_KxC + self.b_C, axis=1)]


def train_classifier(m, train_data, targets, seed: int = 0):
  """The classifier of modality m fitted on real training data (every stored frame) and its targets."""
  data, y = examples(m, train_data, targets)
  data, y = _subsample(data, y, seed, _max_examples(y))  # before features: memory stays bounded
  return fit(features(m, data), y, seed)


def predict(clf, m, data) -> np.ndarray:
  """Class of each row of data [N, ...], its features formed a block at a time (bounded memory)."""
  data = np.asarray(data)
  if len(data) <= PREDICT_BLOCK:
    return clf.predict(features(m, data))
  return np.concatenate([clf.predict(features(m, data[s:s + PREDICT_BLOCK]))
                         for s in range(0, len(data), PREDICT_BLOCK)])


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


def _score(metrics, key, pred, true, clusters=None, seed: int = 0) -> None:
  """`<key>accuracy` and its chance; with clusters (one per row), its bootstrap interval `<key>accuracy_ci_low/high`."""
  correct = np.asarray(pred == true, np.float64)
  metrics[f"{key}accuracy"] = float(np.mean(correct))
  metrics[f"{key}accuracy_chance"] = independence_chance(pred, true)
  if clusters is not None:
    metrics.update(bootstrap.ci_keys({f"{key}accuracy": correct}, clusters, bootstrap.N_BOOT, seed, bootstrap.LEVEL))


def _targets(m, train_labels, test_labels, identities, attributes, open_set, notes) -> dict:
  """{target name ('' = the label): (train values, test values)} scored for modality m."""
  targets = {} if open_set else {"": (train_labels, test_labels)}
  if not modalities.optional(m, "SHOWS_ATTRIBUTES") or not identities:
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
                     attributes=("gender",), seed: int = 0, clusters=None) -> tuple[dict, list]:
  """Cross coherence of every ordered pair, the classifiers on real test data, joint coherence; (metrics, notes).

  train / test: {modality: stored data [N, ...], 'label': [N]}; generated: {'<g>_from_<q>': [N, ...]} in
  the test order, and '<g>_from_prior' for joint coherence (optional); clusters: the bootstrap cluster of each
  test row (bootstrap.choose_clusters): every accuracy of test rows then gets `_ci_low` / `_ci_high`, a 95%
  interval from resampling those clusters.
  """
  if clusters is not None and len(clusters) != len(test["label"]):
    raise ValueError(f"{len(clusters)} bootstrap clusters for {len(test['label'])} test rows")
  clusters = None if clusters is None else np.asarray(clusters)
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
      metrics[f"coherence.{g}.{key}classifier"] = classifier_kind(clf)
      real, real_y = examples(m, np.asarray(test[g])[te_known], te_y[te_known])
      cl = None if clusters is None else clusters[te_known]
      real_cl = None if cl is None else examples(m, np.asarray(test[g])[te_known], cl)[1]  # one per frame too
      _score(metrics, f"coherence.real_{g}.{key}", predict(clf, m, real), real_y, real_cl, seed)
      for q in specs:
        if q != g and f"{g}_from_{q}" in generated:
          gen = np.asarray(generated[f"{g}_from_{q}"])[te_known]
          _score(metrics, f"coherence.{q}_to_{g}.{key}", predict(clf, m, gen), te_y[te_known], cl, seed)
  if all(f"{g}_from_prior" in generated for g in specs):
    if not label_classifiers:  # the label classifiers are still defined on the training labels
      label_classifiers = {g: train_classifier(m, train[g], train_labels, seed) for g, m in specs.items()}
      for g, c in label_classifiers.items():
        metrics[f"coherence.{g}.classes"], metrics[f"coherence.{g}.classifier"] = len(c.classes_), classifier_kind(c)
    metrics.update(joint_coherence({g: predict(label_classifiers[g], m, generated[f"{g}_from_prior"])
                                    for g, m in specs.items()}))
  return metrics, notes


def joint_coherence(predictions: dict) -> dict:
  """Share of prior samples on whose class every modality's classifier agrees, with its chance."""
  preds = [np.asarray(p).astype(str) for p in predictions.values()]
  agree = np.all([p == preds[0] for p in preds[1:]], axis=0) if len(preds) > 1 else np.ones(len(preds[0]), bool)
  return {"coherence.joint.accuracy": float(np.mean(agree)), "coherence.joint.accuracy_chance": agreement_chance(preds),
          "coherence.joint.samples": int(len(preds[0]))}
