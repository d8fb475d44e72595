"""Two real processes on JAX's distributed runtime against one process with 4 devices.

Each child gets 2 forced CPU devices and joins a cluster on loopback with gloo collectives; this
process, with its 4 devices (tests/conftest.py), does the same work for the reference. The
`runs` fixture plays one story, while this process computes the reference beside it:

1. a pair of children (tests/multihost_child.py) reads the input pipeline's first batches, runs
   the audit workflow, and trains the demo DDPM (tiny) with slow reads; as soon as a checkpoint
   is complete, process 1 is killed, and process 0 must end with JAX's error within a bounded
   time;
2. the same training is re-run by two `launch.py` processes (process 0 given
   --coordinator_address/--num_processes/--process_id, process 1 the JAX_* variables), which
   resume from the last complete checkpoint and train on to step 6;
3. this process restores the final checkpoint (1 process, 4 devices), and resumes a copy of the
   killed run's checkpoint to step 6.

Beside step 1, a second pair shows that a process waits for process 0's last work at exit.

Every child runs under a deadline: a hung one is killed and fails the test, never hangs CI.
"""

from __future__ import annotations

import json
import os
import pathlib
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time

import numpy as np
import pytest

import multihost_child as child
from memjax import parallel
from memjax.memorization import top_k_correlation

TESTS = pathlib.Path(__file__).resolve().parent
NUM_PROCESSES = 2
DEVICES_PER_PROCESS = 2
HEARTBEAT_SECONDS = 4  # a dead peer ends the survivor within about this (JAX's default is 100)
SURVIVOR_SECONDS = HEARTBEAT_SECONDS + 30  # ... and within this on a loaded 2-core machine
DEADLINE = 300  # seconds for a pair of children, starts and compiles included
STEPS = 6

def free_port() -> int:
  with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
    s.bind(("127.0.0.1", 0))
    return s.getsockname()[1]


def child_env(**extra: str) -> dict[str, str]:
  """This session's environment (its compilation cache too), with 2 CPU devices, not 4."""
  env = {key: value for key, value in os.environ.items() if not key.startswith("JAX_NUM")}
  env["XLA_FLAGS"] = f"--xla_force_host_platform_device_count={DEVICES_PER_PROCESS}"
  env["PYTHONUNBUFFERED"] = "1"
  env.update(extra)
  return env


class Processes:
  """The processes of one run, each with a log; killed all together past a deadline."""

  def __init__(self, folder: pathlib.Path, commands: list[list[str]],
               envs: list[dict[str, str]]):
    folder.mkdir(parents=True, exist_ok=True)
    self.logs = [folder / f"process{i}.log" for i in range(len(commands))]
    self.processes = []
    for command, env, log in zip(commands, envs, self.logs):
      with open(log, "wb") as output:
        self.processes.append(subprocess.Popen(command, cwd=TESTS.parent, env=env,
                                               stdout=output, stderr=subprocess.STDOUT))

  @classmethod
  def children(cls, folder: pathlib.Path, tasks: list[dict], **spec) -> Processes:
    """NUM_PROCESSES children of tests/multihost_child.py, each running `tasks`."""
    address = f"127.0.0.1:{free_port()}"
    commands = []
    for process_id in range(NUM_PROCESSES):
      spec_path = folder / f"spec{process_id}.json"
      spec_path.parent.mkdir(parents=True, exist_ok=True)
      spec_path.write_text(json.dumps(dict(
          spec, process_id=process_id, num_processes=NUM_PROCESSES, coordinator_address=address,
          devices=DEVICES_PER_PROCESS, heartbeat_timeout=HEARTBEAT_SECONDS,
          out=str(folder / f"out{process_id}"), tasks=tasks)))
      commands.append([sys.executable, str(TESTS / "multihost_child.py"), str(spec_path)])
    return cls(folder, commands, [child_env()] * NUM_PROCESSES)

  def out(self, process_id: int) -> pathlib.Path:
    return self.logs[process_id].parent / f"out{process_id}"

  def log_tails(self, chars: int = 3000) -> str:
    return "\n".join(
        f"--- process {i} (exit {p.poll()}):\n{log.read_text(errors='replace')[-chars:]}"
        for i, (p, log) in enumerate(zip(self.processes, self.logs)))

  def kill(self) -> None:
    for process in self.processes:
      if process.poll() is None:
        process.kill()
      process.wait()

  def wait(self, deadline: float) -> str | None:
    """Waits for every process to exit; what went wrong, or None when all exited with 0.

    Past the deadline the processes are killed.
    """
    try:
      for process in self.processes:
        process.wait(timeout=max(0.1, deadline - time.monotonic()))
    except subprocess.TimeoutExpired:
      self.kill()
      return "the processes did not finish in time (killed)\n" + self.log_tails()
    if any(p.returncode for p in self.processes):
      return self.log_tails()
    return None


