"""M-CVS (mmvae/zoo/mcvs.py): the attention and the loss against NumPy, frozen stages, stages.json, --from."""

import hashlib
import json
import pathlib
import shutil

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy import special

from mmvae import config as config_lib
from mmvae import data, inference, zoo
from mmvae.modalities import Modality
from mmvae.train import checkpoints as ckpt_lib
from mmvae.train import entry
from mmvae.zoo import mcvs

SPECS = {"a": Modality("a", "vector", (5,), "float32"), "b": Modality("b", "vector", (3,), "float32"),
         "c": Modality("c", "vector", (4,), "float32")}
MARGINS = (0.3, 0.2, 0.4)


def _config(stage=0, plan="stagewise", dropout=0.0, **loss):
  c = config_lib.load("mcvs:tiny", [f"model.stage={stage}", f"model.plan={plan}", f"model.partner_dropout={dropout}",
                                    "data.modalities=()", "model.space_dim=6", "model.attention_dim=5"])
  c.model.stages = (("a", "b"), ("c",))
  c.loss.triplet_margins = MARGINS
  for k, v in loss.items():
    c.loss[k] = v
  return c


def _model(stage=0, plan="stagewise", dropout=0.0, **loss):
  cfg = _config(stage, plan, dropout, **loss)
  space = ("a", "b") if stage == 1 and plan == "stagewise" else ("a", "b", "c")  # a stage's run: its space only
  return zoo.get("mcvs").build(cfg, {m: SPECS[m] for m in space}, seed=3, num_classes=4), cfg


def _batch(n=8, seed=0):
  rng = np.random.default_rng(seed)
  return {"label": (np.arange(n) % 4).astype(np.int32), **{m: rng.normal(size=(n,) + s.shape).astype(np.float32)
                                                           for m, s in SPECS.items()}}


def _np(x):
  return np.asarray(x[...], np.float64)


def _np_attention(block, g_i, g_s):
  """The paper's equations written out: e = W_e tanh(W_i g_i + W_s g_s + W_is (g_i * g_s) + b)."""
  pre = g_i @ _np(block.w_i.kernel) + _np(block.w_i.bias) + g_s @ _np(block.w_s.kernel) + (g_i * g_s) @ _np(
      block.w_is.kernel)
  e = np.tanh(pre) @ _np(block.w_e.kernel)
  alpha = np.exp(e - e.max(1, keepdims=True))
  alpha /= alpha.sum(1, keepdims=True)
  gi, gs = alpha * g_i + g_i, alpha * g_s + g_s
  with np.errstate(invalid="ignore"):  # the side of an absent (zero) partner is 0/0: never used
    return gi / np.linalg.norm(gi, axis=1, keepdims=True), gs / np.linalg.norm(gs, axis=1, keepdims=True)


def _unit(x):
  return x / np.linalg.norm(x, axis=1, keepdims=True)


def test_aligned_attention_is_the_papers_equations():
  model, _ = _model()
  rng = np.random.default_rng(1)
  g_i, g_s = rng.normal(size=(7, 6)), rng.normal(size=(7, 6))
  out_i, out_s = model.blocks["c__a"](jnp.asarray(g_i, jnp.float32), jnp.asarray(g_s, jnp.float32))
  want_i, want_s = _np_attention(model.blocks["c__a"], g_i, g_s)
  np.testing.assert_allclose(out_i, want_i, rtol=1e-5, atol=1e-6)
  np.testing.assert_allclose(out_s, want_s, rtol=1e-5, atol=1e-6)
  np.testing.assert_allclose(np.linalg.norm(out_i, axis=1), 1.0, rtol=1e-6)


