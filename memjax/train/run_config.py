"""A run's config.json: written beside its checkpoints, read back by `load_embedder` and compared
with the config of a resume, so that an error can say which keys changed.
"""

from __future__ import annotations

import json
import os
import pathlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # Configs are only read here; a bare machine may lack ml_collections.
  import ml_collections

CONFIG_FILE = "config.json"  # the run's config, beside its checkpoints

# Keys that steer a run without changing what its checkpoints hold or which batches it reads:
# left out when a resume's error lists the keys that changed. Dotted prefixes.
RUN_CONTROL_KEYS = (
    "workflow", "num_train_steps", "log_every_steps", "checkpoint_every_steps",
    "keep_checkpoints", "async_checkpoints", "sample_every_steps", "grid_size", "num_samples",
    "sample_batch_size", "progress", "num_devices", "data.num_threads", "data.prefetch_batches",
    "audit", "synthetic", "train", "holdout", "sample",
)


def as_json(config: ml_collections.ConfigDict) -> dict[str, Any]:
  """The config as config.json holds it: JSON values, with what JSON lacks as strings."""
  return json.loads(config.to_json_best_effort())


def write_config(config: ml_collections.ConfigDict, workdir: str | pathlib.Path) -> pathlib.Path:
  """Writes `config` as workdir/config.json (indented JSON), under a temporary name renamed."""
  path = pathlib.Path(workdir) / CONFIG_FILE
  path.parent.mkdir(parents=True, exist_ok=True)
  temporary = path.with_name(f".{path.name}.tmp")
  temporary.write_text(json.dumps(as_json(config), indent=2) + "\n")
  os.replace(temporary, path)
  return path


def read_saved_config(workdir: str | pathlib.Path) -> dict[str, Any] | None:
  """workdir/config.json as a dict; None when it is missing or unreadable."""
  try:
    saved = json.loads((pathlib.Path(workdir) / CONFIG_FILE).read_text())
  except (OSError, ValueError):
    return None
  return saved if isinstance(saved, dict) else None


def _flatten(tree: Any, prefix: str = "") -> dict[str, Any]:
  if not isinstance(tree, dict):
    return {prefix: tree}
  flat = {}
  for key, value in tree.items():
    flat.update(_flatten(value, f"{prefix}{key}" if not prefix else f"{prefix}.{key}"))
  return flat


def _is_run_control(key: str) -> bool:
  return any(key == prefix or key.startswith(prefix + ".") for prefix in RUN_CONTROL_KEYS)


def config_differences(saved: dict[str, Any], config: ml_collections.ConfigDict) -> list[str]:
  """'key saved -> now' for each key (dotted) whose value differs, run-control keys left out."""
  before, after = _flatten(saved), _flatten(as_json(config))
  missing = "<unset>"
  return [f"{key} {before.get(key, missing)!r} -> {after.get(key, missing)!r}"
          for key in sorted(set(before) | set(after))
          if before.get(key, missing) != after.get(key, missing) and not _is_run_control(key)]
