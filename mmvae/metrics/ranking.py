"""Blocked score kernels: a block of queries against the whole gallery, never an N x M matrix.

Several scores come from the same dot products: cosine and euclidean from mu.mu', W2 from mu.mu' + sigma.sigma'
and the squared norms. Large sets run in JAX (float32, jit, the same code on CPU and GPU) on query blocks padded
to one shape, so it compiles once; small sets run in NumPy float64 (no compile time, today's exact scores).

Besides the scores, each kernel returns a monotone cell index per item (`cells`): items in a cell above a
threshold's cell score above it, items in a cell below score below it, so a rank needs exact comparisons only
inside the few cells that hold a relevant item's score (see `threshold_counts`). The cells span the row's
relevant scores, where the ranks are needed, so few items share a cell with one.
"""

import functools

import numpy as np

N_CELLS = 4096
FIRST_HIT_CHUNK, FIRST_HIT_ROWS = 2048, 256  # first-hit kernel: gallery columns per chunk, query rows per call
SCORE_KINDS = {"cosine": ("cos", False), "euclidean": ("euc", False), "w2": ("euc", True)}


def _cells(xp, s_BxM, rel_BxM, n_cells):
  """Monotone cell of each score: 0 below the lowest relevant score, then N_CELLS - 2 cells up to the highest."""
  inf = xp.asarray(np.inf, s_BxM.dtype)
  lo = xp.min(xp.where(rel_BxM, s_BxM, inf), axis=1)
  hi = xp.max(xp.where(rel_BxM, s_BxM, -inf), axis=1)
  has = xp.isfinite(lo)
  lo = xp.where(has, lo, 0)
  width = xp.where(has, hi - lo, 1)
  width = xp.where(width > 0, width, xp.maximum(xp.abs(lo), 1) * 2.0 ** -10)  # one distinct relevant score
  scale = xp.where(has, (n_cells - 3) / width, 0).astype(s_BxM.dtype)
  x = (s_BxM - lo[:, None]) * scale[:, None]  # rounding is monotone, so the cells are too
  ok = x >= 0  # False for -inf (an excluded self score) and the NaN it may give
  return xp.where(ok, xp.minimum(xp.floor(xp.where(ok, x, 0)) + 1, n_cells - 1), 0).astype(xp.int32)


def _scores(xp, q, g, kinds, paired=False):
  """{kind: B x M score block} from the shared dot products of query and gallery parts; with `paired`, the
  B scores of the pairs (q[k], g[k]) by the same formulas in the same precision."""
  if paired:  # row-wise dot products: a pair's score does not depend on which other pairs share the call
    mm = lambda a, b: xp.einsum("ij,ij->i", a, b)
    col = row = lambda v: v
  else:
    mm = lambda a, b: a @ b.T
    col, row = (lambda v: v[:, None]), (lambda v: v[None, :])
  dot = mm(q["mu"], g["mu"])
  dot_w2 = dot + mm(q["sig"], g["sig"]) if any(w2 for _, w2 in kinds.values()) else None
  out = {}
  for name, (kind, w2) in kinds.items():
    d = dot_w2 if w2 else dot
    if kind == "cos" and "unit" in q:
      s = mm(q["unit"], g["unit"])  # NumPy: today's scores, exactly (parallel vectors tie)
    elif kind == "cos":
      s = d / (col(xp.maximum(q["norm"], 1e-12)) * row(xp.maximum(g["norm"], 1e-12)))
    else:
      sq_q, sq_g = (q["sq_w2"], g["sq_w2"]) if w2 else (q["sq"], g["sq"])
      s = -xp.sqrt(xp.maximum(col(sq_q) + row(sq_g) - 2.0 * d, 0.0))
    out[name] = s + 0.0  # -0.0 becomes 0.0: equal scores stay equal to every comparison
  return out