def test_a_lone_example_is_embedded_with_a_zero_partner_in_each_of_its_own_blocks():
  model, _ = _model()
  x = _batch(6)
  g = {m: np.asarray(model.features(m, x[m]), np.float64) for m in SPECS}
  zero = np.zeros_like(g["a"])
  # a and b entered together: their block (b, a) is theirs; a is its reference side, b its query side.
  want = {"a": _np_attention(model.blocks["b__a"], zero, g["a"])[1],
          "b": _np_attention(model.blocks["b__a"], g["b"], zero)[0],
          # c entered later with a block against each of them: the unit mean of its two sides.
          "c": _unit(_np_attention(model.blocks["c__a"], g["c"], zero)[0]
                     + _np_attention(model.blocks["c__b"], g["c"], zero)[0])}
  for m in SPECS:
    v, logvar = model.encode(m, x[m])
    np.testing.assert_allclose(v, want[m], rtol=1e-5, atol=1e-6, err_msg=m)
    assert not np.any(logvar)
    # One example at a time gives the same vector: nothing of the other rows enters.
    np.testing.assert_allclose(model.encode(m, x[m][2:3])[0][0], v[2], rtol=1e-5, atol=1e-6)
  assert model.own_blocks("a") == [("b", "a")] and model.own_blocks("c") == [("c", "a"), ("c", "b")]


def _np_triplet(anchor, other, labels, margin, same_set):
  """Batch-hard triplet by a plain loop over anchors (squared distance of unit vectors)."""
  total, count = 0.0, 0
  for i in range(len(anchor)):
    d = [float(np.sum((anchor[i] - other[j]) ** 2)) for j in range(len(other))]
    pos = [d[j] for j in range(len(other)) if labels[j] == labels[i] and not (same_set and j == i)]
    neg = [d[j] for j in range(len(other)) if labels[j] != labels[i]]
    if pos and neg:
      total += max(0.0, margin + max(pos) - min(neg))
      count += 1
  return total / max(count, 1)


@pytest.mark.parametrize("stage", [1, 2])
def test_stage_loss_is_the_papers_triplet_and_cross_entropy_against_a_loop(stage):
  model, cfg = _model(stage, triplet_weight=1.3, identity_weight=0.7)
  x = _batch(8)
  labels = x["label"]
  g = {m: np.asarray(model.features(m, x[m]), np.float64) for m in model.specs}
  assert list(model.specs) == (["a", "b"] if stage == 1 else ["a", "b", "c"])  # stage 1: c is not built yet
  if stage == 1:  # a and b are new: each with its paired partner (dropout 0)
    vb, va = _np_attention(model.blocks["b__a"], g["b"], g["a"])
    vec, new, pairs = {"a": va, "b": vb}, ["a", "b"], [("b", "a")]
  else:  # c is new with its partners; a and b enter by their fixed lone vectors
    vec = {m: np.asarray(model.encode(m, x[m])[0], np.float64) for m in ("a", "b")}
    vec["c"] = _unit(_np_attention(model.blocks["c__a"], g["c"], g["a"])[0]
                     + _np_attention(model.blocks["c__b"], g["c"], g["b"])[0])
    new, pairs = ["c"], [("c", "a"), ("c", "b")]
  terms = []
  for xm, ym in pairs:
    t = _np_triplet(vec[xm], vec[xm], labels, MARGINS[0], True)
    if ym in new:
      t += _np_triplet(vec[ym], vec[ym], labels, MARGINS[1], True)
    t += 0.5 * (_np_triplet(vec[xm], vec[ym], labels, MARGINS[2], False)
                + _np_triplet(vec[ym], vec[xm], labels, MARGINS[2], False))
    terms.append(t)
  w, b = _np(model.classifier.kernel), _np(model.classifier.bias)
  ce = np.mean([np.mean(special.logsumexp(vec[m] @ w + b, axis=1) - (vec[m] @ w + b)[np.arange(8), labels])
                for m in new])
  keys = jax.random.split(jax.random.key(0), 8)
  total, metrics = mcvs.loss(model, x, keys, None, 0, cfg.loss)
  assert float(metrics["triplet"]) == pytest.approx(np.mean(terms), rel=1e-5, abs=1e-6)
  assert float(metrics["identity_ce"]) == pytest.approx(ce, rel=1e-5)
  assert float(total) == pytest.approx(1.3 * np.mean(terms) + 0.7 * ce, rel=1e-5)


