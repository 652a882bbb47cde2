"""`mcvs`: the Multi Stage Common Vector Space (Gopalakrishnan, Udaiyar, Sah, Ptucha, 2019).

A common space of model.space_dim (D) dimensions that grows one modality at a time:

  g_m = W2 tanh(W1 f_m(x))           f_m: modality m's encoder from its kind (its mean, model.latent_dim);
                                     W1, W2: two fully connected layers of D (m's "branch")
  Aligned attention between a modality i and a reference s (block (i, s), hidden width model.attention_dim):
  e_is = W_e tanh(W_i g_i + W_s g_s + W_is (g_i * g_s) + b)      alpha_is = softmax(e_is) over the D features
  g_i' = alpha_is * g_i + g_i,   g_s' = alpha_is * g_s + g_s,    both l2-normalised

The plan (model.plan): 'stagewise' (M-CVS) trains model.stages in order (empty: the run's modalities in order, the first two
together, then one per stage): stage 1 trains its modalities
(the paper: image and text) with a block for each pair of them; each later stage adds its modalities, each
with a block against every modality already in the space (and against the other new ones), and trains
only their encoders, branches and blocks: every existing parameter is frozen (zero gradient and zero
update, so it stays bit-identical, and its Adam moments stay at zero). 'joint' (CVS) trains every
modality and one block per pair at once: the same model with a one-stage plan. The stage a model trains
is config.model.stage (1-based, 0 = the last; `mmvae train` runs the stages one after the other, each a
run on the modalities of its space, mmvae/train/stages.py); a stage's model holds only those modalities and
the blocks made so far, so stage 1 is exactly CVS on its modalities.

A block belongs to the modalities that entered the space in the stage that created it. A modality's
vector in the space is the l2-normalised mean of its sides of its own blocks.

Embedding at retrieval: an example of one modality comes alone, so in each of its blocks its partner's
features are zero (g_s = 0 for an i-side, g_i = 0 for an s-side): e = W_e tanh(W_i g_i + b) or
W_e tanh(W_s g_s + b). Training sees the same situation: each example's partner in each block is left
out with probability model.partner_dropout (else it is the paired example's features, same class), so
the lone embedding is one the loss trained. Later blocks never change an existing modality's vector.

Loss of a stage (global batch, like `contrastive`): for every pair (x, y) of modalities in the space
with x new in this stage (y new or older), the paper's triplet loss
  within x (margin triplet_margins[0]) + within y if y is new (margins[1]) + across x <-> y (margins[2]),
batch-hard on the unit vectors with same class = positive (losses.triplet), averaged over pairs, times
loss.triplet_weight; plus loss.identity_weight times the cross-entropy of a linear classifier on the
new modalities' vectors (the classifier trains in stage 1 and is frozen after, so later modalities
learn to be classified by it: they land in the same space). Older modalities enter the loss by their
fixed retrieval vectors.
"""

import itertools
import sys

import jax
import jax.numpy as jnp
from flax import nnx

from mmvae import losses, models, modalities, zoo

PLANS = ("stagewise", "joint")


def default_config() -> dict:
  """The config keys only this kind reads, at their defaults (mmvae.config_schema merges them into every config)."""
  return {"model": {
      "space_dim": 512,  # the common space's width (D)
      "attention_dim": 512,  # the aligned-attention block's hidden width
      "plan": "stagewise",  # 'stagewise' (M-CVS) or 'joint' (CVS: every modality and block at once)
      # The stages, each a tuple of the modalities it adds; () = the run's modalities in order, the first two together.
      "stages": (),
      "stage": 0,  # the stage one run trains (1-based); 0: `mmvae train` runs them all, one run each
      "partner_dropout": 0.5,  # the chance that an example's attention partner is left out in training
  }}


def plan_of(config, names) -> tuple[tuple[str, ...], ...]:
  """The stages as tuples of the modalities each adds: model.stages (empty: the run's modalities `names` in
  order, the first two together, then one per stage), or one stage of all of them ('joint')."""
  mc = config.model
  stages_ = tuple(tuple(s) for s in mc.get("stages", ()))
  if not stages_:
    names = tuple(names)
    stages_ = (names[:2],) + tuple((m,) for m in names[2:])
  return (tuple(itertools.chain(*stages_)),) if mc.plan == "joint" else stages_


