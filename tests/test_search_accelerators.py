"""The search's accelerator paths, run on the CPU: exact split products under a compiler that keeps
excess precision, the probe that proves them, resident and pinned-host training blocks, and the
tile sizes an accelerator gets. What only a GPU can show is in tools/gpu_check.py."""

import jax
import jax.extend  # noqa: F401  (jax.extend.core.Literal)
import jax.numpy as jnp
import numpy as np
import pytest

from memjax import parallel
from memjax.memorization import correlation
from memjax.memorization import kernels
from memjax.memorization import precision as precision_lib
from memjax.memorization import streaming
from memjax.memorization import top_k_correlation

from test_correlation import assert_exact_top_k, pearson_float64


def _fold_prone_split(x):
  """The split as it was: a round trip through bfloat16, which excess precision folds away."""
  hi = x.astype(jnp.bfloat16)
  return hi, (x - hi.astype(jnp.float32)).astype(jnp.bfloat16)


def _eval_with_excess_precision(closed_jaxpr, *args):
  """Evaluates a jaxpr as a compiler that keeps excess precision may: `f32(bf16(x))` becomes x.

  This is XLA's SimplifyFPConversions, which GPU compilation runs when xla_allow_excess_precision
  is on (the default); the CPU compiler does not, so a CPU run alone cannot show its effect.
  """
  rounded_from = {}  # id of a bfloat16 value -> the float32 value it was rounded from
  keep_alive = []

  def run(jaxpr, consts, values):
    env = {}

    def read(var):
      return var.val if isinstance(var, jax.extend.core.Literal) else env[var]

    for var, value in zip(jaxpr.constvars, consts):
      env[var] = value
    for var, value in zip(jaxpr.invars, values):
      env[var] = value
    for eqn in jaxpr.eqns:
      inputs = [read(var) for var in eqn.invars]
      name = eqn.primitive.name
      if name == "convert_element_type":
        source = inputs[0]
        target = np.dtype(eqn.params["new_dtype"])
        if target == np.float32 and id(source) in rounded_from:
          outputs = [rounded_from[id(source)]]
        else:
          outputs = [eqn.primitive.bind(*inputs, **eqn.params)]
          if target == jnp.bfloat16 and np.dtype(source.dtype) == np.float32:
            rounded_from[id(outputs[0])] = source
            keep_alive.append(outputs[0])
      elif name in ("pjit", "jit", "closed_call"):
        inner = eqn.params["jaxpr"] if "jaxpr" in eqn.params else eqn.params["call_jaxpr"]
        outputs = run(inner.jaxpr, inner.consts, inputs)
      else:
        outputs = eqn.primitive.bind(*inputs, **eqn.params)
        if not eqn.primitive.multiple_results:
          outputs = [outputs]
      for var, value in zip(eqn.outvars, outputs):
        env[var] = value
    return [read(var) for var in jaxpr.outvars]

  return run(closed_jaxpr.jaxpr, closed_jaxpr.consts, args)


def _split_products_under_excess_precision(synthetic, train):
  """Correlations of the search's normalize + split products, as a GPU compiler may run them."""
  def correlations(synthetic, train):
    operands, synthetic_sum, _ = kernels._normalize_rows(synthetic, "bfloat16x3")
    mean, inverse_norm, _ = kernels._row_statistics(train)
    products = kernels._products(operands, train) - synthetic_sum[:, None] * mean[None, :]
    return products * inverse_norm[None, :]

  synthetic = jnp.asarray(synthetic.reshape(len(synthetic), -1))
  train = jnp.asarray(train.reshape(len(train), -1))
  closed = jax.make_jaxpr(correlations)(synthetic, train)
  return np.asarray(_eval_with_excess_precision(closed, synthetic, train)[0])


def test_split_products_survive_excess_precision(rng, monkeypatch):
  train = rng.integers(0, 256, (40, 64, 64)).astype(np.uint8)
  synthetic = np.concatenate([train[:4], rng.integers(0, 256, (4, 64, 64)).astype(np.uint8)])
  reference = pearson_float64(synthetic, train)
  scores = _split_products_under_excess_precision(synthetic, train)
  assert np.max(np.abs(scores - reference)) < 1e-5
  assert np.all(np.diagonal(scores[:4, :4]) >= 1 - 1e-6)
  # The interpreter does catch the fault that the first GPU run found: with the old split, the
  # low halves vanish, and exact copies fall short of 1 by far more than 1e-6.
  monkeypatch.setattr(kernels, "_split_bfloat16", _fold_prone_split)
  folded = _split_products_under_excess_precision(synthetic, train)
  assert np.max(np.abs(folded - reference)) > 1e-5