def test_partner_dropout_draws_one_coin_per_example_and_block_from_the_examples_key():
  model, cfg = _model(2, dropout=0.5, triplet_weight=1.0, identity_weight=0.0)
  x = _batch(8)
  keys = jax.random.split(jax.random.key(5), 8)
  full = float(mcvs.loss(model, x, keys, None, 0, cfg.loss)[0])
  # The same examples with the same keys in another order give the same loss (batch-hard terms are sets).
  perm = np.random.default_rng(0).permutation(8)
  shuffled = {k: v[perm] for k, v in x.items()}
  assert float(mcvs.loss(model, shuffled, keys[perm], None, 0, cfg.loss)[0]) == pytest.approx(full, rel=1e-6)
  # Other keys drop other partners.
  other = jax.random.split(jax.random.key(6), 8)
  assert float(mcvs.loss(model, x, other, None, 0, cfg.loss)[0]) != pytest.approx(full, rel=1e-6)


def test_the_joint_plan_is_one_stage_with_a_block_per_pair_and_every_parameter_trainable():
  model, _ = _model(0, plan="joint")
  assert model.plan == (("a", "b", "c"),) and set(model.blocks) == {"b__a", "c__a", "c__b"}
  assert model.own_blocks("a") == [("b", "a"), ("c", "a")]
  from flax import nnx
  assert all(model.trainable(n) for n in ckpt_lib.flatten(nnx.state(model, nnx.Param)))


@pytest.mark.parametrize("override,key", [("model.plan=sideways", "model.plan"),
                                          ("model.partner_dropout=1.0", "model.partner_dropout"),
                                          ("model.space_dim=0", "model.space_dim")])
def test_bad_mcvs_settings_name_the_key(override, key):
  cfg = _config()
  k, v = override.split("=")
  section, name = k.split(".")
  cfg[section][name] = type(cfg[section][name])(v) if not isinstance(cfg[section][name], str) else v
  with pytest.raises(ValueError, match=key.replace(".", r"\.")):
    mcvs.check_config(cfg)
  cfg = _config()
  cfg.model.stages = (("a",), ("b", "c"))
  with pytest.raises(ValueError, match="first stage"):
    mcvs.check_config(cfg)


# ---------------------------------------------------------------- stage-wise training on real AV-digits files


@pytest.fixture(scope="module")
def avdigits(shared_data, tmp_path_factory):
  """A small AV-digits set (audio, image, text of 10 digits) prepared from the real FSDD and MNIST files."""
  from data_prep import prepare
  root = tmp_path_factory.mktemp("avd")
  (root / "fsdd" / "recordings").mkdir(parents=True)
  for digit in range(10):
    for speaker in ("jackson", "theo"):
      for take in (0, 7, 20, 21, 22):
        name = f"{digit}_{speaker}_{take}.wav"
        shutil.copy(shared_data / "fsdd/recordings" / name, root / "fsdd/recordings" / name)
  prepare.prepare_avdigits(root / "fsdd", shared_data / "mnist-t10k", root / "data", config="avdigits:tiny", workers=1)
  return root / "data"


def _stage_config(*overrides):
  return config_lib.load("mcvs:tiny", ["data.segment_samples=16000", "train.num_steps=4", "train.learning_rate=0.01",
                                       *overrides])


def _flat(run: pathlib.Path, which="last"):
  final = json.loads((run / "final.json").read_text())
  step = final["step"] if which == "last" else final["best_step"]
  flat, problem = ckpt_lib._read(run / "checkpoints" / which / str(step))
  assert problem is None
  return flat


def _digest(flat: dict, names: list[str]) -> str:
  h = hashlib.sha256()
  for name in sorted(names):
    value = np.ascontiguousarray(flat["params." + name])
    h.update(f"{name}:{value.shape}:{value.dtype}".encode())
    h.update(value.tobytes())
  return h.hexdigest()


