"""Renders the pages' templates (templates/*.html.j2) with Jinja2 and writes them atomically.

Autoescaping is on for every template: ids are user file names and descriptions user paths, so
any text reaches the page escaped. A page is written under a temporary name and renamed into
place, so a reader never sees half a page.
"""

from __future__ import annotations

import functools
import pathlib
from typing import Any

import jinja2

import memjax
from memjax import outputs

TEMPLATES = pathlib.Path(__file__).resolve().parent / "templates"


@functools.lru_cache(maxsize=1)
def environment() -> jinja2.Environment:
  if not (TEMPLATES / "base.html.j2").is_file():
    raise FileNotFoundError(
        f"the report templates are missing from {TEMPLATES}: the installed memjax lacks its "
        "package data; reinstall it (pip install memjax) or install from a checkout with "
        "pip install -e .")
  env = jinja2.Environment(loader=jinja2.FileSystemLoader(str(TEMPLATES)),
                           autoescape=True, undefined=jinja2.StrictUndefined,
                           trim_blocks=True, lstrip_blocks=True, keep_trailing_newline=True)
  env.filters["r"] = lambda value: "NaN" if value != value else f"{value:.4f}"
  return env


def render(template: str, **context: Any) -> str:
  """The page `template` rendered with `context` (and the memjax version for the footer)."""
  return environment().get_template(template).render(version=memjax.__version__, **context)


def write_page(path: str | pathlib.Path, page: str) -> pathlib.Path:
  """Writes `page` to `path` under a temporary name first; returns the path. A full disk is an
  error naming the page and its size, and leaves no temporary file."""
  path = pathlib.Path(path)
  path.parent.mkdir(parents=True, exist_ok=True)
  temporary = path.with_name(path.name + ".tmp")
  data = page.encode("utf-8")
  try:
    with outputs.writing(path, len(data)):
      temporary.write_bytes(data)
  except OSError:
    temporary.unlink(missing_ok=True)
    raise
  temporary.replace(path)
  return path
