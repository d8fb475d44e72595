"""What memjax's command lines share: a user error ends in one line and exit status 2."""

import os
import sys
from collections.abc import Callable
from typing import TypeVar

from absl import logging

T = TypeVar("T")

# What a missing file, a corrupt image, a wrong setting or a workflow not built yet raise.
USER_ERRORS = (ValueError, OSError, NotImplementedError)


def run_reporting_user_errors(function: Callable[[], T]) -> T:
  """Runs `function`; a user error prints `error: ...` on stderr and exits with status 2.

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