def test_a_later_stage_leaves_every_existing_branch_bit_identical(avdigits, tmp_path, capsys):
  cfg = _stage_config('data.modalities=("image","text","audio")')
  cfg.model.stages = (("image", "text"), ("audio",))
  final = entry.train(cfg, avdigits, tmp_path / "run")
  # Stage 2 starts from stage 1's best checkpoint, the one `mmvae analyze` of stage 1 shows.
  one, two = _flat(tmp_path / "run/stages/1", "best"), _flat(tmp_path / "run/stages/2")
  params = [k[len("params."):] for k in two if k.startswith("params.")]
  new = [n for n in params if n.split(".")[1] == "audio" or n.startswith("blocks.audio__")]
  old = [n for n in params if n not in new]
  assert len(new) > 8 and any(n.startswith("classifier") for n in old)
  moments = {k.split(".mu.", 1)[1] for k in two if k.startswith("opt_state.") and ".mu." in k}
  assert moments == set(new)  # Adam keeps state for the trained parameters only
  for n in old:  # frozen: the parameter does not move
    np.testing.assert_array_equal(two["params." + n], one["params." + n], err_msg=n)
  assert not any("params." + n in one for n in new)  # stage 1's run holds only its space's modalities
  mu = {k.split(".mu.", 1)[1]: v for k, v in two.items() if k.startswith("opt_state.") and ".mu." in k}
  assert all(np.any(mu[n]) for n in new if "kernel" in n)  # and the new ones did train
  # stages.json: per stage the space, the trainable count and the branch digests (recomputed here).
  stages = json.loads((tmp_path / "run/stages.json").read_text())
  assert [s["modalities"] for s in stages] == [["image", "text"], ["image", "text", "audio"]]
  assert stages[1]["trainable_params"] == sum(two["params." + n].size for n in new)
  for m in ("image", "text"):
    own = [n for n in params if n.split(".")[1] == m or n.startswith("blocks.text__image")]
    assert stages[0]["branch_sha256"][m] == stages[1]["branch_sha256"][m] == _digest(two, own)
  assert all(s["seconds_per_iteration"] > 0 for s in stages) and final["stages"] == stages
  # The space's existing vectors, hence every retrieval number among them, are exactly those of stage 1.
  test = data.Dataset(avdigits).arrays("test")
  specs = data.Dataset(avdigits).modalities(("image", "text"))
  lat = [inference.encode_split(inference.model_encoder(ckpt_lib.load_run(tmp_path / f"run/stages/{k}", which)[0]),
                                test, specs) for k, which in ((1, "best"), (2, "last"))]
  for m in ("image", "text"):
    np.testing.assert_array_equal(lat[0][f"{m}_mu"], lat[1][f"{m}_mu"])
  assert "stage 2/2" in capsys.readouterr().out
  # The workdir names the last stage for analysis, and rerunning resumes nothing: every stage is done.
  assert ckpt_lib.run_folder(tmp_path / "run") == tmp_path / "run/stages/2"
  again = entry.train(cfg, avdigits, tmp_path / "run")
  assert again["stages"] == stages and again["params_sha256"] == final["params_sha256"]


def test_a_modality_is_added_to_a_trained_space_with_from(avdigits, tmp_path):
  base = _stage_config('data.modalities=("image","text")')
  base.model.stages = (("image", "text"),)
  entry.train(base, avdigits, tmp_path / "old")
  grown = _stage_config('data.modalities=("image","text","audio")')
  grown.model.stages = (("image", "text"), ("audio",))
  final = entry.train(grown, avdigits, tmp_path / "new", init_from=tmp_path / "old")
  old, new = (json.loads((tmp_path / d / "stages.json").read_text()) for d in ("old", "new"))
  assert new[0]["from"] == str((tmp_path / "old").absolute()) and new[0]["run"] == old[0]["run"]
  assert [s["stage"] for s in new] == [1, 2] and not (tmp_path / "new/stages/1").exists()
  for m in ("image", "text"):
    assert new[1]["branch_sha256"][m] == old[0]["branch_sha256"][m]
  assert final["step"] == 4