def test_split_is_sixteen_bits_and_exact_in_bfloat16(rng):
  x = rng.standard_normal(100_000).astype(np.float32) * np.float32(1e-3)
  hi, mid = jax.jit(kernels._split_bfloat16)(x)
  hi32, mid32 = np.asarray(hi, np.float32), np.asarray(mid, np.float32)
  np.testing.assert_array_less(np.abs(hi32 + mid32 - x), np.abs(x) * 2.0**-16 + 1e-30)
  assert np.count_nonzero(mid32) > 0.99 * x.size
  # Round to nearest: |x - hi| is at most half a bfloat16 step, like numpy's ml_dtypes rounding.
  np.testing.assert_array_equal(hi32, x.astype(jnp.bfloat16).astype(np.float32))
  # 8-bit values are exact in the high half.
  pixels = np.arange(256, dtype=np.float32)
  hi, mid = kernels._split_bfloat16(pixels)
  np.testing.assert_array_equal(np.asarray(hi, np.float32), pixels)
  assert not np.any(np.asarray(mid, np.float32))


def test_probe_proves_the_split_and_rejects_a_broken_one(monkeypatch):
  device = jax.devices()[0]
  monkeypatch.setattr(precision_lib, "_PROVEN", {})
  assert precision_lib.split_products_are_exact(device)
  worst, weakest_copy = precision_lib._probe_split_products(device)
  assert worst <= precision_lib.PROBE_TOLERANCE and weakest_copy >= 1 - 1e-6

  # As a GPU compiler folds the old split: no low halves. The probe must fail, and "auto" must
  # then choose float32 even on a machine with a bfloat16 matrix unit.
  def folded_split(x):
    return x.astype(jnp.bfloat16), jnp.zeros(x.shape, jnp.bfloat16)

  monkeypatch.setattr(kernels, "_split_bfloat16", folded_split)
  monkeypatch.setattr(precision_lib, "_PROVEN", {})
  monkeypatch.setattr(precision_lib, "_cpu_has_bfloat16_matrix_unit", lambda: True)
  kernels.compile_kernels.cache_clear()
  try:
    worst, weakest_copy = precision_lib._probe_split_products(device)
    assert worst > precision_lib.PROBE_TOLERANCE
    assert correlation.resolve_precision("auto", parallel.data_mesh(1)) == "float32"
  finally:
    kernels.compile_kernels.cache_clear()
  monkeypatch.undo()
  assert correlation.resolve_precision("float32", parallel.data_mesh(1)) == "float32"


@pytest.mark.parametrize("precision", ["float32", "bfloat16x3"])
@pytest.mark.parametrize("staging", [None, "pinned_host"])
def test_resident_and_staged_blocks_give_the_streamed_answer(rng, precision, staging):
  mesh = parallel.data_mesh(4)
  train = rng.integers(0, 256, (300, 12, 12)).astype(np.uint8)
  synthetic = np.concatenate([train[[7, 250]], rng.integers(0, 256, (45, 12, 12)).astype(np.uint8)])
  options = dict(k=3, mesh=mesh, precision=precision, tile_size=16, block_size=40,
                 synthetic_chunk=8)
  streamed = correlation.search_correlation(synthetic, train, resident=False, **options)
  budget = correlation.SearchBudget(staging=staging)
  kept = correlation.search_correlation(synthetic, train, resident=True, budget=budget, **options)
  np.testing.assert_array_equal(kept.values, streamed.values)
  np.testing.assert_array_equal(kept.indices, streamed.indices)
  assert_exact_top_k(kept.values, kept.indices, pearson_float64(synthetic, train), 3)
  np.testing.assert_array_equal(kept.indices[:2, 0], [7, 250])


def test_resident_blocks_are_not_overwritten_by_later_reads(rng):
  # A kept block must own its memory: a ring buffer reused for a later block would change it.
  mesh = parallel.data_mesh(2)
  train = rng.standard_normal((96, 10, 10)).astype(np.float64)  # read into buffers, not adopted
  synthetic = train[::-1][:30].copy()
  result = correlation.search_correlation(synthetic, train, k=1, mesh=mesh, tile_size=8,
                                          block_size=16, synthetic_chunk=8, resident=True)
  np.testing.assert_array_equal(result.indices[:, 0], np.arange(95, 65, -1))
  np.testing.assert_allclose(result.values[:, 0], 1.0, atol=1e-6)


