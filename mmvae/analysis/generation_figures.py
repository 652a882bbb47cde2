"""Figures and tables of cross generation: image grids, spectra, decoded texts, one per (source, target) pair.

Which picture a target modality gets is its kind's FIGURE (mmvae/modalities): a name of PLOTS or a plot of
its own; a kind without one gets none.
Files are named `<g>_from_<q>.png`, like the arrays of generated.npz.
"""

import re

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from mmvae import modalities  # noqa: E402

DPI = 120
TEXT_EXAMPLES = 8  # rows of a decoded-text table
ROW_LABEL_WIDTH = 16  # characters per line of a row label; longer names wrap onto more lines, never cut


def _show(ax, img):
  img = np.asarray(img, np.float32)
  img = img / 255.0 if img.max() > 1.5 else img
  if img.ndim == 3 and img.shape[-1] == 1:
    ax.imshow(img[..., 0], cmap="gray", vmin=0, vmax=1)
  else:
    ax.imshow(np.clip(img, 0, 1))
  ax.set_xticks([])
  ax.set_yticks([])


def first_frame(m, stored):
  """One example's stored value as the model sees its shape (an image's first frame)."""
  stored = np.asarray(stored)
  return stored[0] if stored.ndim == len(m.model_shape) + 1 else stored


def select_identities(labels, max_identities: int) -> np.ndarray:
  """The first identities in label order (deterministic), at most max_identities."""
  return np.unique(np.asarray(labels))[:max_identities]


def shown_note(shown: int, total: int) -> str:
  """'' when every identity is shown, else '12 of 24 identities shown (the first in label order)'."""
  return "" if shown >= total else f"{shown} of {total} identities shown (the first in label order)"


def row_label(name, width: int = ROW_LABEL_WIDTH) -> str:
  """An identity's whole name on lines of at most `width` characters, broken after '_', '-' or a space if it can."""
  lines = [""]
  for piece in re.split(r"(?<=[_\s-])", str(name)):
    while piece:
      if lines[-1] and len(lines[-1]) + len(piece) > width:
        lines.append("")
      take = width - len(lines[-1])
      lines[-1] += piece[:take]
      piece = piece[take:]
  return "\n".join(lines)


def _titled(title: str, labels, ids) -> str:
  note = shown_note(len(ids), len(np.unique(np.asarray(labels))))
  return f"{title}\n{note}" if note else title


def plot_image_grid(path, m, real, recon, cross, labels, names: dict, title: str, per_row: int = 4,
                    max_identities: int = 12, source: str = "source", target: str = "target"):
  """Per identity: a real example, its reconstruction, and `per_row` examples generated from the source modality.

  Returns the (closed) figure, whose artists can still be read.
  """
  labels = np.asarray(labels)
  ids = select_identities(labels, max_identities)
  cols = 2 + per_row
  # Constrained layout keeps the title clear of the column heads and makes room for whole row labels.
  fig, axes = plt.subplots(len(ids), cols, figsize=(1.3 * cols + 1.6, 1.35 * len(ids) + 1.0), squeeze=False,
                           layout="constrained")
  for r, i in enumerate(ids):
    rows = np.flatnonzero(labels == i)
    _show(axes[r, 0], first_frame(m, real[rows[0]]))
    _show(axes[r, 1], recon[rows[0]])
    for c in range(per_row):
      if c < len(rows):
        _show(axes[r, 2 + c], cross[rows[c]])
      else:
        axes[r, 2 + c].axis("off")
        if c == len(rows):  # why the rest of the row is empty
          n = len(rows)
          axes[r, 2 + c].text(0.5, 0.5, f"only {n} test\nexample{'s' if n != 1 else ''} of\nthis identity",
                              ha="center", va="center", fontsize=7, color="0.4", transform=axes[r, 2 + c].transAxes)
    axes[r, 0].set_ylabel(row_label(names.get(int(i), i)), fontsize=8, rotation=0, ha="right", va="center")
  for c, head in enumerate(["real", f"from {target}"] + [f"from {source} {k + 1}" for k in range(per_row)]):
    axes[0, c].set_title(head, fontsize=8)
  fig.suptitle(_titled(title, labels, ids))
  fig.savefig(path, dpi=DPI)
  plt.close(fig)
  return fig


