r"""Prepares a data set of the seed paper from the files you obtained (no workdir needed).

  memjax --config=prepare --config.prepare.dataset=mni152/64       # ships with nilearn
  memjax --config=prepare --config.prepare.dataset=brats2020/slices --config.prepare.manual_dir=BRATS
  memjax --config=prepare --config.prepare.dataset=cxr_pneumonia/256 \
      --config.prepare.manual_dir=KERMANY --config.data.data_dir=$MEMJAX_DATA_DIR

Data sets: brats2020 and brats2021 (configs slices, volumes), cxr_pneumonia (256, 128, 64) and
mni152 (64, 128). Medical data is never downloaded: manual_dir holds it as its official source
distributes it. A prepared data set is read as `tfds:NAME/CONFIG:SPLIT`, e.g.
--config.data.source=tfds:brats2020/slices:train.
"""

import ml_collections
from ml_collections import config_dict

from configs import default


def get_config():
  config = default.get_config()
  config.workflow = "prepare"
  config.prepare = ml_collections.ConfigDict()
  config.prepare.dataset = ""  # NAME[/CONFIG]: brats2020/slices, cxr_pneumonia/256, mni152/64
  config.prepare.manual_dir = ""  # the folder holding the obtained files (not for mni152)
  config.prepare.strict = False  # fail on a subject or file that would be skipped with a warning
  config.prepare.num_subjects = config_dict.placeholder(int)  # BraTS: the first N only
  return config
