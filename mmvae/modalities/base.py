"""The defaults most modality kinds share: the stored shape is the model's, one frame, float inputs, no augmentation,
flattened values for the coherence classifier, no generation figure."""

import numpy as np


def model_shape(m):
  """The stored per-example shape is what the model sees."""
  return m.shape


def frames(m):
  """One stored alternative per example."""
  del m
  return 1


def float_inputs(m, stored, frame_N=None):
  """Stored values as float32 model input."""
  del m, frame_N
  return np.asarray(stored, np.float32)


def activate(raw):
  """A decoder head's output as it is."""
  return raw


def to_data(output):
  """A decoded output as float32 numpy values."""
  return np.asarray(output, np.float32)


def augment(x, flip_B, train_cfg, keys_B=None):
  """No train-time augmentation."""
  del flip_B, train_cfg, keys_B
  return x


def classifier_features(m, data_N):
  """What the coherence classifier sees of data [N, ...]: the values, flattened, as float32 [N, D]."""
  del m
  return np.asarray(data_N, np.float32).reshape(len(data_N), -1)


def pixel_features(m, images_N):
  """[N, ...] images (uint8 0..255 or float 0..1) -> float32 [N, D] in [0, 1]."""
  del m
  x = np.asarray(images_N)
  x = x.astype(np.float32) / 255.0 if x.dtype == np.uint8 else x.astype(np.float32)
  return x.reshape(len(x), -1)


def time_stats(m, x_N):
  """A [N, T, F] spectrogram's per-bin mean and std over time (what the spectrum is, not when); else flattened."""
  del m
  x = np.asarray(x_N, np.float32)
  if x.ndim == 3:
    return np.concatenate([x.mean(1), x.std(1)], axis=1)
  return x.reshape(len(x), -1)


SHOWS_ATTRIBUTES = False  # whether generated data is also scored for the identity's attributes (coherence)

to_text = None  # text kinds: to_text(m, data_one_example) -> str (the generated-text examples of report.md)

FIGURE = None  # the generation figure of a target modality: a plot name of analysis/generation_figures.PLOTS or a
               # callable with plot_image_grid's signature; None: no figure