def stages(config, names) -> list[tuple[str, ...]]:
  """The stage plan `mmvae train` runs for the run's modalities `names`: per stage, the modalities it adds."""
  return list(plan_of(config, names))


def _blocks(plan) -> list[tuple[str, str, int]]:
  """(i, s, stage) of every attention block: each new modality against each earlier one (s the reference)."""
  out, seen = [], []
  for k, new in enumerate(plan, start=1):
    for i in new:
      out.extend((i, s, k) for s in seen)
      seen.append(i)
  return out


def _unit(x):
  return x / jnp.maximum(jnp.linalg.norm(x, axis=-1, keepdims=True), 1e-12)


class Branch(nnx.Module):
  """Two fully connected layers of D with tanh between them: g = W2 tanh(W1 h)."""

  def __init__(self, in_dim: int, width: int, dtype, rngs: nnx.Rngs):
    self.fc1 = nnx.Linear(in_dim, width, dtype=dtype, rngs=rngs)
    self.fc2 = nnx.Linear(width, width, dtype=dtype, rngs=rngs)

  def __call__(self, h_BxE):
    return self.fc2(jnp.tanh(self.fc1(h_BxE)))


class AlignedAttention(nnx.Module):
  """One block (i, s): (g_i', g_s'), both unit vectors; `w_i` carries the bias b."""

  def __init__(self, dim: int, hidden: int, dtype, rngs: nnx.Rngs):
    self.w_i = nnx.Linear(dim, hidden, use_bias=True, dtype=dtype, rngs=rngs)
    self.w_s = nnx.Linear(dim, hidden, use_bias=False, dtype=dtype, rngs=rngs)
    self.w_is = nnx.Linear(dim, hidden, use_bias=False, dtype=dtype, rngs=rngs)
    self.w_e = nnx.Linear(hidden, dim, use_bias=False, dtype=dtype, rngs=rngs)

  def __call__(self, g_i_BxD, g_s_BxD):
    e_BxD = self.w_e(jnp.tanh(self.w_i(g_i_BxD) + self.w_s(g_s_BxD) + self.w_is(g_i_BxD * g_s_BxD)))
    alpha_BxD = jax.nn.softmax(e_BxD.astype(jnp.float32), axis=-1)
    g_i, g_s = g_i_BxD.astype(jnp.float32), g_s_BxD.astype(jnp.float32)
    return _unit(alpha_BxD * g_i + g_i), _unit(alpha_BxD * g_s + g_s)


def _other(block: tuple[str, str], m: str) -> str:
  """m's partner in a block (i, s)."""
  return block[1] if block[0] == m else block[0]


def _block_key(i: str, s: str) -> str:
  return f"{i}__{s}"


