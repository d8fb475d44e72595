"""tools/gpu_check.py, tried on the CPU at tiny sizes: the script runs, each line is JSON, and its
exactness figures hold here too. (Its speed targets are for a GPU; on a CPU they are only read.)"""

import json
import pathlib
import subprocess
import sys

ROOT = pathlib.Path(__file__).resolve().parents[1]


def test_gpu_check_runs_and_its_exactness_holds_on_cpu():
  completed = subprocess.run(
      [sys.executable, str(ROOT / "tools" / "gpu_check.py"), "--small",
       "--sections=exactness,search"], capture_output=True, text=True, timeout=300, check=True)
  lines = [json.loads(line) for line in completed.stdout.splitlines()]
  figures = {(line["section"], line["figure"]): line for line in lines}
  assert not [line for line in lines if line["figure"] == "error"], completed.stdout
  exactness = [line for line in lines if line["section"] == "exactness" and "target" in line]
  # The probe, then 4 cases (2 sizes, the phantoms, MNI152 slices) x 3 precisions x 2 figures.
  assert len(exactness) == 2 + 4 * 3 * 2
  assert all(line["ok"] for line in exactness), completed.stdout
  assert all(line["copies_found"] for line in exactness if "copies_found" in line)
  search = [line for line in lines if line["section"] == "search"]
  first = next(line for line in search if line["figure"].endswith("first call (compiles)"))
  assert first["copies_found"]
  paper = next(line for line in search if line["figure"].startswith("paper-scale audit search"))
  assert paper["value"] > 0 and paper["precision"] in ("float32", "bfloat16x3")
  # The closing line lists what missed its target; on a CPU only speed targets may miss.
  failed = figures[("all", "failed targets")]["value"]
  assert isinstance(failed, list)
  assert not [name for name in failed if "exact" in name or "float64" in name], failed
