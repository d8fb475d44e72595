r"""One process of a multi-process memjax run, started by tests/test_multihost.py.

  python tests/multihost_child.py SPEC.json

SPEC.json names this process (`process_id` of `num_processes`), the coordinator's address, the
CPU devices it gets, JAX's heartbeat and shutdown timeouts, and a list of tasks to run in order
(one process does several checks, so that JAX starts and compiles once). Each task runs a memjax
entry point (`memjax.workflows.run`, the input pipeline) and writes what the parent compares into
`out` (a folder of this process's own). The parent runs the same task functions itself, as one
process with 4 devices, for the reference.

The process joins the cluster as launch.py does (`memjax.parallel.initialize_distributed`) and
ends as launch.py does (`memjax.parallel.wait_for_every_process`), with gloo as the CPU
collectives.
"""

from __future__ import annotations

import json
import os
import pathlib
import struct
import sys
import threading
import time
from typing import Any

REPO = pathlib.Path(__file__).resolve().parent.parent


def read_scalars(events: pathlib.Path, tag: str) -> dict[int, float]:
  """One scalar of every TensorBoard event file in `events`, {step: value}; later files win."""
  from tensorboardX.proto import event_pb2  # pylint: disable=g-import-not-at-top
  scalars = {}
  for path in sorted(events.glob("events.out.tfevents.*"), key=lambda p: p.stat().st_mtime_ns):
    data = path.read_bytes()
    position = 0
    while position + 12 <= len(data):  # TFRecord: length, its CRC, the record, its CRC.
      (length,) = struct.unpack("<Q", data[position:position + 8])
      event = event_pb2.Event.FromString(data[position + 12:position + 12 + length])
      position += 12 + length + 4
      for value in event.summary.value:
        if value.tag == tag and value.HasField("simple_value"):
          scalars[event.step] = value.simple_value
  return scalars


# ----------------------------------------------------------------------------------------------
# Configs of the checks: the demo DDPM at a tiny size, and the audit.


# configs/demo_ddpm.py at a size that trains a step in well under a second on a CPU.
TINY_TRAINING = {
    "data.downsample": 1, "data.num_threads": 1, "data.prefetch_batches": 1,
    "model.model_channels": 32, "model.channel_mult": (1,), "model.num_res_blocks": 1,
    "model.attention_resolutions": (), "model.num_head_channels": -1,
    "model.dropout": 0.1,  # so that the dropout masks must agree too
    "diffusion.num_steps": 100, "sample.num_steps": 4,
    "batch_size": 8, "log_every_steps": 1, "checkpoint_every_steps": 2, "keep_checkpoints": 10,
    "sample_every_steps": 0, "optimizer.warmup_steps": 2, "progress": False,
    # Adam divides each gradient by its own running size. Where the per-device parts of a
    # gradient nearly cancel, the order of the cross-device sum (gloo's across processes, XLA's
    # within one) decides its last bits and, through that division, moves the parameter by up
    # to the learning rate: with the demo's eps of 1e-8, 62 of 324k parameters differed by more
    # than 1e-6 (at most 3e-5) after 6 steps, while every loss agreed to 1e-6. With an eps above
    # such gradients, a rounding of the gradient moves its parameter by only lr * rounding / eps.
    "optimizer.eps": 1e-3,
}


def train_config(source: str, **overrides: Any):
  """configs/demo_ddpm.py with TINY_TRAINING, training on `source`."""
  from configs import default, demo_ddpm  # pylint: disable=g-import-not-at-top
  return default.override(demo_ddpm.get_config(),
                          {**TINY_TRAINING, "data.source": source, **overrides})


def audit_config(synthetic: str, train: str, **overrides: Any):
  from configs import audit, default  # pylint: disable=g-import-not-at-top
  config = audit.get_config()
  settings = {"synthetic": synthetic, "train": train, "audit.k": 5, "audit.block_size": 16,
              "audit.progress": False, "audit.num_pairs": 2}
  settings.update(overrides)
  return default.override(config, settings)


# ----------------------------------------------------------------------------------------------
# The checks. Each returns what the parent compares (and, in a child, is written to `out`).


class ReadLog:
  """Records every positioned read of .npy rows: (file, first row, end row, thread name).

  The search's block reader runs in threads named memjax-reader*, so the rows it read are told
  apart from other reads (the float64 rescoring of near copies, the report). With `delay`, each
  read first sleeps that long: a slow disk, so that a run can be killed between checkpoints.
  """

  def __init__(self, delay: float = 0.0):
    from memjax.data.sources import arrays  # pylint: disable=g-import-not-at-top
    self.reads: list[tuple[str, int, int, str]] = []
    self._lock = threading.Lock()
    self._arrays = arrays
    self._original = original = arrays.PositionedReader.readinto
    reads, lock = self.reads, self._lock

    def readinto(reader, start, stop, buffer):
      name = os.path.basename(reader._stored.path)  # pylint: disable=protected-access
      with lock:
        reads.append((name, int(start), int(stop), threading.current_thread().name))
      if delay:
        time.sleep(delay)
      return original(reader, start, stop, buffer)

    arrays.PositionedReader.readinto = readinto

  def close(self):
    self._arrays.PositionedReader.readinto = self._original


def run_audit(synthetic: str, train: str, workdir: str) -> dict[str, Any]:
  """The audit workflow; returns the rows of each file that were read, by which thread."""
  from memjax import workflows  # pylint: disable=g-import-not-at-top
  log = ReadLog()
  try:
    summary = workflows.run(audit_config(synthetic, train), workdir)
  finally:
    log.close()
  return {"reads": log.reads, "summary": summary}


