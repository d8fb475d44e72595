"""`mni152`: axial slices of the MNI152 2009 brain template, built offline from nilearn's copy.

The demo trains and audits on these slices because they ship with the install (nilearn packages
the ICBM152 2009 templates; nothing is downloaded) and are not patient data. Each example is one
axial slice with three channels: the T1 template, the grey-matter and the white-matter
probability maps (1 mm, 197x233x189 voxels).

Preprocessing, the paper's BraTS recipe at a lower resolution: each channel is divided by its
maximum and scaled to 0-255; axial slice z is `volume[:, :, z]`, zero-padded, centred, to
256x256 (a 256 mm field of view) and averaged over 2x2 (config `128`, 2 mm pixels) or 4x4 (config
`64`, 4 mm pixels) blocks; a slice is kept when more than 15% of its pixels have T1 above 50 of
255. Unlike BraTS (kept as the paper's MATLAB cuts it), the slice is then turned a quarter so that
anterior is up. Images are uint8 in [0, 255], channels last (T1, GM, WM).

Splits interleave the slices: `train` holds the even axial indices z, `holdout` the odd ones.
Held-out slices are 1 mm from training slices, so a model that copies its training slices
matches them too: the demo's holdout set shows what near-copies of training data look like.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import numpy as np
import tensorflow_datasets as tfds

from memjax.data import preprocessing
from memjax.data import tfds_builder

SUBJECT_ID = "MNI152"
CHANNELS = ("t1", "gm", "wm")
_FIELD_OF_VIEW = 256  # Pixels of 1 mm that the slices are padded to before downsampling.


@dataclasses.dataclass
class Mni152Config(tfds.core.BuilderConfig):
  """Slices of `size` x `size` pixels (size divides 256)."""
  size: int = 64


def template_volumes() -> np.ndarray:
  """The 1 mm T1, grey-matter and white-matter templates as one (X, Y, Z, 3) float64 array.

  nilearn reads them from files inside its package (no network) and scales each to [0, 1].
  """
  from nilearn import datasets  # pylint: disable=g-import-not-at-top  (slow; only to build)

  loaders = (datasets.load_mni152_template, datasets.load_mni152_gm_template,
             datasets.load_mni152_wm_template)
  return np.stack([np.asarray(load(resolution=1).get_fdata(dtype=np.float64))
                   for load in loaders], axis=-1)


def slices(volumes: np.ndarray, size: int) -> list[tuple[int, np.ndarray]]:
  """The kept axial slices (z, uint8 (size, size, C) image) of (X, Y, Z, C) volumes."""
  if _FIELD_OF_VIEW % size:
    raise ValueError(f"slice size {size} must divide {_FIELD_OF_VIEW}")
  scaled = np.stack([preprocessing.scale_to_255(volumes[..., c], f"MNI152 channel {name}")
                     for c, name in enumerate(CHANNELS)], axis=-1)
  kept = []
  for z in range(scaled.shape[2]):
    image = preprocessing.center_pad_or_crop(scaled[:, :, z], (_FIELD_OF_VIEW, _FIELD_OF_VIEW))
    image = preprocessing.block_mean(image, _FIELD_OF_VIEW // size)
    if preprocessing.keep_slice(image[..., 0]):
      # Anterior up, the subject's left on the left (the file is RAS): a brain as readers expect.
      kept.append((z, preprocessing.to_uint8(np.rot90(image))))
  return kept


class Mni152(tfds_builder.ArrayRecordBuilder):
  """Axial slices of the MNI152 2009 templates (T1, GM, WM); no download, no manual data."""

  VERSION = tfds.core.Version("1.0.0")
  RELEASE_NOTES = {"1.0.0": "Initial release."}
  BUILDER_CONFIGS = [
      Mni152Config(name="64", size=64, description="64x64 slices, 4 mm pixels."),
      Mni152Config(name="128", size=128, description="128x128 slices, 2 mm pixels."),
  ]

  def _info(self) -> tfds.core.DatasetInfo:
    size = self.builder_config.size
    features = tfds.features.FeaturesDict({
        "image": tfds_builder.image_feature(
            (size, size, len(CHANNELS)), "T1, grey matter, white matter; each 0-255 of its max"),
        "subject_id": tfds.features.Text(doc="Always 'MNI152'."),
        "slice_index": tfds.features.Scalar(np.int32, doc="Axial index z in the 1 mm volume."),
    })
    return self._dataset_info(
        features, description=__doc__,
        homepage="https://nist.mni.mcgill.ca/icbm-152-nonlinear-atlases-2009/",
        citation="Fonov et al., Unbiased average age-appropriate atlases for pediatric studies, "
                 "NeuroImage 54(1), 2011.")

  def _split_generators(self, dl_manager: Any) -> dict[str, Any]:
    del dl_manager  # Nothing to download.
    kept = slices(template_volumes(), self.builder_config.size)
    return {"train": self._generate_examples([s for s in kept if s[0] % 2 == 0]),
            "holdout": self._generate_examples([s for s in kept if s[0] % 2 == 1])}

  def _generate_examples(self, kept: list[tuple[int, np.ndarray]]):
    for z, image in kept:
      yield z, {"image": image, "subject_id": SUBJECT_ID, "slice_index": z}
