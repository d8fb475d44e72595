"""The demo at several training-set sizes: memorization against the number of training images.

  python launch.py --config=configs/demo_sweep.py --workdir=runs/demo_sweep   # workflow "sweep"

`config.sizes` lists the training-set sizes (e.g. 8, 16, 48); the demo (memjax/demo.py) runs
once per size in `workdir/n<size>`, with every model's data.num_images set to that size and all
else as configured: the same models, the same budget of images seen, the same seeds. The subsets
are seeded by data.subset_seed and nested (`memjax.data.sources.subset`), so a larger set adds
images to a smaller one. Then `workdir/summary.json` collects each run's figures per model and
size, and `workdir/report.html` draws them against the size and links each run's comparison
page. Every run reuses what is finished, as the demo does.
"""

from __future__ import annotations

import json
import pathlib
import time
from typing import Any

import jax
import ml_collections

# The figures of each run that the sweep collects, per model and size.
FIGURE_KEYS = ("num_training_images", "images_seen", "training_steps", "training_seconds",
               "threshold", "fraction_memorized", "fraction_above_0.90", "fraction_above_0.95",
               "fraction_above_0.99", "median_max_correlation", "median_pairwise_correlation",
               "num_samples")


def sizes_of(config: ml_collections.ConfigDict) -> list[int]:
  """config.sizes as distinct positive integers in increasing order; ValueError otherwise."""
  try:
    sizes = [int(size) for size in config.sizes]
  except (TypeError, ValueError) as e:
    raise ValueError(f"--config.sizes must list training-set sizes (integers), not "
                     f"{config.sizes!r}") from e
  if any(size <= 0 for size in sizes) or len(set(sizes)) != len(sizes):
    raise ValueError(f"--config.sizes must list distinct positive numbers of training images, not "
                     f"{tuple(sizes)}")
  return sorted(sizes)


def size_config(config: ml_collections.ConfigDict, size: int) -> ml_collections.ConfigDict:
  """The demo's config for one size: every model's data.num_images is `size`, and no sizes."""
  one = config.copy_and_resolve_references()
  with one.unlocked():
    del one["sizes"]
  if "data" in one:
    one.data.num_images = size
  for name in one.models:
    one[name].data.num_images = size
  return one


def run_sweep(config: ml_collections.ConfigDict, workdir: str | pathlib.Path) -> dict[str, Any]:
  """Runs the demo at each of config.sizes in `workdir`; returns what it writes to
  summary.json: per model, each figure of FIGURE_KEYS as a list over the sizes."""
  from memjax import demo  # pylint: disable=g-import-not-at-top
  from memjax.cli import say  # pylint: disable=g-import-not-at-top
  from memjax.memorization import audit as audit_lib  # pylint: disable=g-import-not-at-top
  from memjax.memorization.report import sweep_page  # pylint: disable=g-import-not-at-top
  workdir = pathlib.Path(workdir)
  sizes = sizes_of(config)
  start = time.perf_counter()
  runs, summaries = {}, {}
  for n, size in enumerate(sizes):
    say(f"=== size {n + 1} of {len(sizes)}: {size} training images in "
             f"{workdir / f'n{size}'}")
    summaries[size] = demo.run_demo(size_config(config, size), workdir / f"n{size}")
    runs[size] = f"n{size}/report.html"
  names = list(summaries[sizes[0]]["models"])
  models = {name: {key: [summaries[size]["models"][name].get(key) for size in sizes]
                   for key in FIGURE_KEYS} for name in names}
  result = sweep_page.sweep_sentence(sizes, models)
  notes = sweep_page.variety_notes(
      sizes, models, [summaries[size]["training_median_pairwise_correlation"] for size in sizes])
  summary = audit_lib.json_safe({
      "sizes": sizes, "models": models, "result": result,
      "variety": notes,
      "runs": {str(size): runs[size] for size in sizes},
      "training_sets": {str(size): summaries[size]["training_set"] for size in sizes},
      "training_median_pairwise_correlation": [
          summaries[size]["training_median_pairwise_correlation"] for size in sizes],
      "wall_seconds": time.perf_counter() - start,
  })
  if jax.process_index() == 0:
    settings = json.loads(config.to_json_best_effort())
    sweep_page.write_sweep_report(workdir / "report.html", sizes=sizes, models=models,
                                  runs=runs, settings=settings, result=result, notes=notes)
    (workdir / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    say(f"  {result}")
    say(f"report: {workdir / 'report.html'}")
  return summary
