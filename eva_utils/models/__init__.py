"""Networks shared by several notebooks (the model under study in a single notebook lives in that notebook).

``from_notebook`` gives the benchmarks and the tests a notebook's own net (e.g. notebook 14's ``CustomResNet``)
without a copy of its code.
"""
from __future__ import annotations

from pathlib import Path

__all__ = ["from_notebook"]


def from_notebook(path, name: str = "Net", **params):
    """The class ``name`` defined in a course notebook: its parameters cell, then the cell that defines it, run
    up to the line that builds the model (``model = name(...)``). ``params`` override the parameters cell."""
    import nbformat
    import torch
    import torch.nn as nn
    import torch.nn.functional as F

    nb = nbformat.read(Path(path), as_version=4)
    code = [c.source for c in nb.cells if c.cell_type == "code"]
    namespace = {"nn": nn, "F": F, "torch": torch}
    exec(next(c.source for c in nb.cells if "parameters" in c.metadata.get("tags", [])), namespace)
    namespace.update(params)
    cell = next(c for c in code if f"class {name}(" in c)
    exec(cell.split(f"model = {name}(")[0], namespace)
    return namespace[name]