def global_batches(source: str, batch_size: int, count: int, seed: int = 0) -> dict[str, Any]:
  """The first `count` global batches of the training pipeline, whole on every process."""
  import numpy as np  # pylint: disable=g-import-not-at-top
  from memjax import parallel  # pylint: disable=g-import-not-at-top
  from memjax.data import pipeline  # pylint: disable=g-import-not-at-top
  from memjax.data import sources  # pylint: disable=g-import-not-at-top

  images = sources.open_source(source)

  class Examples:
    def __len__(self):
      return len(images)

    def __getitem__(self, index):
      # The example's own index rides along as a pixel-free feature: which examples a batch
      # holds, in which rows.
      return {"image": images.read(index, index + 1, dtype=None)[0][..., None],
              "index": np.int32(index)}

  batches = pipeline.device_batches(Examples(), parallel.data_mesh(), batch_size=batch_size,
                                    seed=seed, features=("image", "index"), num_threads=1,
                                    prefetch_batches=1)
  out = {"index": [], "image": []}
  for _ in range(count):
    batch = next(batches)
    out["index"].append(parallel.to_host(batch["index"]))
    out["image"].append(parallel.to_host(batch["image"]))
  return {key: np.stack(value) for key, value in out.items()}


def run_training(source: str, workdir: str, num_train_steps: int, read_delay: float = 0.0,
                 **overrides: Any) -> dict[str, Any]:
  """The train workflow to `num_train_steps` (resuming from workdir); returns the parameters
  (this process's replica) and the step. `read_delay` slows every read of a training image."""
  import numpy as np  # pylint: disable=g-import-not-at-top
  from flax import nnx  # pylint: disable=g-import-not-at-top
  import jax  # pylint: disable=g-import-not-at-top
  from memjax import workflows  # pylint: disable=g-import-not-at-top
  log = ReadLog(read_delay)
  try:
    result = workflows.run(train_config(source, num_train_steps=num_train_steps, **overrides),
                           workdir)
  finally:
    log.close()
  params = {}
  for path, leaf in jax.tree_util.tree_leaves_with_path(nnx.state(result.state, nnx.Param)):
    assert leaf.sharding.is_fully_replicated, (path, leaf.sharding)
    params[jax.tree_util.keystr(path)] = np.asarray(leaf.addressable_shards[0].data)
  return {"params": params, "step": int(result.step)}


# ----------------------------------------------------------------------------------------------
# The child process.


def _write_json(path: pathlib.Path, value: Any) -> None:
  temporary = path.with_name(path.name + ".tmp")
  temporary.write_text(json.dumps(value))
  os.replace(temporary, path)


def _write_npz(path: pathlib.Path, arrays: dict[str, Any]) -> None:
  import numpy as np  # pylint: disable=g-import-not-at-top
  temporary = path.with_name(path.name + ".tmp.npz")
  np.savez(temporary, **arrays)
  os.replace(temporary, path)


def _run_task(task: dict[str, Any], out: pathlib.Path, process_id: int) -> None:
  """Runs one task (on `only_process` alone when it names one); '{process_id}' in a task's
  strings is this process's id."""
  task = {key: value.format(process_id=process_id) if isinstance(value, str) else value
          for key, value in task.items()}
  kind = task["kind"]
  if task.get("only_process", process_id) != process_id:
    return
  started, cpu = time.monotonic(), time.process_time()
  if kind == "sleep":  # work that one process does alone, as process 0 writes a report
    time.sleep(task["seconds"])
  elif kind == "audit":
    _write_json(out / f"{task['name']}.json",
                run_audit(task["synthetic"], task["train"], task["workdir"]))
  elif kind == "batches":
    _write_npz(out / f"{task['name']}.npz",
               global_batches(task["source"], task["batch_size"], task["count"]))
  elif kind == "train":
    result = run_training(task["source"], task["workdir"], task["num_train_steps"],
                          task.get("read_delay", 0.0), **task.get("overrides", {}))
    _write_npz(out / f"{task['name']}.npz", {"step": result["step"], **result["params"]})
  else:
    raise ValueError(f"unknown task {kind!r}")
  # A marker per finished task, with its seconds and CPU seconds: how far a killed process got,
  # and what took long.
  (out / f"{task['name']}.done").write_text(
      f"{time.monotonic() - started:.2f} {time.process_time() - cpu:.2f}")


def main(spec_path: str) -> None:
  spec = json.loads(pathlib.Path(spec_path).read_text())
  # Before jax is imported: this process's CPU devices.
  os.environ["XLA_FLAGS"] = f"--xla_force_host_platform_device_count={spec['devices']}"
  os.environ["JAX_PLATFORMS"] = "cpu"
  sys.path.insert(0, str(REPO))
  import jax  # pylint: disable=g-import-not-at-top
  jax.config.update("jax_cpu_collectives_implementation", "gloo")
  from memjax import parallel  # pylint: disable=g-import-not-at-top
  joined = parallel.initialize_distributed(
      coordinator_address=spec["coordinator_address"], num_processes=spec["num_processes"],
      process_id=spec["process_id"], heartbeat_timeout_seconds=spec.get("heartbeat_timeout"),
      shutdown_timeout_seconds=spec.get("shutdown_timeout"))
  assert joined and jax.process_count() == spec["num_processes"], jax.process_count()
  assert jax.process_index() == spec["process_id"]
  assert len(jax.local_devices()) == spec["devices"], jax.local_devices()
  out = pathlib.Path(spec["out"])
  out.mkdir(parents=True, exist_ok=True)
  (out / "start.done").write_text(f"{time.process_time():.2f}")  # CPU seconds to join
  for task in spec["tasks"]:
    _run_task(task, out, spec["process_id"])
  parallel.wait_for_every_process("tests/multihost_child.py done")


if __name__ == "__main__":
  main(sys.argv[1])
