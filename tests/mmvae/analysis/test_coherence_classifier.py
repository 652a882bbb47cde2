"""The coherence classifiers: which one fits, and the softmax regression against scikit-learn's."""

import numpy as np
import pytest
from sklearn import linear_model, svm

from mmvae import modalities
from mmvae.analysis import coherence


def _classes(seed, n_classes, per_class, dim, noise):
  """Gaussian classes around random centres: [N, D] features, [N] labels (strings, as attributes are)."""
  rng = np.random.default_rng(seed)
  centres = np.random.default_rng(99).normal(size=(n_classes, dim))
  y = np.repeat(np.arange(n_classes), per_class)
  x = centres[y] + noise * rng.normal(size=(len(y), dim))
  return (5.0 + 3.0 * x).astype(np.float32), np.array([f"c{i:03d}" for i in y])  # unstandardised on purpose


def test_softmax_matches_sklearn_logistic_regression_on_many_classes():
  x, y = _classes(0, 150, 20, 24, 1.0)  # linearly separable centres, noisy: ~13% errors
  xt, yt = _classes(1, 150, 6, 24, 1.0)
  clf = coherence.fit(x, y, seed=0)
  assert isinstance(clf, coherence.SoftmaxClassifier)  # 150 classes: past the SVM's limit
  ours = np.mean(clf.predict(xt) == yt)
  mean, sd = x.mean(0), x.std(0)
  ref = linear_model.LogisticRegression(max_iter=2000).fit((x - mean) / sd, y)
  theirs = np.mean(ref.predict((xt - mean) / sd) == yt)
  assert 0.5 < theirs < 0.99  # neither trivial nor hopeless, so the comparison means something
  assert ours >= theirs - 0.03, (ours, theirs)
  assert set(clf.classes_) == set(y) and clf.predict(xt).dtype == yt.dtype
  # Seeded: the same fit again; another seed orders the minibatches differently.
  again = coherence.fit(x, y, seed=0)
  np.testing.assert_array_equal(again.w_KxC, clf.w_KxC)
  assert not np.array_equal(coherence.fit(x, y, seed=1).w_KxC, clf.w_KxC)


def test_wide_features_are_projected_and_still_classified(monkeypatch):
  monkeypatch.setattr(coherence, "SOFTMAX_DIM", 12)
  x, y = _classes(2, 120, 12, 40, 0.3)
  xt, yt = _classes(3, 120, 4, 40, 0.3)
  clf = coherence.SoftmaxClassifier.fit(x, y, seed=0, steps=300)
  assert clf.project_DxK.shape == (40, 12)
  # The projection is onto the leading principal components of the standardised features.
  z = (x - x.mean(0)) / x.std(0)
  top = np.linalg.svd(z - z.mean(0), full_matrices=False)[2][:12]
  np.testing.assert_allclose(np.abs(top @ clf.project_DxK), np.eye(12), atol=2e-3)
  assert np.mean(clf.predict(xt) == yt) > 0.8


def test_the_svm_stays_for_few_classes_and_prediction_is_blocked(monkeypatch):
  x, y = _classes(4, 5, 40, 8, 0.5)
  small = coherence.fit(x, y)
  assert isinstance(small, svm.SVC)
  assert coherence.use_svm(coherence.SVM_MAX_CLASSES) and not coherence.use_svm(coherence.SVM_MAX_CLASSES + 1)
  # A large set of few classes: the SVM still, on a seeded subsample of SVM_MAX_EXAMPLES, as before.
  monkeypatch.setattr(coherence, "SVM_MAX_EXAMPLES", 60)
  assert len(coherence.fit(x, y).support_) <= 60 < len(x)
  m = modalities.Modality("v", "vector", (8,), "float32")
  monkeypatch.setattr(coherence, "PREDICT_BLOCK", 7)  # 200 rows in 29 blocks
  np.testing.assert_array_equal(coherence.predict(small, m, x), small.predict(x))
  with pytest.raises(ValueError, match="two classes"):
    coherence.fit(x[:10], np.zeros(10))
