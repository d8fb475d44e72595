"""Slice order: which training images are the previous and next slice of a matched one.

Neighbouring slices of one scan are near copies of each other, so a page shows them beside a
match as a yardstick, but only where the order is known: from the source (`neighbors(i)`: NIfTI
volumes, TFDS slices with subject and slice fields) or, for a folder of exported slices, from file
names that end in a slice number (`sub01_slice_045.png`, `sub01/045.png`, `scan.nii.gz:45`). The
names before the number must name at least two volumes of two or more slices each: a folder of
`img_0001.png ... img_0400.png` numbers images, not slices of one scan, and has no slice order.
Where the order is unknown the pages drop the neighbour panels and the sentence about them.
"""

from __future__ import annotations

import collections
import re
from typing import Any, Callable, Iterable

Neighbors = Callable[[int], tuple["int | None", "int | None"]]

# A trailing slice number, then at most a file extension (".png", ".nii.gz").
_TRAILING_NUMBER = re.compile(r"^(?P<stem>.*?)(?P<number>\d+)(?P<extension>(\.[A-Za-z]\w*)*)$")
_NONE = (None, None)


def _ids(source: Any) -> list[str]:
  ids = getattr(source, "ids", None)
  return list(ids()) if callable(ids) else [source.image_id(i) for i in range(len(source))]


def infer_slice_order(ids: Iterable[str]) -> dict[int, tuple[int | None, int | None]] | None:
  """{index: (previous, next)} from ids ending in a slice number, or None without an order.

  Images whose ids agree but for the trailing number are one volume, ordered by that number;
  the previous and next slices are the adjacent numbers present (a folder may skip slices).
  """
  volumes: dict[tuple[str, str], list[tuple[int, int]]] = collections.defaultdict(list)
  for index, image_id in enumerate(ids):
    match = _TRAILING_NUMBER.match(str(image_id))
    if match:
      volumes[match["stem"], match["extension"]].append((int(match["number"]), index))
  stacks = [sorted(members) for members in volumes.values() if len(members) >= 2]
  if len(stacks) < 2:
    return None
  order = {}
  for stack in stacks:
    indices = [index for _, index in stack]
    for position, index in enumerate(indices):
      order[index] = (indices[position - 1] if position > 0 else None,
                      indices[position + 1] if position + 1 < len(indices) else None)
  return order


def neighbor_lookup(source: Any, shown: Iterable[int]) -> Neighbors | None:
  """How to find the neighbours of the `shown` training images, or None where none is known.

  The source's own `neighbors` wins; else the order is inferred from its ids. None also where no
  shown image has a neighbour, so a page never draws a row of empty neighbour panels.
  """
  shown = [int(j) for j in shown if int(j) >= 0]
  own = getattr(source, "neighbors", None)
  if callable(own) and any(tuple(own(j)) != _NONE for j in shown):
    return lambda j: tuple(own(int(j)))
  if not shown:
    return None
  order = infer_slice_order(_ids(source))
  if order is None or all(order.get(j, _NONE) == _NONE for j in shown):
    return None
  return lambda j: order.get(int(j), _NONE)