def training_images() -> np.ndarray:
  """48 uint8 8x8 images of random 2x2 blocks."""
  blocks = np.random.default_rng(7).integers(0, 256, (48, 4, 4), dtype=np.uint8)
  return blocks.repeat(2, axis=1).repeat(2, axis=2)


def synthetic_images(train: np.ndarray) -> np.ndarray:
  """10 images: exact copies of training images 5 and 40 (read by process 0 and by process 1),
  a near copy of 21, and noise."""
  rng = np.random.default_rng(8)
  images = rng.integers(0, 256, (10, 8, 8), dtype=np.uint8)
  images[2], images[7] = train[5], train[40]
  images[4] = np.clip(train[21].astype(int) + rng.integers(-3, 4, (8, 8)), 0, 255)
  return images


def complete_checkpoints(workdir: pathlib.Path) -> list[int]:
  """Steps that orbax finished (it renames a step's temporary folder when it is complete)."""
  folder = workdir / "checkpoints"
  if not folder.is_dir():
    return []
  return sorted(int(p.name) for p in folder.iterdir() if p.name.isdigit())


def launch_command(train: pathlib.Path, workdir: pathlib.Path, *flags: str) -> list[str]:
  """launch.py with configs/demo_ddpm.py at the children's tiny size."""
  overrides = [f"--config.{key}={value!r}" if isinstance(value, tuple) else
               f"--config.{key}={value}" for key, value in child.TINY_TRAINING.items()]
  return [sys.executable, "launch.py", "--config=configs/demo_ddpm.py", f"--workdir={workdir}",
          f"--config.data.source={train}", f"--config.num_train_steps={STEPS}", *overrides,
          *flags]


def attempt(function, *args):
  """function(*args), or the user error it raised (its test fails on it; the others run)."""
  try:
    return function(*args)
  except ValueError as error:
    return error


def result_of(value):
  """The result that `attempt` kept; its error raised again, as an AssertionError where it is
  a refusal of a pipeline state of another process count (which must resume)."""
  if isinstance(value, Exception):
    assert "process_count" not in str(value), str(value)
    raise value
  return value


