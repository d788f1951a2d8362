"""Save a trained model so that anyone can re-evaluate it without its Python class.

``save_for_evaluation(model, path, input_size)`` writes the model in eval mode as a
``torch.export`` program (``.pt2``): the graph and the weights, with a free batch size.
``eva evaluate PATH`` loads it and measures its accuracy on the real test set.
(TorchScript, the older way, is deprecated since torch 2.9.)
"""
from __future__ import annotations

from pathlib import Path

import torch


def save_for_evaluation(model: torch.nn.Module, path, input_size) -> Path:
    """Export ``model`` (switched to eval mode, on the CPU) for inputs of shape ``(batch, *input_size)``."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    model = model.cpu().eval()
    example = torch.zeros(2, *input_size)
    program = torch.export.export(model, (example,), dynamic_shapes=({0: torch.export.Dim("batch")},))
    torch.export.save(program, str(path))
    return path


def load_for_evaluation(path) -> torch.nn.Module:
    """The module saved by ``save_for_evaluation`` (frozen in eval mode)."""
    return torch.export.load(str(path)).module()