def _block(xp, q, g, q_code, g_code, q_idx, exclude_self, kinds, n_cells, q_grp=None, g_grp=None):
  """Scores and cell keys of one query block; an excluded self pair scores -inf and is not relevant.

  key = row * n_cells + cell, plus rows * n_cells for items outside the query's group (when groups are given),
  so one histogram counts both all items and the query's group.
  """
  rel = q_code[:, None] == g_code[None, :]
  scores = _scores(xp, q, g, kinds)
  if exclude_self:
    me = q_idx[:, None] == xp.arange(g_code.shape[0])[None, :]
    rel = rel & ~me
    scores = {k: xp.where(me, -np.inf, s) for k, s in scores.items()}
  if n_cells == 0:  # first relevant group only (MRR, Recall@K): three counts per query, fused with the scores
    out = {}
    for k, s in scores.items():
      best = xp.max(xp.where(rel, s, -np.inf), axis=1, keepdims=True)
      at = s == best
      out[k] = (xp.sum(s > best, axis=1), xp.sum(at, axis=1), xp.sum(at & rel, axis=1))
    return out
  b = q_code.shape[0]
  itype = xp.int32 if xp is not np else np.int64
  base = (xp.arange(b, dtype=itype) * n_cells)[:, None]
  if q_grp is not None:
    base = base + xp.where(q_grp[:, None] == g_grp[None, :], 0, b * n_cells).astype(itype)
  return {k: (s, base + _cells(xp, s, rel, n_cells).astype(itype)) for k, s in scores.items()}


@functools.lru_cache(maxsize=16)
def _jax_first_hit(kinds_items, exclude_self, chunk):
  """First-hit counts of a query block against a gallery sorted by label and stored as chunks of `chunk` columns.

  The block's queries are sorted by label, so all their relevant items lie in chunks c0..c1-1. Pass 1 finds each
  row's best relevant score there; pass 2 counts, over every chunk, the scores above and equal to it with no
  masks at all; pass 3 revisits c0..c1-1 and the padded last chunk to take back what pass 2 counted for columns
  that do not take part (padding, an excluded self) and to count the relevant items tied with the best. Every
  pass computes a chunk's scores by the same program on the same shapes, so they agree, and pass 3 recomputes the
  best relevant score: `ok` is False for a row where the passes disagree (it is then redone by the one-pass
  kernel). No more than B x chunk scores exist at once: they stay in cache instead of streaming B x M."""
  import jax
  import jax.numpy as jnp

  def f(q, g_chunks, q_code, g_code_chunks, q_self, c0, c1):
    kinds = dict(kinds_items)
    n_chunks = g_code_chunks.shape[0]
    at_chunk = lambda a, c: jax.lax.dynamic_index_in_dim(a, c, keepdims=False)

    def chunk_scores(c):  # the one program every pass computes a chunk's scores with
      return _scores(jnp, q, jax.tree.map(lambda a: at_chunk(a, c), g_chunks), kinds)

    def masked(c):
      """(scores, relevant, dropped) of chunk c: dropped = padding (code -2) or the query itself."""
      code = at_chunk(g_code_chunks, c)
      scores = chunk_scores(c)
      drop = jnp.broadcast_to(code[None, :] < -1, (q_code.shape[0], chunk))
      if exclude_self:
        drop = drop | (q_self[:, None] == c * chunk + jnp.arange(chunk)[None, :])
      return scores, (q_code[:, None] == code[None, :]) & ~drop, drop

    def best_in(c, best):
      scores, rel, _ = masked(c)
      return {k: jnp.maximum(best[k], jnp.max(jnp.where(rel, s, -jnp.inf), axis=1)) for k, s in scores.items()}

    none = {k: jnp.full(q_code.shape, -jnp.inf, jnp.float32) for k in kinds}
    best = jax.lax.fori_loop(c0, c1, best_in, none)

    def count(acc, c):
      scores = chunk_scores(c)
      return {k: (acc[k][0] + jnp.sum(s > best[k][:, None], axis=1), acc[k][1] + jnp.sum(s == best[k][:, None], axis=1))
              for k, s in scores.items()}, None

    zero = jnp.zeros(q_code.shape, jnp.int32)
    counts, _ = jax.lax.scan(count, {k: (zero, zero) for k in kinds}, jnp.arange(n_chunks))

    def correct(c, acc):
      scores, rel, drop = masked(c)
      out = {}
      for k, s in scores.items():
        above, tied, rel_tied, again = acc[k]
        b = best[k][:, None]
        out[k] = (above - jnp.sum(drop & (s > b), axis=1), tied - jnp.sum(drop & (s == b), axis=1),
                  rel_tied + jnp.sum(rel & (s == b), axis=1), jnp.maximum(again, jnp.max(jnp.where(rel, s, -jnp.inf), 1)))
      return out

    acc = {k: (counts[k][0], counts[k][1], zero, none[k]) for k in kinds}
    acc = jax.lax.fori_loop(c0, c1, correct, acc)
    last = n_chunks - 1  # the padded chunk, when the range did not already correct it
    acc = jax.lax.cond((last < c0) | (last >= c1), lambda a: correct(last, a), lambda a: a, acc)
    return {k: (a, t, r, again == best[k]) for k, (a, t, r, again) in acc.items()}
  return jax.jit(f)


