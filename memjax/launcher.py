r"""memjax's command: one config, one work directory.

  memjax --config=audit --config.audit.synthetic_images=SYN \
      --config.audit.training_images=TRAIN [--config.audit.holdout_images=HOLDOUT] \
      --workdir=runs/audit

The same command is `python -m memjax ...` and, in a checkout, `python launch.py ...`.
`--config` is a shipped config by name (`audit`, `demo_ddpm`, `cxr_ddpm`, `prepare`, ...) or the
path of a config file; `memjax --config=NAME --help` lists its keys. Any config key can be
overridden (`--config.audit.k=5`); an unknown key is one line naming the nearest valid one.
`config.workflow` picks what runs (`audit`, `train`, `sample`, `demo`, `sweep`, `prepare`); the
work lives in `memjax/workflows.py`. Each workflow ends with a short plain summary on stdout;
progress bars and warnings go to stderr, and absl's INFO lines only with `--verbosity=0`. User
errors (a missing file, a bad image, a wrong setting) print one line and exit with status 2; set
MEMJAX_TRACEBACK=1 to see the traceback.

On many machines every process runs the same command (README, "Running on many machines"):
it joins the run that Slurm (srun), Open MPI or a Cloud TPU VM describes, or that the flags or
the environment name.

  memjax --config=... --workdir=SHARED --coordinator_address=HOST0:1234 \
      --num_processes=2 --process_id=0        # and --process_id=1 on the other machine
  JAX_COORDINATOR_ADDRESS=HOST0:1234 JAX_NUM_PROCESSES=2 JAX_PROCESS_ID=0 memjax ...
"""

import logging as std_logging
import sys

from absl import app
from absl import flags
from absl import logging
from ml_collections import config_flags

_CONFIG = config_flags.DEFINE_config_file(
    "config", None, "A shipped config by name (audit, demo_ddpm, ...) or a config file's path; "
    "override keys with --config.KEY=VALUE.", lock_config=True)
_WORKDIR = flags.DEFINE_string(
    "workdir", None, "Directory for checkpoints, samples and audits (every workflow but prepare).")
_COORDINATOR = flags.DEFINE_string(
    "coordinator_address", None,
    "Many machines: host:port of process 0, which all processes reach (default "
    "$JAX_COORDINATOR_ADDRESS, or what Slurm, Open MPI or a Cloud TPU VM says).")
_NUM_PROCESSES = flags.DEFINE_integer(
    "num_processes", None, "Many machines: the number of processes (default $JAX_NUM_PROCESSES, "
    "or the launcher's).", lower_bound=1)
_PROCESS_ID = flags.DEFINE_integer(
    "process_id", None, "Many machines: this process, 0 to num_processes - 1 (default "
    "$JAX_PROCESS_ID, or the launcher's).", lower_bound=0)
_HEARTBEAT = flags.DEFINE_integer(
    "heartbeat_timeout_seconds", None,
    "Many machines: when another process dies, this one ends with an error within about this "
    "many seconds (default JAX's, 100).", lower_bound=1)
flags.mark_flags_as_required(["config"])


def _main(argv):
  # JAX reports at INFO that it looked for TPUs and GPUs that a CPU machine has not.
  std_logging.getLogger("jax._src.xla_bridge").setLevel(std_logging.WARNING)
  if not flags.FLAGS["verbosity"].present:  # absl's INFO lines only when asked for
    logging.set_verbosity(logging.WARNING)
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {' '.join(argv[1:])}")
  from memjax import cli  # pylint: disable=g-import-not-at-top
  from memjax import parallel  # pylint: disable=g-import-not-at-top
  from memjax import workflows  # pylint: disable=g-import-not-at-top
  cli.run_reporting_user_errors(lambda: parallel.initialize_distributed(
      _COORDINATOR.value, _NUM_PROCESSES.value, _PROCESS_ID.value,
      heartbeat_timeout_seconds=_HEARTBEAT.value))
  cli.run_reporting_user_errors(
      lambda: workflows.run(_CONFIG.value, _WORKDIR.value, command=sys.argv))
  # The other processes wait for process 0's last writes (an audit's report) before they exit.
  parallel.wait_for_every_process("memjax: workflow done")


def main(argv: list[str] | None = None) -> None:
  """The `memjax` console script, `python -m memjax` and launch.py."""
  from memjax import cli  # pylint: disable=g-import-not-at-top
  if argv is not None:
    sys.argv = list(argv)
  # --help (exit 0) and flag errors (an unknown --config key, a value of the wrong type) in one
  # line with exit status 2; a config named without a path is a shipped one.
  app.run(_main, flags_parser=lambda args: cli.parse_flags(args, usage=__doc__))