class Killer(threading.Thread):
  """Kills process 1 of `pair` as soon as `workdir` holds a complete checkpoint, then times how
  long process 0 lives on."""

  def __init__(self, pair: Processes, workdir: pathlib.Path, deadline: float):
    super().__init__(daemon=True)
    self.pair, self.workdir, self.deadline = pair, workdir, deadline
    self.error = None
    self.survived_seconds = None
    self.saved_at_kill = None

  def run(self):
    survivor, victim = self.pair.processes
    while not complete_checkpoints(self.workdir):
      if survivor.poll() is not None or victim.poll() is not None:
        self.error = "a child ended before the first checkpoint"
        return
      if time.monotonic() > self.deadline:
        self.error = "no checkpoint before the deadline"
        return
      time.sleep(0.05)
    victim.send_signal(signal.SIGKILL)
    killed_at = time.monotonic()
    victim.wait()
    try:
      survivor.wait(timeout=SURVIVOR_SECONDS)
    except subprocess.TimeoutExpired:
      self.error = f"process 0 still ran {SURVIVOR_SECONDS} s after process 1 was killed"
      return
    self.survived_seconds = time.monotonic() - killed_at
    self.saved_at_kill = complete_checkpoints(self.workdir)


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
  root = tmp_path_factory.mktemp("multihost")
  train, synthetic = root / "train.npy", root / "synthetic.npy"
  np.save(train, training_images())
  np.save(synthetic, synthetic_images(training_images()))
  workdir = root / "train_2p"
  started = time.monotonic()
  deadline = started + DEADLINE

  # 1. Batches, the audit (each process its own folder: process 1 must leave its empty), then
  # training read slowly (0.15 s an image: about a second a step), killed after a checkpoint.
  tasks = [dict(kind="batches", name="batches", source=str(train), batch_size=8, count=7)]
  tasks += [dict(kind="audit", name="audit", synthetic=str(synthetic), train=str(train),
                 workdir=str(root / "audit_2p_{process_id}"))]
  tasks += [dict(kind="train", name="train", source=str(train), workdir=str(workdir),
                 num_train_steps=40, read_delay=0.15)]
  pair = Processes.children(root / "killed", tasks)
  # Beside it, a pair whose process 0 works 3 s longer than process 1, with JAX's shutdown
  # timeout at 1 s: at exit JAX would end both while process 0 works, unless process 1 waits
  # for it (memjax.parallel.wait_for_every_process, as launch.py does at the end).
  barrier = Processes.children(
      root / "barrier", [dict(kind="sleep", name="sleep", seconds=3, only_process=0)],
      shutdown_timeout=1)
  killer = Killer(pair, workdir, deadline)
  killer.start()
  try:
    reference = dict(
        batches=child.global_batches(str(train), 8, 7),
        audit=top_k_correlation(str(synthetic), str(train), 5, block_size=16),
        train=child.run_training(str(train), str(root / "train_1p"), STEPS))
    killer.join(timeout=max(0.1, deadline - time.monotonic()))
    assert not killer.is_alive() and killer.error is None, (killer.error, pair.log_tails())
    barrier_failure = barrier.wait(deadline)
  finally:
    pair.kill()
    barrier.kill()
  saved_at_kill = killer.saved_at_kill
  assert saved_at_kill and max(saved_at_kill) < STEPS, saved_at_kill
  moved_workdir = root / "moved"
  shutil.copytree(workdir, moved_workdir)

  # 2. Both again with launch.py, as a user re-runs the command: flags for process 0, the
  # environment for process 1.
  address = f"127.0.0.1:{free_port()}"
  rerun = Processes(root / "rerun", [
      launch_command(train, workdir, f"--coordinator_address={address}", "--num_processes=2",
                     "--process_id=0", f"--heartbeat_timeout_seconds={HEARTBEAT_SECONDS}"),
      launch_command(train, workdir, f"--heartbeat_timeout_seconds={HEARTBEAT_SECONDS}"),
  ], [child_env(), child_env(JAX_COORDINATOR_ADDRESS=address, JAX_NUM_PROCESSES="2",
                              JAX_PROCESS_ID="1")])
  try:
    # 3. Meanwhile, one process with 4 devices resumes the killed run's copy.
    moved = attempt(child.run_training, str(train), str(moved_workdir), STEPS)
    rerun_failure = rerun.wait(deadline)
  finally:
    rerun.kill()
  restored = attempt(child.run_training, str(train), str(workdir), STEPS)  # nothing to train
  print(f"multi-process story: {time.monotonic() - started:.1f} s; process 0 ended "
        f"{killer.survived_seconds:.1f} s after process 1 was killed; tasks (s):",
        {p.stem: p.read_text() for p in pair.out(0).glob("*.done")})
  return dict(root=root, pair=pair, rerun=rerun, reference=reference, workdir=workdir,
              saved_at_kill=saved_at_kill, survived_seconds=killer.survived_seconds,
              moved_workdir=moved_workdir, moved=moved, restored=restored,
              rerun_failure=rerun_failure, barrier=barrier, barrier_failure=barrier_failure)


def test_global_batches_hold_the_same_examples_in_the_same_rows(runs):
  want = runs["reference"]["batches"]
  for process_id in range(NUM_PROCESSES):
    got = dict(np.load(runs["pair"].out(process_id) / "batches.npz"))
    for batch in range(len(want["index"])):
      assert sorted(got["index"][batch]) == sorted(want["index"][batch]), batch
    # Row by row: each example then gets the same noise and timestep from the step's key.
    np.testing.assert_array_equal(got["index"], want["index"])
    np.testing.assert_array_equal(got["image"], want["image"])


def test_audit_is_bitwise_the_same_and_written_once(runs):
  root = runs["root"]
  values, indices = runs["reference"]["audit"]  # the same search, one process, 4 devices
  with np.load(root / "audit_2p_0" / "correlations.npz") as found:
    got = {key: found[key] for key in ("values", "indices")}
  assert values.shape == (10, 5)
  np.testing.assert_array_equal(got["indices"], indices)
  assert got["values"].dtype == values.dtype and got["values"].tobytes() == values.tobytes()
  assert indices[2, 0] == 5 and indices[7, 0] == 40
  assert values[2, 0] == 1.0 and values[7, 0] == 1.0
  # Process 0 wrote the audit; process 1 wrote nothing.
  written = {p.name for p in (root / "audit_2p_0").iterdir()}
  assert {"matches.csv", "correlations.npz", "summary.json", "report.html",
          "config.json"} <= written
  assert list((root / "audit_2p_1").rglob("*")) == []


