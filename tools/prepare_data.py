r"""Prepares a memjax data set (array_record files) from data the user has obtained.

The `prepare` workflow of the memjax command does the same (`memjax --config=prepare
--config.prepare.dataset=mni152/64`); this script keeps the older command line.

  python tools/prepare_data.py --dataset=brats2020/slices --manual_dir=DIR --data_dir=DIR [--strict]
  python tools/prepare_data.py --dataset=cxr_pneumonia/256 --manual_dir=DIR
  python tools/prepare_data.py --dataset=mni152/64   # ships with nilearn: no manual_dir

Data sets: brats2020 and brats2021 (configs slices, volumes; --num_subjects=N keeps the first N
training subjects), cxr_pneumonia (256, 128, 64) and mni152 (64, 128). Medical data is never
downloaded: --manual_dir holds it as its official source distributes it. --data_dir defaults to
$MEMJAX_DATA_DIR, else TFDS's default (~/tensorflow_datasets). Read a prepared set with
`open_source("tfds:brats2020/slices:train")` or `tfds.data_source(...)`. A data set that is
already prepared is kept, unless one of its files is truncated or missing: then it is prepared
again. A preparation writes into a temporary folder renamed into place at the end; one that was
killed leaves that folder, which the next run removes; two runs at once: the second stops,
naming the first. Subjects (BraTS) and images (chest x-rays) that cannot be read are skipped with
a warning and counted in the summary (--strict makes them an error). User errors print one line
and exit with status 2 (MEMJAX_TRACEBACK=1 shows the traceback).
"""

import logging as std_logging

from absl import app
from absl import flags

from memjax import cli
from memjax.data.prepare import prepare

_DATASET = flags.DEFINE_string("dataset", None, "NAME[/CONFIG], e.g. brats2020/slices.")
_MANUAL_DIR = flags.DEFINE_string("manual_dir", None, "Folder holding the obtained data.")
_DATA_DIR = flags.DEFINE_string("data_dir", None,
                                "Where to write; default $MEMJAX_DATA_DIR, else TFDS's default.")
_STRICT = flags.DEFINE_bool("strict", False,
                            "Fail on a subject or file that would be skipped with a warning.")
_NUM_SUBJECTS = flags.DEFINE_integer("num_subjects", None,
                                     "BraTS: keep only the first N training subjects.")
flags.mark_flags_as_required(["dataset"])


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {' '.join(argv[1:])}")
  std_logging.getLogger("absl").setLevel(std_logging.ERROR)  # TFDS notes on custom configs.
  print(cli.run_reporting_user_errors(lambda: prepare(
      _DATASET.value, _MANUAL_DIR.value, _DATA_DIR.value, _STRICT.value, _NUM_SUBJECTS.value)))


if __name__ == "__main__":
  app.run(main, flags_parser=cli.parse_tool_flags)
