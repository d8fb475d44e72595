"""What memjax's command lines share: a user error ends in one line and exit status 2, Ctrl-C
in one line and exit status 130; a config by name or path; `--help` with a config's keys; what a
workflow says on stdout."""

import importlib.util
import os
import pathlib
import re
import sys
from collections.abc import Callable
from typing import TypeVar

from absl import logging

T = TypeVar("T")

# What a missing file, a corrupt image, a wrong setting or a workflow not built yet raise.
USER_ERRORS = (ValueError, OSError, NotImplementedError)


# Ctrl-C's exit status, as a shell reports a process that SIGINT ended (128 + 2).
INTERRUPTED_STATUS = 130
INTERRUPTED = ("interrupted (Ctrl-C): nothing half-written is left; the work dir keeps its "
               "previous results and finished checkpoints as they were. Run the same command "
               "again to redo the step (training resumes from its last checkpoint)")


def run_reporting_user_errors(function: Callable[[], T]) -> T:
  """Runs `function`; a user error prints `error: ...` on stderr and exits with status 2, and
  Ctrl-C prints one line saying what it left and exits with status 130.

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
  except KeyboardInterrupt:
    if os.environ.get("MEMJAX_TRACEBACK"):
      raise
    logging.flush()
    print(INTERRUPTED, file=sys.stderr)
    sys.exit(INTERRUPTED_STATUS)


def say(text: str) -> None:
  """Prints one line of a workflow's summary on stdout (process 0 only: one line per run)."""
  import jax  # pylint: disable=g-import-not-at-top
  if jax.process_index() == 0:
    print(text, flush=True)


def configs_dir() -> pathlib.Path:
  """The shipped configs: memjax/configs in an installed wheel (setup.py maps the repository's
  configs/ there), the repository's configs/ in a checkout."""
  package = pathlib.Path(__file__).resolve().parent
  for folder in (package / "configs", package.parent / "configs"):
    if (folder / "default.py").is_file():
      return folder
  raise FileNotFoundError(f"no shipped configs beside {package}: reinstall memjax")


def shipped_configs() -> dict[str, str]:
  """Name -> the first line of its docstring, for every shipped config."""
  import ast  # pylint: disable=g-import-not-at-top
  found = {}
  for file in sorted(configs_dir().glob("*.py")):
    if file.name.startswith("_"):
      continue
    doc = ast.get_docstring(ast.parse(file.read_text())) or ""
    found[file.stem] = doc.strip().split("\n")[0]
  return found


def _use_shipped_configs() -> None:
  """Makes `configs` (which config files import: `from configs import default`) the shipped
  configs package, wherever memjax is installed and whatever the current directory holds."""
  folder = configs_dir()
  loaded = sys.modules.get("configs")
  if loaded is not None and pathlib.Path(loaded.__file__).resolve().parent == folder:
    return
  spec = importlib.util.spec_from_file_location(
      "configs", folder / "__init__.py", submodule_search_locations=[str(folder)])
  module = importlib.util.module_from_spec(spec)
  sys.modules["configs"] = module
  spec.loader.exec_module(module)
  for name in [n for n in sys.modules if n.startswith("configs.")]:
    del sys.modules[name]  # a submodule of another configs package


def resolve_config(value: str) -> str:
  """A --config value as a file path: a path as given, a name (`audit`, `cxr_ddpm`, with an
  optional `:argument`) as the shipped config's file. FileNotFoundError naming the choices."""
  path, colon, argument = value.partition(":")
  if pathlib.Path(path).is_file():
    return value
  name = pathlib.Path(path).name.removesuffix(".py")
  shipped = configs_dir() / f"{name}.py"
  looks_like_a_name = path.removesuffix(".py") in (name, f"configs/{name}")
  if looks_like_a_name and shipped.is_file():
    return str(shipped) + colon + argument
  names = ", ".join(shipped_configs())
  raise FileNotFoundError(f"--config={value}: no such config file or shipped config; the "
                          f"shipped ones are {names}")