def plot_spectra(path, m, real, recon, cross, labels, names: dict, title: str, max_identities: int = 6,
                 source: str = "source", target: str = "target"):
  """Per identity: real, reconstructed and cross-generated values (curves for vectors, images for [T, F]).

  Returns the (closed) figure, whose artists can still be read.
  """
  labels = np.asarray(labels)
  ids = select_identities(labels, max_identities)
  vector = np.asarray(recon).ndim == 2
  fig, axes = plt.subplots(len(ids), 1 if vector else 3, figsize=(9 if vector else 10, 1.9 * len(ids) + 1.0),
                           squeeze=False, layout="constrained")
  series = (("real", real), (f"from {target}", recon), (f"from {source}", cross))
  for r, i in enumerate(ids):
    rows = np.flatnonzero(labels == i)
    name = str(names.get(int(i), i))
    if vector:  # pooled features: identity means as curves over the feature index
      ax = axes[r, 0]
      for (head, values), width in zip(series, (1, 1, 1.5)):
        ax.plot(np.mean(np.asarray(values)[rows].reshape(len(rows), -1), 0), label=head, lw=width)
      ax.set_ylabel("mean value\n(stored scale)", fontsize=7)
      ax.set_title(f"{name}: mean over its {len(rows)} test example{'s' if len(rows) != 1 else ''}", fontsize=8)
      if r == 0:
        ax.legend(fontsize=7, ncol=3)
      if r == len(ids) - 1:
        pooled = " (the spectrogram pooled over time)" if m.kind == "spectrogram" else ""
        ax.set_xlabel(f"dimension of the stored {target} feature vector{pooled}, {np.asarray(recon).shape[1]} "
                      "values per example", fontsize=8)
    else:
      for c, (head, values) in enumerate(series):
        ax = axes[r, c]
        ax.imshow(np.asarray(first_frame(m, values[rows[0]])).T, origin="lower", aspect="auto", cmap="magma")
        ax.set_title(f"{name}: {head}", fontsize=8)
        ax.set_xlabel("time frame", fontsize=7)
        ax.set_ylabel("frequency bin", fontsize=7)
  fig.suptitle(_titled(title, labels, ids))
  fig.savefig(path, dpi=DPI)
  plt.close(fig)
  return fig


PLOTS = {"image_grid": plot_image_grid, "spectra": plot_spectra}  # what a modality kind's FIGURE may name


def figure_of(m):
  """The plot of target modality m (its kind's FIGURE, a PLOTS name resolved), or None."""
  plot = modalities.optional(m, "FIGURE")
  return PLOTS[plot] if isinstance(plot, str) else plot


def plot_pairs(report_dir, specs: dict, test: dict, generated: dict, labels, names: dict, display: dict) -> list:
  """Writes `<g>_from_<q>.png` for every pair whose target kind has a figure; returns [(file, caption)]."""
  written = []
  for g, m in specs.items():
    plot = figure_of(m)
    if plot is None:
      continue
    for q in specs:
      if q == g:
        continue
      caption = f"{display[g]} generated from {display[q]}"
      caption = caption[0].upper() + caption[1:]
      path = f"{g}_from_{q}.png"
      plot(report_dir / path, m, test[g], generated[f"{g}_from_{g}"], generated[f"{g}_from_{q}"], labels, names,
           f"{caption} (per row: one identity)", source=display[q], target=display[g])
      written.append((path, caption))
  return written


def text_examples(specs: dict, test: dict, generated: dict, labels, names: dict, n: int = TEXT_EXAMPLES) -> dict:
  """{text modality g (its kind has `to_text`): {'sources': [q, ...], 'rows': [(identity, truth, [text from each
  q])]}}, one per identity."""
  labels = np.asarray(labels)
  rows_of = [int(np.flatnonzero(labels == i)[0]) for i in select_identities(labels, n)]
  out = {}
  for g, m in specs.items():
    to_text = modalities.optional(m, "to_text")
    if to_text is None:
      continue
    sources = [q for q in specs if q != g and f"{g}_from_{q}" in generated]
    out[g] = {"sources": sources,
              "rows": [(str(names.get(int(labels[r]), labels[r])), to_text(m, test[g][r]),
                        [to_text(m, generated[f"{g}_from_{q}"][r]) for q in sources]) for r in rows_of]}
  return out


def save_image_png(image_SxSxC, out, scale: int = 4) -> None:
  """A float [0, 1] image as a PNG, enlarged `scale` times with nearest-neighbour pixels."""
  import pathlib

  from PIL import Image
  img = np.clip(np.asarray(image_SxSxC, np.float32), 0, 1)
  img = (img * 255 + 0.5).astype(np.uint8)
  img = img[..., 0] if img.shape[-1] == 1 else img
  img = np.repeat(np.repeat(img, scale, axis=0), scale, axis=1)
  out = pathlib.Path(out)
  out.parent.mkdir(parents=True, exist_ok=True)
  Image.fromarray(img).save(out)
