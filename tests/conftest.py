"""Test setup: 4 forced CPU devices, so that every sharded path runs on every test run.

XLA reads the flag when jax initializes its backends, so it is set here, before any test module
imports jax.
"""

import os

_FLAG = "--xla_force_host_platform_device_count=4"
if _FLAG not in os.environ.get("XLA_FLAGS", ""):
  os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") + " " + _FLAG).strip()
os.environ.setdefault("JAX_PLATFORMS", "cpu")
os.environ.setdefault("MPLBACKEND", "Agg")

import atexit  # noqa: E402
import shutil  # noqa: E402
import tempfile  # noqa: E402

# Many tests compile the same step function afresh (a new trainer, a resumed run, a subprocess):
# a compilation cache for this session (inherited by subprocesses) turns those into lookups by
# the program's hash.
_CACHE = tempfile.mkdtemp(prefix="memjax-test-xla-cache-")
atexit.register(shutil.rmtree, _CACHE, ignore_errors=True)
os.environ["JAX_COMPILATION_CACHE_DIR"] = _CACHE
os.environ["JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS"] = "0.5"
os.environ["JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES"] = "0"

import jax  # noqa: E402  (must follow the flags)
import pytest  # noqa: E402


def pytest_configure(config):
  del config
  assert jax.device_count() == 4, (
      f"expected 4 forced CPU devices, got {jax.device_count()}: was jax imported before "
      "tests/conftest.py set XLA_FLAGS?")


@pytest.fixture
def rng():
  import numpy as np
  return np.random.default_rng(0)


def pytest_collection_modifyitems(config, items):
  """Tests marked `slow` (minutes of training: the README's training commands) run only with
  MEMJAX_SLOW=1."""
  del config
  if os.environ.get("MEMJAX_SLOW") == "1":
    return
  skip = pytest.mark.skip(reason="slow: minutes of training; run with MEMJAX_SLOW=1")
  for item in items:
    if "slow" in item.keywords:
      item.add_marker(skip)