class MCVS(models.Multimodal):
  """Encoders, branches and attention blocks per the plan, an optional classifier; trains one stage."""

  can_generate = False

  def __init__(self, specs: dict, encoders: dict, branches: dict, blocks: dict, classifier, plan, stage: int,
               partner_dropout: float):
    super().__init__(specs)
    self.encoders = nnx.Dict(encoders)
    self.branches = nnx.Dict(branches)
    self.blocks = nnx.Dict(blocks)
    self.classifier = classifier
    # Static (part of the graph definition): the plan, the stage this model trains, the dropout rate.
    self.plan, self.stage, self.partner_dropout = plan, stage, float(partner_dropout)

  # --- the plan --------------------------------------------------------------------------------------
  def stage_of(self, m: str) -> int:
    """The stage in which modality m enters the space (1-based)."""
    return next(k for k, new in enumerate(self.plan, start=1) if m in new)

  def own_blocks(self, m: str) -> list[tuple[str, str]]:
    """(i, s) of the blocks that define m's vector: those created in m's stage that involve m."""
    return [(i, s) for i, s, k in _blocks(self.plan) if k == self.stage_of(m) and m in (i, s)]

  def in_space(self) -> tuple[str, ...]:
    """The modalities in the space at this model's stage, in plan order."""
    return tuple(itertools.chain(*self.plan[:self.stage]))

  def new(self) -> tuple[str, ...]:
    """The modalities this stage trains."""
    return self.plan[self.stage - 1]

  def branch_of(self, name: str) -> tuple[str, ...]:
    """The modalities whose branch a parameter (dotted checkpoint name) belongs to; () for the classifier."""
    part, _, rest = name.partition(".")
    key = rest.partition(".")[0]
    if part in ("encoders", "branches"):
      return (key,)
    if part == "blocks":
      i, s = key.split("__")
      return tuple(m for m in (i, s) if (i, s) in self.own_blocks(m))
    return ()

  def trainable(self, name: str) -> bool:
    """Whether this stage trains a parameter: the new modalities' branches and blocks; the classifier in stage 1."""
    owners = self.branch_of(name)
    if not owners:
      return self.stage == 1
    return any(m in self.new() for m in owners)

  # --- the space ---------------------------------------------------------------------------------------
  def features(self, m: str, x):
    """g_m: the encoder's mean through the branch."""
    return self.branches[m](self.encoders[m](x)[0])

  def side(self, m: str, block: tuple[str, str], g_m, g_partner):
    """m's unit vector from block (i, s) given m's features and its partner's (zeros: no partner)."""
    i, s = block
    out_i, out_s = (self.blocks[_block_key(i, s)](g_m, g_partner) if m == i
                    else self.blocks[_block_key(i, s)](g_partner, g_m))
    return out_i if m == i else out_s

  def embed(self, m: str, g_m, partners: dict | None = None):
    """m's vector: the unit mean of its sides of its own blocks; partners {modality: g} (missing: zeros)."""
    partners = partners or {}
    sides = []
    for block in self.own_blocks(m):
      sides.append(self.side(m, block, g_m, partners.get(_other(block, m), jnp.zeros_like(g_m))))
    return _unit(sum(sides) / len(sides))

  def encode(self, modality: str, x):
    """(vector, zeros): the retrieval embedding of lone examples (no partner in any block)."""
    v = self.embed(modality, self.features(modality, x))
    return v, jnp.zeros_like(v)

  def identity_logits(self, v_BxD):
    return self.classifier(v_BxD).astype(jnp.float32)


def check_config(config) -> None:
  """Raises ValueError naming the key to change in the model or loss section."""
  mc, lc = config.model, config.loss
  models.check_model_config(mc, decoder=False)
  losses.check_loss_config(lc)
  if mc.get("plan") not in PLANS:
    raise ValueError(f"config.model.plan={mc.get('plan')!r} is unknown; use one of {PLANS}")
  stages_ = [tuple(s) for s in mc.get("stages", ())]
  flat = list(itertools.chain(*stages_))
  if any(not s for s in stages_) or len(set(flat)) != len(flat):
    raise ValueError(f"config.model.stages={mc.get('stages')} must list each modality once, in non-empty stages")
  if stages_ and len(stages_[0]) < 2 and mc.plan == "stagewise":
    raise ValueError(f"config.model.stages: the first stage {stages_[0]} needs at least 2 modalities to align")
  for key in ("space_dim", "attention_dim"):
    if int(mc.get(key, 0)) < 1:
      raise ValueError(f"config.model.{key}={mc.get(key)} must be >= 1")
  if not 0 <= float(mc.partner_dropout) < 1:
    raise ValueError(f"config.model.partner_dropout={mc.partner_dropout} must be in [0, 1)")
  if not (lc.triplet_weight > 0 or lc.identity_weight > 0):
    raise ValueError("config.loss.triplet_weight and config.loss.identity_weight are both 0: mcvs has nothing to train")
  stage = int(mc.get("stage", 0))
  if stages_ and not 0 <= stage <= (1 if mc.plan == "joint" else len(stages_)):
    raise ValueError(f"config.model.stage={stage} is not a stage of the plan (1..{len(stages_)}, 0 = the last)")