def _config_keys(config, prefix: str = "") -> list[str]:
  """Every dotted key of a ConfigDict, nested sections included."""
  keys = []
  for name in config.keys():
    value = config[name]
    keys.append(prefix + name)
    if hasattr(value, "keys") and hasattr(value, "get"):
      keys.extend(_config_keys(value, prefix + name + "."))
  return keys


def _load_config_file(path: str):
  """get_config() of a configs/*.py file (as config_flags loads it), or None if it cannot load."""
  file = pathlib.Path(path.split(":", 1)[0])
  if not file.is_file():
    raise FileNotFoundError(f"--config={path}: no such config file (see configs/*.py)")
  spec = importlib.util.spec_from_file_location("_memjax_config_file", file)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  argument = path.split(":", 1)[1] if ":" in path else None
  return module.get_config(argument) if argument is not None else module.get_config()


def check_config_overrides(argv: list[str]) -> None:
  """Raises ValueError, in one line, for a --config.KEY=VALUE whose KEY the config lacks, and
  FileNotFoundError for a --config file that does not exist.

  Names the nearest valid key where there is one, as `--config.trian` -> `--config.train`.
  """
  import difflib  # pylint: disable=g-import-not-at-top
  files = [a.split("=", 1)[1] for a in argv if a.startswith("--config=")]
  if not files:
    return
  config = _load_config_file(files[-1])
  keys = set(_config_keys(config))
  for argument in argv:
    if not argument.startswith("--config."):
      continue
    key = argument[len("--config."):].split("=", 1)[0]
    if key in keys:
      continue
    parent, _, leaf = key.rpartition(".")
    if parent in keys:  # a known section: the nearest of its own keys
      siblings = [k.rpartition(".")[2] for k in keys if k.rpartition(".")[0] == parent]
      near = [f"{parent}.{n}" for n in difflib.get_close_matches(leaf, siblings, n=1)]
    else:
      near = difflib.get_close_matches(key, sorted(keys), n=1, cutoff=0.75)
    hint = f"; did you mean --config.{near[0]}?" if near else ""
    raise ValueError(f"--config.{key} is not a key of {files[-1]}{hint}")


_ASSIGNMENT = re.compile(r"^\s*config\.([\w.]+)\s*=\s*(.*)$")
_IMPORT = re.compile(r"^\s*from configs import (\w+)", re.MULTILINE)
HELP_FLAGS = ("--help", "-h", "--helpshort", "--helpfull", "-help", "-?")


def _one_line(text: str, width: int = 90) -> str:
  """`text` on one line: its first sentence, cut to `width` characters."""
  text = " ".join(text.split())
  cut = text.find(". ")
  text = text[:cut + 1] if cut > 0 else text
  return text if len(text) <= width else text[:width - 3].rstrip() + "..."


def key_meanings(file: str | pathlib.Path) -> dict[str, str]:
  """Config key -> its one-line meaning, from the comments of a config file and of the configs it
  imports (`from configs import default`): a comment at the end of the key's line, else the
  comment block above a run of assignments. The file's own comments win over those it imports."""
  file = pathlib.Path(file)
  order, queue = [], [file]
  while queue:  # the file, then what it imports, nearest first
    current = queue.pop(0)
    if current in order or not current.is_file():
      continue
    order.append(current)
    queue += [current.parent / f"{name}.py" for name in _IMPORT.findall(current.read_text())]
  meanings: dict[str, str] = {}
  for current in order:
    block: list[str] = []  # the comment block above the current run of assignments
    after_comment = False
    for line in current.read_text().splitlines():
      stripped = line.strip()
      if stripped.startswith("#"):
        text = stripped.lstrip("#").strip()
        block = block + [text] if after_comment else [text]
        after_comment = True
        continue
      after_comment = False
      match = _ASSIGNMENT.match(line)
      if not match:
        block = []
        continue
      key, rest = match.groups()
      trailing = rest.split("  # ", 1)[1] if "  # " in rest else ""
      if trailing:
        block = []  # the block spoke of the assignments before this one
      meaning = trailing or " ".join(block)
      if meaning and key not in meanings:
        meanings[key] = _one_line(meaning)
  return meanings


