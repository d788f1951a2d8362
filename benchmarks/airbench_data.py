"""Write CIFAR-10 in airbench's format, from the course's offline copy, so that ``airbench`` never downloads.

    python benchmarks/airbench_data.py [DEST]          # default DEST: build/airbench

airbench 0.1.8 (``airbench.CifarLoader('cifar10', ...)``) reads ``cifar10/train.pt`` and ``cifar10/test.pt``
relative to the working directory: dicts with ``images`` (uint8, N×32×32×3), ``labels`` (int64, N) and
``classes`` (list of names); it downloads through torchvision only when a file is missing. This writes both
files under ``DEST/cifar10/`` from ``$EVA_DATA_DIR/cifar10/cifar10.npz`` (through ``eva.cifar10``, so the same
images in the same order as every course run); run airbench with ``DEST`` as the working directory.
"""
from __future__ import annotations

import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without `pip install -e .`

from eva_utils import data  # noqa: E402


def write(dest: Path) -> list:
    """Write ``dest/cifar10/{train,test}.pt``; returns their paths. Existing files are replaced."""
    folder = Path(dest) / "cifar10"
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for train, name in ((True, "train.pt"), (False, "test.pt")):
        ds = data.cifar10(train=train, smoke=False)
        torch.save({"images": torch.as_tensor(ds.images).contiguous(),
                    "labels": torch.as_tensor(ds.labels, dtype=torch.long),
                    "classes": list(ds.classes)}, folder / name)
        paths.append(folder / name)
    return paths


if __name__ == "__main__":
    for path in write(Path(sys.argv[1] if len(sys.argv) > 1 else "build/airbench")):
        print("wrote", path)
