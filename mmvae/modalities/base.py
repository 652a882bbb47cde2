"""The defaults most modality kinds share: the stored shape is the model's, one frame, float inputs, no augmentation."""

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
