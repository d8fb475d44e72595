"""The mni152 builder against an independent numpy computation from nilearn's templates."""

import numpy as np
import pytest
import tensorflow_datasets as tfds

from memjax.data import mni152
from memjax.data import tfds_source

tfds.disable_progress_bar()


@pytest.fixture(scope="module")
def built(tmp_path_factory):
  data_dir = tmp_path_factory.mktemp("mni152")
  builder = mni152.Mni152(config="64", data_dir=str(data_dir))
  builder.download_and_prepare()
  return builder, data_dir


def expected_slices():
  """Pad each 197x233 axial slice to 256x256, average 4x4 blocks, keep >15% T1 > 50 of 255."""
  from nilearn import datasets
  channels = [datasets.load_mni152_template(resolution=1),
              datasets.load_mni152_gm_template(resolution=1),
              datasets.load_mni152_wm_template(resolution=1)]
  volume = np.stack([c.get_fdata() for c in channels], axis=-1)
  assert volume.shape == (197, 233, 189, 3)
  volume = volume / volume.max(axis=(0, 1, 2)) * 255
  padded = np.zeros((256, 256, 189, 3))
  padded[29:226, 11:244] = volume  # (256 - 197) // 2 = 29, (256 - 233) // 2 = 11.
  small = padded.reshape(64, 4, 64, 4, 189, 3).mean(axis=(1, 3))
  # Turned a quarter, anterior up: row r of the image is y = 63 - r, column c is x = c.
  return {z: np.floor(small[:, ::-1, z].transpose(1, 0, 2) + 0.5).astype(np.uint8)
          for z in range(189) if np.mean(small[:, :, z, 0] > 50) > 0.15}


def test_slices_match_numpy(built):
  builder, _ = built
  expected = expected_slices()
  data = builder.as_data_source()
  seen = {}
  for split, parity in (("train", 0), ("holdout", 1)):
    for example in data[split]:
      z = int(example["slice_index"])
      assert z % 2 == parity and example["subject_id"] == b"MNI152"
      assert example["image"].shape == (64, 64, 3) and example["image"].dtype == np.uint8
      seen[z] = example["image"]
  assert sorted(seen) == sorted(expected)
  assert 80 < len(seen) < 189  # The coverage rule drops the slices above and below the brain.
  for z, image in seen.items():
    np.testing.assert_array_equal(image, expected[z], err_msg=f"slice {z}")


def test_tfds_source_neighbours_are_adjacent_training_slices(built):
  _, data_dir = built
  source = tfds_source.TfdsSource("mni152", "64", "train", data_dir=str(data_dir))
  ids = source.ids()
  assert all(i.startswith("MNI152:") for i in ids)
  index_of = {int(i.split(":")[1]): n for n, i in enumerate(ids)}
  first, last = min(index_of), max(index_of)
  assert sorted(index_of) == list(range(first, last + 1, 2))  # The even slices, no gaps.
  for z, n in index_of.items():
    assert source.neighbors(n) == (index_of.get(z - 2), index_of.get(z + 2))
  assert source.neighbors(index_of[first])[0] is None