def _chunked(g, g_code, chunk):
  """The gallery parts and codes padded to whole chunks and reshaped to (chunks, chunk, ...); padding code -2."""
  m = len(g_code)
  n = -(-m // chunk)
  pad = n * chunk - m
  out = {k: np.concatenate([v, np.zeros((pad,) + v.shape[1:], v.dtype)]).reshape((n, chunk) + v.shape[1:])
         for k, v in g.items()}
  return out, np.concatenate([g_code, np.full(pad, -2, g_code.dtype)]).reshape(n, chunk)


@functools.lru_cache(maxsize=16)
def _jax_block(kinds_items, exclude_self, n_cells):
  import jax
  import jax.numpy as jnp

  def f(q, g, q_code, g_code, q_idx, q_grp, g_grp):
    return _block(jnp, q, g, q_code, g_code, q_idx, exclude_self, dict(kinds_items), n_cells, q_grp, g_grp)
  return jax.jit(f)


def parts(mu_NxZ, sig_NxZ, dtype):
  """The per-item arrays the kernels read: means, sigmas and the norms every score needs."""
  mu = np.asarray(mu_NxZ, dtype)
  sig = np.zeros((len(mu), 0), dtype) if sig_NxZ is None else np.asarray(sig_NxZ, dtype)
  sq = np.sum(mu.astype(np.float64) ** 2, axis=1)
  sq_w2 = sq + np.sum(sig.astype(np.float64) ** 2, axis=1)
  out = {"mu": mu, "sig": sig, "sq": sq.astype(dtype), "sq_w2": sq_w2.astype(dtype),
         "norm": np.sqrt(sq).astype(dtype)}
  if dtype == np.float64:  # small sets: cosine of normalised means as before; large ones reuse the dot
    out["unit"] = mu / np.maximum(np.linalg.norm(mu, axis=1, keepdims=True), 1e-12)
  return out


def default_jax(n, m):
  """Whether an N x M set is scored in JAX float32 (large) rather than NumPy float64 (small)."""
  return n * m >= (1 << 22)


def pair_scores(q_mu, q_sig, g_mu, g_sig, rows, cols, scores, use_jax=None, chunk=1 << 16):
  """{score: scores of the pairs (q[rows[k]], g[cols[k]])}: what BlockScorer's blocks hold at those positions,
  by the same formulas in the same precision (up to float32 summation order), without the N x M products."""
  dtype = np.float32 if (default_jax(len(q_mu), len(g_mu)) if use_jax is None else use_jax) else np.float64
  kinds = {s: SCORE_KINDS[s] for s in scores}
  q, g = parts(q_mu, q_sig, dtype), parts(g_mu, g_sig, dtype)
  rows, cols, chunk = np.asarray(rows, np.int64), np.asarray(cols, np.int64), max(1, chunk)
  out = {s: np.empty(len(rows), dtype) for s in scores}
  for lo in range(0, len(rows), chunk):  # bounded gathers: chunk x D per part
    r, c = rows[lo:lo + chunk], cols[lo:lo + chunk]
    got = _scores(np, {k: v[r] for k, v in q.items()}, {k: v[c] for k, v in g.items()}, kinds, paired=True)
    for s in scores:
      out[s][lo:lo + len(r)] = got[s]
  return out


class BlockScorer:
  """Yields (lo, hi, {score: (s_BxM, key_BxM, key_rows)}) over query blocks; NumPy float64 or JAX float32.

  n_cells=0: {score: (above, tied, relevant tied)} of each query's best relevant item instead; in JAX over a
  gallery larger than FIRST_HIT_CHUNK, from the two-pass chunked kernel (_jax_first_hit), for the queries
  `order[lo:hi]` (sorted by label) rather than lo:hi (`order` is None otherwise).
  """

  def __init__(self, q_mu, q_sig, g_mu, g_sig, q_code, g_code, scores, exclude_self, use_jax=None,
               block_elems=1 << 22, n_cells=N_CELLS, groups=None):
    n, m = len(q_mu), len(g_mu)
    self.use_jax = default_jax(n, m) if use_jax is None else use_jax
    self.kinds = tuple((s, SCORE_KINDS[s]) for s in scores)
    dtype = np.float32 if self.use_jax else np.float64
    self.q, self.g = parts(q_mu, q_sig, dtype), parts(g_mu, g_sig, dtype)
    self.q_code, self.g_code = np.asarray(q_code, np.int32), np.asarray(g_code, np.int32)
    # Cells a few items wide: enough that few items share one with a relevant score, few enough to histogram.
    n_cells = n_cells and int(min(n_cells, max(16, 1 << int(np.log2(max(m, 1) // 8 or 1)))))
    self.exclude_self, self.n, self.n_cells = exclude_self, n, n_cells
    self.groups = None if groups is None else tuple(np.asarray(x, np.int32) for x in groups)
    rows = min(4096, max(1, block_elems // max(m, 1)))  # keys stay within int32
    self.rows = 1 << int(np.log2(rows)) if self.use_jax else rows  # few distinct shapes: few compiles
    self.chunk, self.order, self.g_dev = 0, None, None
    if self.use_jax and not n_cells and m > FIRST_HIT_CHUNK:  # first hits over a large gallery: chunked kernel
      import jax
      self.chunk, self.rows = FIRST_HIT_CHUNK, FIRST_HIT_ROWS
      self.order = np.argsort(self.q_code, kind="stable")  # blocks of queries of few labels
      g_order = np.argsort(self.g_code, kind="stable")
      self.g_pos = np.empty(m, np.int64)
      self.g_pos[g_order] = np.arange(m)  # gallery index -> sorted position (an excluded self's column)
      self.g_sorted_code = self.g_code[g_order]
      g_chunks, code_chunks = _chunked({k: v[g_order] for k, v in self.g.items()}, self.g_sorted_code, self.chunk)
      self.g_chunks_dev, self.g_code_chunks_dev = jax.device_put(g_chunks), jax.device_put(code_chunks)
    elif self.use_jax:
      self._put_gallery()

  def _put_gallery(self):
    import jax
    self.g_dev = jax.device_put(self.g)
    self.g_code_dev = jax.device_put(self.g_code)
    self.g_grp_dev = None if self.groups is None else jax.device_put(self.groups[1])

  def __len__(self):
    return -(-self.n // self.rows)

  def __iter__(self):
    for lo in range(0, self.n, self.rows):
      hi = min(self.n, lo + self.rows)
      yield lo, hi, self._one(lo, hi)

  def _one(self, lo, hi):
    idx = np.arange(lo, lo + self.rows if self.use_jax else hi)
    take = np.minimum(idx, self.n - 1)  # padded rows repeat the last query and are dropped below
    q = {k: v[take] for k, v in self.q.items()}
    code = np.where(idx < self.n, self.q_code[take], -1)  # padding matches nothing
    q_grp = None if self.groups is None else self.groups[0][take]
    if not self.use_jax:
      g_grp = None if self.groups is None else self.groups[1]
      with np.errstate(invalid="ignore"):  # -inf self scores times a zero scale: NaN, put in cell 0
        out = _block(np, q, self.g, code, self.g_code, idx, self.exclude_self, dict(self.kinds), self.n_cells,
                     q_grp, g_grp)
      return {k: v + ((hi - lo,) if self.n_cells else ()) for k, v in out.items()}
    import jax
    if self.chunk:
      return self._first_hits(lo, hi)
    f = _jax_block(self.kinds, self.exclude_self, self.n_cells)
    out = jax.device_get(f(q, self.g_dev, code, self.g_code_dev, idx.astype(np.int32), q_grp, self.g_grp_dev))
    return {k: tuple(x[:hi - lo] for x in v) + ((self.rows,) if self.n_cells else ()) for k, v in out.items()}


  def _first_hits(self, lo, hi):
    """Chunked first-hit counts of the queries order[lo:hi] (sorted by label; padded to `rows`)."""
    import jax
    pos = np.arange(lo, lo + self.rows)
    take = self.order[np.minimum(pos, self.n - 1)]
    code = np.where(pos < self.n, self.q_code[take], -1)  # padding matches nothing
    real = code[pos < self.n]
    c0 = c1 = 0
    if len(real):
      first = np.searchsorted(self.g_sorted_code, real.min(), "left")
      last = np.searchsorted(self.g_sorted_code, real.max(), "right")
      if last > first:
        c0, c1 = first // self.chunk, -(-last // self.chunk)
    f = _jax_first_hit(self.kinds, self.exclude_self, self.chunk)
    self_pos = self.g_pos[take] if self.exclude_self else take
    out = jax.device_get(f({k: v[take] for k, v in self.q.items()}, self.g_chunks_dev, code, self.g_code_chunks_dev,
                           self_pos.astype(np.int32), np.int32(c0), np.int32(c1)))
    out = {k: [np.array(x[:hi - lo]) for x in v] for k, v in out.items()}
    bad = np.flatnonzero(~np.all([v[3] for v in out.values()], axis=0))
    if len(bad):  # the passes disagreed on some row's best score: the one-pass kernel over the unsorted gallery
      again = self._one_pass(take[bad])
      for k, v in out.items():
        for x, y in zip(v[:3], again[k]):
          x[bad] = y
    return {k: tuple(v[:3]) for k, v in out.items()}

  def _one_pass(self, queries):
    """First-hit counts of the given queries by the one-pass kernel (the whole gallery per block)."""
    import jax
    if self.g_dev is None:
      self._put_gallery()
    rows = 1 << int(np.ceil(np.log2(max(len(queries), 1))))
    idx = np.concatenate([queries, np.full(rows - len(queries), queries[-1])])
    code = np.where(np.arange(rows) < len(queries), self.q_code[idx], -1)
    f = _jax_block(self.kinds, self.exclude_self, 0)
    out = jax.device_get(f({k: v[idx] for k, v in self.q.items()}, self.g_dev, code, self.g_code_dev,
                           idx.astype(np.int32), None, None))
    return {k: tuple(np.asarray(x)[:len(queries)] for x in v) for k, v in out.items()}


def threshold_counts(s_BxM, key_BxM, t_row, t_col, n_cells=N_CELLS, grouped=False, key_rows=None):
  """Items scoring strictly above, and equal to, each threshold s[t_row, t_col] in its row: (above, tied) of
  all items, and with `grouped` (keys from groups) also of the items in the query's group.

  Whole cells above the threshold's cell are counted from a histogram; inside its cell the items are compared
  exactly, through one sort of the items that share a cell with some threshold (few, by construction).
  """
  b = s_BxM.shape[0] if key_rows is None else key_rows  # the rows the kernel made keys for (padding included)
  half = b * n_cells  # keys of items outside the query's group start here
  key = key_BxM.ravel()
  hist = np.bincount(key, minlength=2 * half if grouped else half)
  hist = hist.reshape(-1, b, n_cells)
  above_cell = (np.cumsum(hist[..., ::-1], axis=-1)[..., ::-1] - hist).reshape(len(hist), -1)
  t_key = key_BxM[t_row, t_col] % half  # the threshold's cell (a relevant item may lie outside the group)
  t_val = s_BxM[t_row, t_col]
  mark = np.zeros(len(hist) * half, bool)
  for part in range(len(hist)):
    mark[t_key + part * half] = True
  sel = np.flatnonzero(mark[key])
  vals = s_BxM.ravel()[sel]
  uniq = np.unique(np.concatenate([vals, t_val]))
  u = len(uniq) + 1
  comp = np.sort(key[sel].astype(np.int64) * u + np.searchsorted(uniq, vals))  # (part, row, cell, value) as one
  t_rank = np.searchsorted(uniq, t_val)
  counts = []
  for part in range(len(hist)):
    k = t_key.astype(np.int64) + part * half
    left = np.searchsorted(comp, k * u + t_rank, "left")
    right = np.searchsorted(comp, k * u + t_rank, "right")
    end = np.searchsorted(comp, (k + 1) * u, "left")
    counts.append((above_cell[part][t_key] + (end - right), right - left))
  if not grouped:
    return counts[0]
  (ga, gt), (oa, ot) = counts
  return (ga + oa, gt + ot), (ga, gt)


def rank_within(t_row, t_val, mask=None):
  """For entries (row, value): how many entries of the same row (of mask) score strictly above, and equal."""
  mask = np.ones(len(t_row), bool) if mask is None else mask
  uniq = np.unique(t_val)
  u = len(uniq) + 1
  key = t_row.astype(np.int64) * u + np.searchsorted(uniq, t_val)
  comp = np.sort(key[mask])
  left, right = np.searchsorted(comp, key, "left"), np.searchsorted(comp, key, "right")
  end = np.searchsorted(comp, (t_row.astype(np.int64) + 1) * u, "left")
  return end - right, right - left