def config_help(path: str) -> str:
  """The keys of the config at `path` (a file, optionally `:argument`), each with its value and
  its one-line meaning, as `--help` lists them."""
  config = _load_config_file(path)
  meanings = key_meanings(path.split(":", 1)[0])
  lines = []
  for key in _config_keys(config):
    value = config
    for part in key.split("."):
      value = value[part]
    if hasattr(value, "keys") and hasattr(value, "get"):
      continue  # a section: its keys follow
    # A model's section in the demo (ddpm.model.dtype) means what the key means alone.
    tail = [key.split(".", n)[-1] for n in range(key.count(".") + 1)]
    meaning = next((meanings[t] for t in tail if t in meanings), "")
    setting = f"  --config.{key}={value}"
    lines.append(setting if not meaning else f"{setting:<52} {meaning}"
                 if len(setting) < 52 else f"{setting}\n{'':<53}{meaning}")
  return "\n".join(lines)


def print_help(argv: list[str], usage: str | None) -> None:
  """What --help prints: the usage, the shipped configs, the command's flags and the keys of the
  chosen config (of `default` without one)."""
  from absl import flags  # pylint: disable=g-import-not-at-top
  files = [a.split("=", 1)[1] for a in argv if a.startswith("--config=")]
  path = files[-1] if files else str(configs_dir() / "default.py")
  print((usage or "").strip() + "\n")
  print("shipped configs (--config=NAME):")
  for name, line in shipped_configs().items():
    print(f"  {name:<22} {_one_line(line, 76)}")
  module = flags.FLAGS.find_module_defining_flag("workdir")
  if module:
    print("\nflags:\n" + flags.FLAGS.module_help(module))
  print(f"\nsettings of --config={path} (--config.KEY=VALUE):")
  print(config_help(path))


def _resolved(argv: list[str]) -> list[str]:
  """argv with each --config=NAME (or `--config NAME`) as the shipped config's path."""
  out = list(argv)
  for i, argument in enumerate(out):
    if argument.startswith("--config="):
      out[i] = "--config=" + resolve_config(argument.split("=", 1)[1])
    elif argument == "--config" and i + 1 < len(out):
      out[i + 1] = resolve_config(out[i + 1])
  for i, argument in enumerate(out[:-1]):  # one form from here on
    if argument == "--config":
      out[i:i + 2] = ["--config=" + out[i + 1]]
      break
  return out


def parse_flags(argv: list[str], usage: str | None = None) -> list[str]:
  """absl's flag parsing for memjax's command: --help lists the config's keys and exits 0; a
  config by name is the shipped one; an unknown config key names the nearest valid one, and a
  value of the wrong type or a missing flag says so, with exit status 2."""
  from absl import flags  # pylint: disable=g-import-not-at-top
  try:
    argv = _resolved(argv)
    _use_shipped_configs()
    if any(argument in HELP_FLAGS for argument in argv[1:]):
      print_help(argv, usage)
      sys.exit(0)
    check_config_overrides(argv)
    return flags.FLAGS(argv)
  except (flags.Error, ValueError, AttributeError, KeyError, TypeError, OSError) as error:
    if os.environ.get("MEMJAX_TRACEBACK"):
      raise
    message = " ".join(str(error).split())
    print(f"error: {message}", file=sys.stderr)
    sys.exit(2)


def parse_tool_flags(argv: list[str]) -> list[str]:
  """absl's flag parsing for the scripts in tools/: --help prints the script's docstring and its
  flags and exits 0; a flag error is one line with exit status 2."""
  from absl import flags  # pylint: disable=g-import-not-at-top
  if any(argument in HELP_FLAGS for argument in argv[1:]):
    main = sys.modules.get("__main__")
    print(((main.__doc__ if main else None) or "").strip() + "\n")
    print("flags:\n" + flags.FLAGS.main_module_help())
    sys.exit(0)
  try:
    return flags.FLAGS(argv)
  except flags.Error as error:
    if os.environ.get("MEMJAX_TRACEBACK"):
      raise
    print(f"error: {' '.join(str(error).split())}", file=sys.stderr)
    sys.exit(2)
