"""config.model.output.NAME: a decoder's output for a modality is its head's raw values ('linear') or its kind's
activation of them ('default', a sigmoid for image pixels), for the shared decoder and the experts' decoders."""

import json

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

from mmvae import config as config_lib
from mmvae import config_schema, modalities, zoo

SPECS = {"audio": modalities.Modality("audio", "vector", (12,), "float32"),
         "face": modalities.Modality("face", "image", (1, 8, 8, 1), "uint8")}


def _decoded(kind, overrides):
  cfg = config_lib.load("synthetic:tiny", [f"model.kind={kind}", "model.decoder=conv", "model.conv_channels=(4,8)",
                                           *overrides])
  model = zoo.of(cfg).build(cfg, SPECS, seed=0, num_classes=0)
  z = jnp.asarray(np.random.default_rng(0).normal(size=(5, cfg.model.latent_dim)), jnp.float32)
  return jax.tree.map(np.asarray, model.decoder(z))


@pytest.mark.parametrize("kind", ["msvae", "mopoe"])
def test_linear_output_is_the_heads_raw_values_the_default_their_sigmoid(kind):
  default = _decoded(kind, [])
  linear = _decoded(kind, ["model.output.face=linear"])  # the same parameters: the key adds none
  assert float(default["face"].min()) >= 0.0 and float(default["face"].max()) <= 1.0
  np.testing.assert_allclose(default["face"], 1.0 / (1.0 + np.exp(-linear["face"].astype(np.float64))),
                             rtol=1e-5, atol=1e-6)
  assert not np.allclose(default["face"], linear["face"])
  np.testing.assert_array_equal(default["audio"], linear["audio"])  # a modality not named keeps its kind's output


def test_unknown_output_refused_and_old_config_json_still_loads(tmp_path):
  with pytest.raises(ValueError, match=r"config.model.output.face='tanh' is not supported; use one of default, linear"):
    _decoded("msvae", ["model.output.face=tanh"])
  mc = config_schema.base_config().model
  assert modalities.linear_outputs(SPECS, mc) == ()
  mc.output["face"] = "linear"
  assert modalities.linear_outputs(SPECS, mc) == ("face",)
  old = config_lib.to_dict(config_schema.base_config())
  del old["model"]["output"]  # a config.json written before the key existed: every head through its kind's own
  path = tmp_path / "config.json"
  path.write_text(json.dumps(old))
  stored = config_lib.stored(path)
  assert "output" not in stored["model"]
  assert modalities.linear_outputs(SPECS, ml_collections.ConfigDict(stored["model"])) == ()