def test_each_process_reads_only_its_training_rows(runs):
  block, num_devices = 16, NUM_PROCESSES * DEVICES_PER_PROCESS
  per_device = block // num_devices
  reads = [json.loads((runs["pair"].out(p) / "audit.json").read_text())["reads"]
           for p in range(NUM_PROCESSES)]
  for process_id, process_reads in enumerate(reads):
    search = sorted((start, stop) for name, start, stop, thread in process_reads
                    if name == "train.npy" and thread.startswith("memjax-reader"))
    # Device d of the mesh holds rows [b + d * r, b + (d + 1) * r) of the block that starts at
    # b; this process's devices are 2p and 2p + 1.
    mine = range(process_id * DEVICES_PER_PROCESS, (process_id + 1) * DEVICES_PER_PROCESS)
    want = sorted((start + d * per_device, start + (d + 1) * per_device)
                  for start in range(0, len(training_images()), block) for d in mine)
    assert search == want, (process_id, search)
  # Outside the search, each process rescores its synthetic images' best candidates in float64
  # (k + 2 of them, k = 5; more only where the bound needs them): a read of each needed row, never
  # a pass over the training set.
  for process_reads in reads:
    others = [(start, stop) for name, start, stop, thread in process_reads
              if name == "train.npy" and not thread.startswith("memjax-reader")]
    assert sum(stop - start for start, stop in others) <= (5 + 2) * 10, others


def test_a_killed_process_ends_its_peer_with_a_clear_error(runs):
  survivor = runs["pair"].processes[0]
  assert survivor.returncode != 0
  log = runs["pair"].logs[0].read_text(errors="replace")
  # JAX's coordination service ends it (SIGABRT) once process 1 misses its heartbeats; a
  # collective that was waiting on process 1 may fail first, naming the lost connection.
  assert ("Terminating process because the JAX distributed service detected fatal errors. This "
          "most likely indicates that another task died" in log
          or "Connection reset by peer" in log), log[-3000:]
  assert runs["survived_seconds"] < SURVIVOR_SECONDS
  assert (runs["pair"].out(0) / "audit.done").exists()
  assert not (runs["pair"].out(0) / "train.done").exists()


def test_processes_wait_for_process_0_before_they_exit(runs):
  assert runs["barrier_failure"] is None, runs["barrier_failure"]
  assert (runs["barrier"].out(0) / "sleep.done").exists()
  assert not (runs["barrier"].out(1) / "sleep.done").exists()


def assert_params_close(got: dict[str, np.ndarray], want: dict[str, np.ndarray]) -> None:
  assert got.keys() == want.keys()
  for key, value in want.items():
    np.testing.assert_allclose(got[key], value, rtol=0, atol=1e-6, err_msg=key)


def test_the_rerun_resumes_and_matches_one_process(runs):
  if runs["rerun_failure"]:
    raise RuntimeError(f"the rerun failed:\n{runs['rerun_failure']}")
  losses = child.read_scalars(runs["workdir"] / "events", "loss")
  want = child.read_scalars(runs["root"] / "train_1p" / "events", "loss")
  assert sorted(want) == list(range(1, STEPS + 1))
  # What the killed run logged (it may lose its last lines) and, from its last complete
  # checkpoint on, what the rerun logged.
  last = max(runs["saved_at_kill"])
  assert set(range(last + 1, STEPS + 1)) <= set(losses) <= set(want), sorted(losses)
  assert f"trained to step {STEPS}" in runs["rerun"].logs[0].read_text(errors="replace")
  np.testing.assert_allclose([losses[s] for s in sorted(losses)],
                             [want[s] for s in sorted(losses)], rtol=1e-6, atol=1e-6)
  restored = result_of(runs["restored"])  # the final checkpoint, on 1 process with 4 devices
  assert restored["step"] == STEPS
  assert_params_close(restored["params"], runs["reference"]["train"]["params"])


