r"""memjax's command line: one config, one work directory.

  python launch.py --config=configs/audit.py --config.synthetic=SYN --config.train=TRAIN \
      [--config.holdout=HOLDOUT] --workdir=runs/audit

Any config key can be overridden (`--config.audit.k=5`). `config.workflow` picks what runs
(`audit`, `train`, `sample`, `demo`); the work lives in `memjax/workflows.py`. User errors (a
missing file, a bad image, a wrong setting) print one line and exit with status 2; set
MEMJAX_TRACEBACK=1 to see the traceback.
"""

import logging as std_logging

from absl import app
from absl import flags
from ml_collections import config_flags

_CONFIG = config_flags.DEFINE_config_file(
    "config", None, "Experiment config file (configs/*.py); override keys with --config.KEY=VALUE.",
    lock_config=True)
_WORKDIR = flags.DEFINE_string("workdir", None, "Directory for checkpoints, samples and audits.")
flags.mark_flags_as_required(["config", "workdir"])


def main(argv):
  # JAX reports at INFO that it looked for TPUs and GPUs that a CPU machine has not.
  std_logging.getLogger("jax._src.xla_bridge").setLevel(std_logging.WARNING)
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {' '.join(argv[1:])}")
  from memjax import cli  # pylint: disable=g-import-not-at-top
  from memjax import parallel  # pylint: disable=g-import-not-at-top
  from memjax import workflows  # pylint: disable=g-import-not-at-top
  parallel.initialize_distributed()
  cli.run_reporting_user_errors(lambda: workflows.run(_CONFIG.value, _WORKDIR.value))


if __name__ == "__main__":
  app.run(main)
