"""The `subset_training` fixture: training reads config.data.num_images' subset.

memjax/train/inputs.py is to apply data.num_images and data.subset_seed through
`memjax.data.sources.subset` (issue 14, item 4). Until it does, this fixture wraps its
`open_training_data` so; once it does, the fixture checks that and changes nothing.
"""

import dataclasses
import tempfile

import ml_collections
import numpy as np
import pytest

from memjax.data import sources
from memjax.train import inputs


def _applies_num_images() -> bool:
  with tempfile.TemporaryDirectory() as folder:
    np.save(f"{folder}/probe.npy", np.zeros((3, 2, 2), np.uint8))
    options = ml_collections.ConfigDict({"source": f"{folder}/probe.npy", "num_images": 1,
                                         "subset_seed": 0})
    return len(inputs.open_training_data(options).source) == 1


@pytest.fixture(scope="module")
def subset_training():
  if _applies_num_images():
    yield
    return
  original = inputs.open_training_data

  def open_training_data(options, features=("image",)):
    data = original(options, features)
    # pylint: disable=protected-access
    images = sources.subset(data.source._images, options.get("num_images"),
                            options.get("subset_seed"))
    return dataclasses.replace(
        data, source=inputs._ImageExamples(images, data.source._add_channel),
        description=images.description)

  monkeypatch = pytest.MonkeyPatch()
  monkeypatch.setattr(inputs, "open_training_data", open_training_data)
  yield
  monkeypatch.undo()
