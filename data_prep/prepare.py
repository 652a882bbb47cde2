"""`mmvae prep` from Python: the built-in corpora's prepare functions in one place.

Each lives in its corpus module, beside its layout and its command-line arguments (data_prep/voxceleb1.py,
avdigits.py, mmdigits.py, synthetic.py, folder.py); every one lists its examples and hands them to the shared
pipeline (data_prep/pipeline.py, per example data_prep/example.py). `mmvae.prepare(NAME, out, ...)` reaches any
registered corpus, built-in or not (data_prep/corpora.py).
"""

from data_prep.avdigits import prepare_avdigits
from data_prep.folder import prepare_folder
from data_prep.mmdigits import prepare_mmdigits
from data_prep.synthetic import prepare_synthetic
from data_prep.voxceleb1 import prepare_voxceleb1

__all__ = ["prepare_avdigits", "prepare_folder", "prepare_mmdigits", "prepare_synthetic", "prepare_voxceleb1"]