def test_accelerator_budget_sizes_the_paper_scale_search():
  h200 = correlation.accelerator_budget(141 << 30)
  image_size = 256 * 256
  plan = correlation.plan_search(100_000, 22_000, image_size, 5, 1, budget=h200)
  # Tiles and chunks of thousands of rows, for the matrix units; the CPU gets cache-sized ones.
  assert plan.tile_size >= 2048 and plan.synthetic_chunk >= 4096
  cpu = correlation.plan_search(100_000, 22_000, image_size, 5, 1)
  assert cpu.tile_size <= 128
  # The working set fits comfortably: split operands of a chunk, a tile in bfloat16, the scores.
  working = (plan.synthetic_chunk * image_size * 4 + plan.tile_size * image_size * 2
             + plan.synthetic_chunk * plan.tile_size * 4)
  assert working < (141 << 30) // 8
  # The paper's 1.44 GB training set (uint8) stays on the device across the synthetic chunks.
  assert streaming.device_bytes(plan, np.uint8) <= h200.resident_bytes
  small = correlation.accelerator_budget(16 << 30)
  small_plan = correlation.plan_search(100_000, 22_000, image_size, 5, 1, budget=small)
  assert small_plan.tile_size <= plan.tile_size
  assert correlation.search_budget(parallel.data_mesh(1)) == correlation.CPU_BUDGET


def test_accelerator_budget_search_is_exact_on_cpu(rng):
  mesh = parallel.data_mesh(4)
  budget = correlation.accelerator_budget(64 << 20, staging="pinned_host")
  train = rng.integers(0, 256, (500, 32, 32)).astype(np.uint8)
  synthetic = np.concatenate([train[[3, 499]], rng.integers(0, 256, (70, 32, 32)).astype(np.uint8)])
  values, indices = top_k_correlation(synthetic, train, k=4, mesh=mesh, precision="bfloat16x3",
                                      budget=budget)
  assert_exact_top_k(values, indices, pearson_float64(synthetic, train), 4)
  np.testing.assert_array_equal(indices[:2, 0], [3, 499])
  assert values[0, 0] >= 1 - 1e-6 and values[1, 0] >= 1 - 1e-6


@pytest.mark.parametrize("precision", ["float32", "bfloat16x3"])
def test_every_value_is_the_float64_correlation(rng, precision):
  mesh = parallel.data_mesh(4)
  train = rng.integers(0, 256, (150, 40, 40)).astype(np.uint8)
  train[149] = train[20]  # a duplicate: the tie goes to the lower index, 20
  nearly = train[60].copy()
  nearly[0, :12] = 255 - nearly[0, :12]
  one_pixel = train[90].copy()
  one_pixel[5, 5] = one_pixel[5, 5] + 20 if one_pixel[5, 5] < 128 else one_pixel[5, 5] - 20
  synthetic = np.stack([train[20], train[100], nearly, one_pixel,
                        rng.integers(0, 256, (40, 40)).astype(np.uint8)])
  reference = pearson_float64(synthetic, train)
  result = correlation.search_correlation(synthetic, train, 3, mesh=mesh, precision=precision)
  np.testing.assert_array_equal(result.indices[:4, 0], [20, 100, 60, 90])
  assert result.indices[0, 1] == 149
  np.testing.assert_array_equal(result.values[:2, 0], 1.0)
  assert result.values[0, 1] == 1.0
  assert result.values.dtype == np.float64
  assert_exact_top_k(result.values, result.indices, reference, 3, atol=1e-12)
  # The kernel's own scores are float32 estimates: the rescoring is what makes them exact.
  kernel = correlation.search_correlation(synthetic, train, 3, mesh=mesh, precision=precision,
                                          refine=False)
  np.testing.assert_array_equal(kernel.indices, result.indices)
  assert np.max(np.abs(kernel.values - result.values)) > 1e-9


def test_candidates_the_bound_cannot_separate_are_searched_again(rng):
  # 120 references within about 1e-6 of each other: the float32 ranking cannot tell them apart
  # (the bound is about 1e-4), so the 2 + 8 candidates are not proven enough for either query;
  # both are searched again until every reference is a candidate, and the answer is float64's.
  mesh = parallel.data_mesh(4)
  base = rng.random((24, 24))
  train = (base + rng.normal(0, 1e-6, (120, 24, 24))).astype(np.float64)
  synthetic = np.stack([base + rng.normal(0, 1e-6, (24, 24)), rng.random((24, 24))])
  reference = pearson_float64(synthetic, train)
  result = correlation.search_correlation(synthetic, train, 2, mesh=mesh)
  assert result.searched_again == 2
  assert_exact_top_k(result.values, result.indices, reference, 2, atol=1e-12)
  for row in range(2):
    best = np.lexsort((np.arange(120), -reference[row]))[:2]
    np.testing.assert_array_equal(result.indices[row], best)
  # Well-separated candidates are proven at once: nothing is searched again.
  separated = correlation.search_correlation(rng.random((5, 24, 24)), rng.random((120, 24, 24)),
                                             2, mesh=mesh)
  assert separated.searched_again == 0
