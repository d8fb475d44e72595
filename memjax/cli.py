"""What memjax's command lines share: a user error ends in one line and exit status 2, Ctrl-C
in one line and exit status 130."""

import os
import sys
from collections.abc import Callable
from typing import TypeVar

from absl import logging

T = TypeVar("T")

# What a missing file, a corrupt image, a wrong setting or a workflow not built yet raise.
USER_ERRORS = (ValueError, OSError, NotImplementedError)


# Ctrl-C's exit status, as a shell reports a process that SIGINT ended (128 + 2).
INTERRUPTED_STATUS = 130
INTERRUPTED = ("interrupted (Ctrl-C): nothing half-written is left; the work dir keeps its "
               "previous results and finished checkpoints as they were. Run the same command "
               "again to redo the step (training resumes from its last checkpoint)")


def run_reporting_user_errors(function: Callable[[], T]) -> T:
  """Runs `function`; a user error prints `error: ...` on stderr and exits with status 2, and
  Ctrl-C prints one line saying what it left and exits with status 130.

  Set MEMJAX_TRACEBACK=1 to see the traceback instead.
  """
  try:
    return function()
  except USER_ERRORS as error:
    if os.environ.get("MEMJAX_TRACEBACK"):
      raise
    logging.flush()
    print(f"error: {error}", file=sys.stderr)
    sys.exit(2)
  except KeyboardInterrupt:
    if os.environ.get("MEMJAX_TRACEBACK"):
      raise
    logging.flush()
    print(INTERRUPTED, file=sys.stderr)
    sys.exit(INTERRUPTED_STATUS)


def _config_keys(config, prefix: str = "") -> list[str]:
  """Every dotted key of a ConfigDict, nested sections included."""
  keys = []
  for name in config.keys():
    value = config[name]
    keys.append(prefix + name)
    if hasattr(value, "keys") and hasattr(value, "get"):
      keys.extend(_config_keys(value, prefix + name + "."))
  return keys


def _load_config_file(path: str):
  """get_config() of a configs/*.py file (as config_flags loads it), or None if it cannot load."""
  import importlib.util  # pylint: disable=g-import-not-at-top
  import pathlib  # pylint: disable=g-import-not-at-top
  file = pathlib.Path(path.split(":", 1)[0])
  if not file.is_file():
    raise FileNotFoundError(f"--config={path}: no such config file (see configs/*.py)")
  spec = importlib.util.spec_from_file_location("_memjax_config_file", file)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  argument = path.split(":", 1)[1] if ":" in path else None
  return module.get_config(argument) if argument is not None else module.get_config()


def check_config_overrides(argv: list[str]) -> None:
  """Raises ValueError, in one line, for a --config.KEY=VALUE whose KEY the config lacks, and
  FileNotFoundError for a --config file that does not exist.

  Names the nearest valid key where there is one, as `--config.trian` -> `--config.train`.
  """
  import difflib  # pylint: disable=g-import-not-at-top
  files = [a.split("=", 1)[1] for a in argv if a.startswith("--config=")]
  if not files:
    return
  config = _load_config_file(files[-1])
  keys = set(_config_keys(config))
  for argument in argv:
    if not argument.startswith("--config."):
      continue
    key = argument[len("--config."):].split("=", 1)[0]
    if key in keys:
      continue
    parent, _, leaf = key.rpartition(".")
    if parent in keys:  # a known section: the nearest of its own keys
      siblings = [k.rpartition(".")[2] for k in keys if k.rpartition(".")[0] == parent]
      near = [f"{parent}.{n}" for n in difflib.get_close_matches(leaf, siblings, n=1)]
    else:
      near = difflib.get_close_matches(key, sorted(keys), n=1, cutoff=0.75)
    hint = f"; did you mean --config.{near[0]}?" if near else ""
    raise ValueError(f"--config.{key} is not a key of {files[-1]}{hint}")


def parse_flags(argv: list[str]) -> list[str]:
  """absl's flag parsing with one-line errors: an unknown config key names the nearest valid
  one, and a value of the wrong type or a missing flag says so, with exit status 2."""
  from absl import flags  # pylint: disable=g-import-not-at-top
  try:
    check_config_overrides(argv)
    return flags.FLAGS(argv)
  except (flags.Error, ValueError, AttributeError, KeyError, TypeError, OSError) as error:
    if os.environ.get("MEMJAX_TRACEBACK"):
      raise
    message = " ".join(str(error).split())
    print(f"error: {message}", file=sys.stderr)
    sys.exit(2)
