"""What the voxceleb1 features give a supervised linear classifier, cross-validated by video on `mmvae sweep --cv`'s folds.

  python experiments/linear_probe.py --data DATA [--k 5] [--fold-seed 0] [--out runs/probe.md]

DATA is a prepared VoxCeleb1-layout dataset (`mmvae prep voxceleb1 --config voxceleb1`: MFCC statistics and face
frames). Its splits are pooled and folded by video exactly as `mmvae sweep --cv K` folds the corpus (data_prep/
folds.video_folds with the same seed: round k tests on fold k, validates on fold k+1, trains on the rest). Per
round, for each modality, a logistic regression predicts the identity from:
  voice  the standardised MFCC statistics (`audio`);
  face   the PCA (50 components, fitted on train) of the standardised mean of the stored frames (`face`).
Its regularisation C is chosen on the validation fold (mean of the two directions' MRR); the test fold is read
once. Retrieval ranks the test faces for each test voice (and back) by the cosine of the two class-probability
vectors, scored with mmvae.metrics.retrieval as every mmvae report is. The table gives the mean over folds with a
95% t-interval (mmvae.cv.t_interval), chance, and each modality's identity accuracy.

This is a reference point, not a model: it sees identity labels, ranks by closed-set class posteriors (the test
identities are the training identities) and draws nothing. It says how far these features carry across videos
when the identities are known.
"""

import argparse
import json
import pathlib

import numpy as np

GRID = (0.01, 0.1, 1.0)  # logistic-regression C, chosen on the validation fold
FACE_COMPONENTS = 50
DIRECTIONS = (("voice", "face"), ("face", "voice"))


def features(arrays: dict) -> dict[str, np.ndarray]:
  """{voice, face}: one row per example (MFCC statistics; the mean face over the stored frames, flattened)."""
  face = np.asarray(arrays["face"], np.float64)
  if face.ndim == 5:  # [N, frames, H, W, C]
    face = face.mean(axis=1)
  return {"voice": np.asarray(arrays["audio"], np.float64).reshape(len(face), -1),
          "face": face.reshape(len(face), -1) / 255.0}


def rounds(ids, k: int, seed: int = 0) -> list[dict[str, np.ndarray]]:
  """Per round k: boolean masks train / validation / test over the examples, folded by video as `sweep --cv`."""
  from data_prep import folds
  lines = [f"1 {i}" for i in ids]
  assign = folds.video_folds(lines, k, seed)
  fold = np.array([assign[str(i).split("/")[1]] for i in ids])
  out = []
  for test in range(k):
    roles = np.array([folds.role(int(f), k, test) for f in fold])
    out.append({r: roles == r for r in ("train", "validation", "test")})
  return out


def fit(x_train, y_train, c: float, components: int = 0):
  """A fitted standardise (-> PCA) -> logistic regression pipeline."""
  from sklearn.decomposition import PCA
  from sklearn.linear_model import LogisticRegression
  from sklearn.pipeline import make_pipeline
  from sklearn.preprocessing import StandardScaler
  steps = [StandardScaler()]
  if components:
    steps.append(PCA(min(components, len(x_train) - 1), random_state=0))
  steps.append(LogisticRegression(C=c, max_iter=10_000))
  return make_pipeline(*steps).fit(x_train, y_train)


def retrieval(prob: dict[str, np.ndarray], labels) -> dict[str, dict]:
  """{'voice_to_face': summary, 'face_to_voice': summary} of mmvae's retrieval metrics on class-probability cosines."""
  from mmvae.metrics import retrieval as retrieval_lib
  return {f"{q}_to_{g}": retrieval_lib.retrieval_metrics(prob[q], prob[g], labels, labels, progress=False)
          for q, g in DIRECTIONS}


def _probabilities(models: dict, feats: dict, mask) -> dict[str, np.ndarray]:
  return {m: models[m].predict_proba(feats[m][mask]) for m in feats}


def probe(arrays: dict, k: int = 5, seed: int = 0, grid=GRID) -> dict:
  """Per round: the chosen C, validation score, test MRR / R@1 / chance per direction and identity accuracy."""
  feats, labels = features(arrays), np.asarray(arrays["label"])
  out = []
  for r, masks in enumerate(rounds(arrays["id"], k, seed)):
    tr, va, te = masks["train"], masks["validation"], masks["test"]
    best = None
    for c in grid:
      models = {m: fit(feats[m][tr], labels[tr], c, FACE_COMPONENTS if m == "face" else 0) for m in feats}
      val = retrieval(_probabilities(models, feats, va), labels[va])
      score = float(np.mean([v["mrr"] for v in val.values()]))
      if best is None or score > best[0]:
        best = (score, c, models)
    score, c, models = best
    prob = _probabilities(models, feats, te)
    test = retrieval(prob, labels[te])
    row = {"fold": r, "C": c, "validation_score": score, "test_utterances": int(te.sum())}
    for direction, summary in test.items():
      for key in ("mrr", "mrr_chance", "recall@1", "recall@1_chance"):
        row[f"{direction}.{key}"] = summary[key]
    for m in feats:
      row[f"{m}_identity_accuracy"] = float((models[m].classes_[prob[m].argmax(1)] == labels[te]).mean())
    out.append(row)
  return {"k": k, "fold_seed": seed, "grid": list(grid), "rounds": out}


def markdown(result: dict) -> str:
  from mmvae import cv
  rows = result["rounds"]
  keys = [("voice_to_face.mrr", "voice->face MRR"), ("face_to_voice.mrr", "face->voice MRR"),
          ("voice_to_face.recall@1", "voice->face R@1"), ("voice_identity_accuracy", "voice: identity accuracy"),
          ("face_identity_accuracy", "face: identity accuracy")]
  lines = [f"# Linear probe, {result['k']}-fold cross-validation by video (fold seed {result['fold_seed']})", "",
           "| metric | mean over folds [95% t-interval] | chance | per fold |", "|---|---:|---:|---|"]
  for key, title in keys:
    chance = f"{np.mean([r[key + '_chance'] for r in rows]):.3f}" if key + "_chance" in rows[0] else ""
    per_fold = ", ".join(f"{r[key]:.2f}" for r in rows)
    lines.append(f"| {title} | {cv._cell(cv.t_interval([r[key] for r in rows]))} | {chance} | {per_fold} |")
  lines += ["", f"C chosen on validation per fold: {', '.join(str(r['C']) for r in rows)}; test utterances per fold: "
            f"{', '.join(str(r['test_utterances']) for r in rows)}.", ""]
  return "\n".join(lines)


def main(argv=None) -> int:
  parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                   formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument("--data", required=True, help="a prepared VoxCeleb1-layout dataset (mmvae prep voxceleb1)")
  parser.add_argument("--k", type=int, default=5, help="folds, as mmvae sweep --cv K (default 5)")
  parser.add_argument("--fold-seed", type=int, default=0, help="the folds' seed, as mmvae sweep --cv (default 0)")
  parser.add_argument("--out", help="write the table here (.md) and the rounds beside it (.json)")
  args = parser.parse_args(argv)
  from mmvae import data
  dataset = data.Dataset(args.data)
  names = ("audio", "face", "label", "id")
  arrays = {n: np.concatenate([dataset.arrays(s)[n] for s in dataset.splits]) for n in names}
  result = probe(arrays, args.k, args.fold_seed)
  text = markdown(result)
  print(text)
  if args.out:
    out = pathlib.Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(text)
    out.with_suffix(".json").write_text(json.dumps(result, indent=1))
  return 0


if __name__ == "__main__":
  raise SystemExit(main())