def build(config, specs: dict, seed: int, num_classes: int = 0) -> MCVS:
  """Every modality's encoder and branch and every block of the plan; config.model.stage picks what trains."""
  check_config(config)
  mc = config.model
  specs = modalities.specs(specs)  # Modality values, or their manifest entries
  plan = plan_of(config, specs)
  stage = int(mc.get("stage", 0)) or len(plan)
  if stage > len(plan):
    raise ValueError(f"config.model.stage={stage} is not a stage of the plan (1..{len(plan)}, 0 = the last)")
  space = list(itertools.chain(*plan[:stage]))
  if set(space) != set(specs):  # stage K's run holds the modalities of its space only (stages.stage_config)
    raise ValueError(f"stage {stage} of config.model.stages {[list(s) for s in plan]} has the space {space}, but "
                     f"the run's modalities are {list(specs)}: set config.data.modalities to the space's")
  specs = {m: specs[m] for m in space}  # in plan order
  dtype = models.compute_dtype(mc.dtype)

  def build_module(rngs: nnx.Rngs):
    encoders = models.build_encoders(mc, specs, dtype, rngs)
    branches = {m: Branch(mc.latent_dim, mc.space_dim, dtype, rngs) for m in specs}
    blocks = {_block_key(i, s): AlignedAttention(mc.space_dim, mc.attention_dim, dtype, rngs)
              for i, s, k in _blocks(plan) if k <= stage}
    classifier = None
    if config.loss.identity_weight > 0:
      if num_classes < 2:
        raise ValueError(f"config.loss.identity_weight > 0 needs at least 2 training classes, got {num_classes}")
      classifier = nnx.Linear(mc.space_dim, num_classes, dtype=dtype, rngs=rngs)
    return MCVS(specs, encoders, branches, blocks, classifier, plan, stage, mc.partner_dropout)

  return models.init_module(build_module, seed)


def loss(model: MCVS, batch, example_keys_B, step_key, step, loss_cfg, axis_name=None):
  """(total, {'loss', 'triplet', 'identity_ce'}) of the model's stage on one (local) batch."""
  del step_key, step
  if "label" not in batch:
    raise ValueError("mcvs needs class labels (relevance), but the batch has no 'label'")
  new, space = model.new(), model.in_space()
  g = {m: model.features(m, batch[m]) for m in space}
  g = {m: v if m in new else jax.lax.stop_gradient(v) for m, v in g.items()}
  p_drop = model.partner_dropout
  vec = {}
  for m in space:
    if m not in new:  # an older modality: its fixed retrieval vector
      vec[m] = jax.lax.stop_gradient(model.embed(m, g[m]))
      continue
    partners = {}  # each own block pairs m with a different modality: one partner per block
    for n, block in enumerate(model.own_blocks(m)):
      other = _other(block, m)
      # One coin per (example, block), from the example's key: the same on any device count.
      keep_B = jax.vmap(lambda k: jax.random.bernoulli(jax.random.fold_in(k, n), 1.0 - p_drop))(example_keys_B)
      partners[other] = jnp.where(keep_B[:, None], g[other], 0.0) if p_drop > 0 else g[other]
    vec[m] = model.embed(m, g[m], partners)
  labels_local = batch["label"]
  gathered = {m: losses.gather(v, axis_name) for m, v in vec.items()}
  labels = losses.gather(labels_local, axis_name)
  m_x, m_y, m_across = loss_cfg.triplet_margins
  metrics, total = {}, 0.0
  if loss_cfg.triplet_weight > 0:
    terms = []
    for x, y in _loss_pairs(space, new):
      term = losses.triplet(gathered[x], gathered[x], labels, m_x, True)
      if y in new:
        term = term + losses.triplet(gathered[y], gathered[y], labels, m_y, True)
      term = term + 0.5 * (losses.triplet(gathered[x], gathered[y], labels, m_across, False)
                           + losses.triplet(gathered[y], gathered[x], labels, m_across, False))
      terms.append(term)
    metrics["triplet"] = sum(terms) / len(terms)
    total = total + loss_cfg.triplet_weight * metrics["triplet"]
  if loss_cfg.identity_weight > 0:
    metrics["identity_ce"] = losses.identity_ce(model, [vec[m] for m in new], labels_local)
    total = total + loss_cfg.identity_weight * metrics["identity_ce"]
  metrics["loss"] = total
  return total, metrics


def _loss_pairs(space, new) -> list[tuple[str, str]]:
  """(x, y) for every pair of modalities in the space with x new: x the later one in plan order."""
  return [(x, y) for j, x in enumerate(space) if x in new for y in space[:j]]


zoo.register("mcvs", sys.modules[__name__])