def test_one_process_resumes_a_two_process_checkpoint(runs):
  """A run moved to a smaller machine: 1 process with 4 devices resumes the killed 2-process
  run from its last complete checkpoint and trains on as if it had never moved."""
  moved = result_of(runs["moved"])
  assert moved["step"] == STEPS
  losses = child.read_scalars(runs["moved_workdir"] / "events", "loss")
  want = child.read_scalars(runs["root"] / "train_1p" / "events", "loss")
  steps = range(max(runs["saved_at_kill"]) + 1, STEPS + 1)
  np.testing.assert_allclose([losses[s] for s in steps], [want[s] for s in steps], rtol=1e-6,
                             atol=1e-6)
  assert_params_close(moved["params"], runs["reference"]["train"]["params"])


# ----------------------------------------------------------------------------------------------
# Joining a cluster: what initialize_distributed reads, without starting one.


@pytest.fixture
def no_cluster(monkeypatch):
  # pylint: disable-next=protected-access
  launchers = (*parallel._SLURM, *parallel._OPEN_MPI, *parallel._TPU_PODS)
  for name in (*launchers, "JAX_COORDINATOR_ADDRESS", parallel.NUM_PROCESSES_ENV,
               parallel.PROCESS_ID_ENV):
    monkeypatch.delenv(name, raising=False)
  monkeypatch.setattr(parallel, "_on_cloud_tpu_vm", lambda: False)
  return monkeypatch


def test_one_machine_joins_nothing(no_cluster):
  assert parallel.cluster_environment() is None
  assert parallel.initialize_distributed() is False


def test_a_coordinator_without_its_processes_says_what_is_missing(no_cluster):
  # What the user ran: JAX reads the address but not the other two.
  no_cluster.setenv("JAX_COORDINATOR_ADDRESS", "127.0.0.1:1234")
  with pytest.raises(ValueError, match=r"missing: --num_processes or \$JAX_NUM_PROCESSES, "
                                       r"--process_id or \$JAX_PROCESS_ID"):
    parallel.initialize_distributed()
  no_cluster.setenv("JAX_NUM_PROCESSES", "two")
  with pytest.raises(ValueError, match=r"\$JAX_NUM_PROCESSES='two' is not an integer"):
    parallel.initialize_distributed()
  no_cluster.delenv("JAX_COORDINATOR_ADDRESS")
  with pytest.raises(ValueError, match=r"missing: --coordinator_address"):
    parallel.initialize_distributed(num_processes=2, process_id=0, coordinator_address="")


def test_launch_py_names_what_a_coordinator_lacks(tmp_path):
  """The issue's first try: launch.py with JAX_COORDINATOR_ADDRESS alone ends in one line."""
  # pylint: disable-next=protected-access
  launchers = {*parallel._SLURM, *parallel._OPEN_MPI, *parallel._TPU_PODS}
  env = {key: value for key, value in child_env(JAX_COORDINATOR_ADDRESS="127.0.0.1:1234").items()
         if key not in launchers}
  process = subprocess.run(
      [sys.executable, "launch.py", "--config=configs/audit.py", f"--workdir={tmp_path}"],
      cwd=TESTS.parent, env=env, capture_output=True, text=True, timeout=120)
  assert process.returncode == 2, process.stderr
  assert process.stderr.strip().splitlines()[-1] == (
      "error: a multi-process run needs the coordinator's host:port, the number of processes and "
      "this process's id; missing: --num_processes or $JAX_NUM_PROCESSES, --process_id or "
      "$JAX_PROCESS_ID (no Slurm, Open MPI or Cloud TPU environment to detect them from)")


def test_launchers_are_recognized(no_cluster):
  slurm = dict(SLURM_JOB_ID="7", SLURM_NODELIST="node[1-2]", SLURM_PROCID="0", SLURM_LOCALID="0")
  for name, value in slurm.items():
    no_cluster.setenv(name, value)
  no_cluster.setenv("SLURM_NTASKS", "1")  # one task, e.g. an interactive salloc: one machine
  assert parallel.cluster_environment() is None
  no_cluster.setenv("SLURM_NTASKS", "8")
  assert parallel.cluster_environment() == "slurm"
  for name in (*slurm, "SLURM_NTASKS"):
    no_cluster.delenv(name)
  no_cluster.setenv("TPU_WORKER_HOSTNAMES", "w0,w1")
  assert parallel.cluster_environment() == "cloud tpu"
