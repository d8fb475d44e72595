"""Training: one module per model family (ddpm.py, stylegan2.py, contrastive.py) over the shared
loop, in rooms that import one way (no circle):

  inputs.py       the training images, opened through `memjax.data.sources.open`; downsampling
  state.py        `Trainer`, `TrainState`, the optimizer, `CompiledTrainer` (mesh, jit, keys)
  run_config.py   the run's config.json, and which keys a new config changes
  checkpoints.py  orbax checkpoints: save, restore the newest intact step, refuse a misfit config
  sampling.py     `sample` (the .npz chunks the audit reads) and image grids
  loop.py         `train`: steps, metrics, grids, checkpoints, resume

`config.model.name` picks the family; `make_trainer(config)` builds its `state.Trainer`.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # Configs are only read: a bare machine may lack ml_collections.
  import ml_collections


# Model name -> the module whose make_trainer(config) builds its state.Trainer.
FAMILIES = {
    "ddpm": "memjax.train.ddpm",
    "stylegan2": "memjax.train.stylegan2",
    "contrastive": "memjax.train.contrastive",
}


def make_trainer(config: ml_collections.ConfigDict):
  """The `state.Trainer` of `config.model.name`."""
  name = config.get("model", {}).get("name")
  if name not in FAMILIES:
    known = ", ".join(sorted(FAMILIES))
    raise ValueError(f"--config.model.name={name!r} names no trainable model; expected one of: "
                     f"{known} (start from a training config such as configs/demo_ddpm.py)")
  return importlib.import_module(FAMILIES[name]).make_trainer(config)
