"""Which products a correlation search runs: float32, or split bfloat16 products proven exact.

"bfloat16x3" runs on a bfloat16 matrix unit (AMX, tensor cores, the MXU) and carries 16
significant bits of every value (8-bit pixels exactly); "auto" picks it only where it is fast and
a probe search on that kind of device has proven it within PROBE_TOLERANCE of float64.
"""

from __future__ import annotations

import functools
import logging

import jax
import numpy as np

from memjax import parallel
from memjax.data import sources as sources_lib
from memjax.memorization import kernels
from memjax.memorization import streaming

PRECISIONS = ("auto", "float32", "bfloat16x3")


def resolve_precision(precision: str, mesh: Mesh) -> str:
  """"auto" becomes "bfloat16x3" where bfloat16 products are fast and proven exact, else "float32".

  Fast: GPUs, TPUs and CPUs with a bfloat16 matrix unit (AMX). Proven: a probe search on that
  kind of device, once per process, agrees with float64 (`split_products_are_exact`).
  """
  if precision not in PRECISIONS:
    raise ValueError(f"precision must be one of {', '.join(PRECISIONS)}, got {precision!r}")
  if precision != "auto":
    return precision
  device = mesh.devices.flat[0]
  if device.platform == "cpu" and not _cpu_has_bfloat16_matrix_unit():
    return "float32"
  return "bfloat16x3" if split_products_are_exact(device) else "float32"


_PROVEN: dict[tuple[str, str], bool] = {}
PROBE_TOLERANCE = 5e-6  # largest difference from float64 that the probe accepts
EXACT_COPY_TOLERANCE = 1e-6  # an exact copy must score at least 1 - this


def split_products_are_exact(device: jax.Device) -> bool:
  """Whether "bfloat16x3" searches are exact on this kind of device, found by running one.

  Compilers differ in what they may do to a split product (XLA on GPUs may keep excess
  precision and fold conversions away), so the split is proven where it runs, not assumed: a
  small search with exact and noisy copies of 8-bit and float32 images, compiled for the device
  as every search is, must be within PROBE_TOLERANCE of float64 with exact copies at
  1 - EXACT_COPY_TOLERANCE or more. The answer is kept per platform and device kind.
  """
  key = (device.platform, device.device_kind)
  if key not in _PROVEN:
    worst, weakest_copy = _probe_split_products(device)
    _PROVEN[key] = worst <= PROBE_TOLERANCE and weakest_copy >= 1 - EXACT_COPY_TOLERANCE
    if not _PROVEN[key]:
      logging.warning(
          "bfloat16x3 split products are not exact on %s (%s): %.2g from float64, exact copies "
          "at %.8f; precision='auto' uses float32 there", device.platform, device.device_kind,
          worst, weakest_copy)
  return _PROVEN[key]


def _probe_split_products(device: jax.Device) -> tuple[float, float]:
  """(largest difference from float64, lowest score of an exact copy) of bfloat16x3 searches."""
  mesh = parallel.data_mesh([device])
  rng = np.random.default_rng(0)
  worst, weakest_copy = 0.0, 1.0
  for dtype in (np.uint8, np.float32):
    if dtype == np.uint8:
      train = rng.integers(0, 256, (192, 48, 48)).astype(np.uint8)
    else:
      train = (100.0 + 40.0 * rng.standard_normal((192, 48, 48))).astype(np.float32)
    noisy = train[8:16].astype(np.float64) + 8.0 * rng.standard_normal((8, 48, 48))
    synthetic = np.concatenate([train[:8], noisy.clip(0, 255).astype(dtype), train[16:32][::-1]])
    synthetic[16:] = rng.permutation(synthetic[16:].reshape(-1)).reshape(16, 48, 48)
    plan = kernels.plan_search(len(synthetic), len(train), synthetic[0].size, 4, 1,
                               budget=kernels.search_budget(mesh))
    values, *_ = streaming.stream(  # the kernel's own values, as every search computes them
        sources_lib.ArraySource(synthetic), sources_lib.ArraySource(train), plan, mesh,
        precision="bfloat16x3")
    ranked = -np.sort(-(streaming.unit_rows_float64(synthetic)
                        @ streaming.unit_rows_float64(train).T), axis=1)[:, :4]
    worst = max(worst, float(np.max(np.abs(values - ranked))))
    weakest_copy = min(weakest_copy, float(values[:8, 0].min()))
  return worst, weakest_copy


@functools.lru_cache(maxsize=1)
def _cpu_has_bfloat16_matrix_unit() -> bool:
  """True on CPUs with AMX-BF16 (Intel Sapphire Rapids and later), read from /proc/cpuinfo."""
  try:
    with open("/proc/cpuinfo") as f:
      for line in f:
        if line.startswith("flags"):
          return "amx_bf16" in line.split()
  except OSError:
    pass
  return False
