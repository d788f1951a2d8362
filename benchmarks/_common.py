"""Shared pieces of the epoch benchmarks: options, one timed training step, interleaved repeats, the table.

How the epoch benchmarks measure (and why):

* three **variants** feed the same model the same kind of batches: the albumentations
  ``DataLoader`` of the course (``eva.loaders``), the on-device loader (``eva_utils.fastdata``), and
  *compute only* — a few batches made once and reused, so no data work at all. Compute only is
  the floor; a data path's ratio to it is its overhead.
* each variant trains ``--batches`` batches (forward, loss, backward, SGD step), the first time
  after ``--warmup`` untimed ones; the variants run **interleaved**, ``--repeats`` times (in a rotating
  order), and the **median** time per batch is reported, so that a burst of load from another process
  hits all variants alike;
* an epoch's time is **extrapolated**: median time per batch × batches per epoch (a full epoch on
  a CPU would take hours for the ResNet). The DataLoader's worker start-up at each epoch is not in it.
* on a CUDA GPU the clock is read after ``torch.cuda.synchronize()``; on the CPU the process
  CPU time is shown too, the fairer number when other jobs share the cores.
"""
from __future__ import annotations

import argparse
import statistics
import sys
import time
from itertools import cycle, islice
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # run from a checkout without `pip install -e .`

import eva_utils as eva  # noqa: E402
from eva_utils import config, fastdata  # noqa: E402


def options(description: str, batch_size: int, cpu_batch_size: int, batches: int, cpu_batches: int,
            cpu_repeats: int = 5):
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--device", default=None, help="cuda, cpu, ... (default: the best available)")
    parser.add_argument("--batch-size", type=int, default=None,
                        help=f"default {batch_size} on a GPU, {cpu_batch_size} on the CPU")
    parser.add_argument("--batches", type=int, default=None,
                        help=f"timed batches per repeat (default {batches} on a GPU, {cpu_batches} on the CPU)")
    parser.add_argument("--repeats", type=int, default=None,
                        help=f"interleaved repeats, the median is reported (default 5 on a GPU, "
                             f"{cpu_repeats} on the CPU)")
    parser.add_argument("--warmup", type=int, default=2, help="untimed batches before each timing")
    args = parser.parse_args()
    args.device = torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    on_cpu = args.device.type == "cpu"
    args.batch_size = args.batch_size or (cpu_batch_size if on_cpu else batch_size)
    args.batches = args.batches or (cpu_batches if on_cpu else batches)
    args.repeats = args.repeats or (cpu_repeats if on_cpu else 5)
    return args


def load_notebook_net(path: Path, name: str = "Net"):
    """The ``Net`` class defined in a course notebook's model cell (so the benchmark does not copy it)."""
    import nbformat
    import torch.nn as nn
    import torch.nn.functional as F

    nb = nbformat.read(path, as_version=4)
    cell = next(c.source for c in nb.cells if c.cell_type == "code" and f"class {name}" in c.source)
    namespace = {"nn": nn, "F": F, "torch": torch}
    exec(cell.split(f"model = {name}()")[0], namespace)
    return namespace[name]


class Variant:
    """A named source of batches; ``batches()`` is a fresh (endless) iterator over (x, y) on any device."""

    def __init__(self, name, make_iter):
        self.name, self.make_iter = name, make_iter
        self.wall, self.cpu = [], []


def endless(loader):
    while True:
        yield from loader


def train_step(model, optimizer, x, y, device):
    x, y = x.to(device, non_blocking=True), y.to(device, non_blocking=True)
    optimizer.zero_grad(set_to_none=True)
    loss = torch.nn.functional.cross_entropy(model(x), y)
    loss.backward()
    optimizer.step()


def three_variants(train, test, args, preset: str, premade: int) -> tuple[list, int]:
    """The three ways of feeding the same model, and the number of batches in an epoch.

    albumentations DataLoader, the on-device ``fastdata`` path (same augmentation), and ``premade``
    batches made once by the fast path and replayed: the compute-only floor.
    """
    albu, _ = eva.loaders(train, test, args.batch_size, args.device)
    fast, _ = fastdata.loaders(train, test, args.batch_size, args.device, preset=preset)
    made = list(islice(fast, premade))
    return [Variant("albumentations DataLoader", lambda: endless(albu)),
            Variant("on-device (fastdata)", lambda: endless(fast)),
            Variant("compute only (pre-made batches)", lambda: cycle(made))], len(albu)


def measure(variants, model, optimizer, device, batches: int, repeats: int, warmup: int):
    """Interleave the variants ``repeats`` times; record seconds per batch (wall and process CPU)."""
    iterators = {v.name: v.make_iter() for v in variants}
    for repeat in range(repeats):
        for v in variants[repeat % len(variants):] + variants[:repeat % len(variants)]:  # rotate the order
            it = iterators[v.name]
            for _ in range(warmup if repeat == 0 else 0):  # first iterations (allocations, workers) are slow
                train_step(model, optimizer, *next(it), device)
            config.synchronize(device)
            w0, c0 = time.perf_counter(), time.process_time()
            for _ in range(batches):
                train_step(model, optimizer, *next(it), device)
            config.synchronize(device)
            v.wall.append((time.perf_counter() - w0) / batches)
            v.cpu.append((time.process_time() - c0) / batches)


def table(title: str, variants, epoch_batches: int, args, note: str = "") -> str:
    """The result table; ratios are relative to the last variant (compute only)."""
    floor = variants[-1]
    floor_w, floor_c = statistics.median(floor.wall), statistics.median(floor.cpu)
    on_cpu = args.device.type == "cpu"
    lines = [title,
             f"device {config.device_name(args.device)} | torch {torch.__version__} | batch {args.batch_size} | "
             f"median of {args.repeats} interleaved repeats of {args.batches} batches (after {args.warmup} warm-up)",
             f"epoch = median time per batch × {epoch_batches} batches (extrapolated, worker start-up excluded)"]
    if note:
        lines.append(note)
    head = f"{'variant':<34} {'ms/batch':>9} {'epoch s':>9} {'× compute':>10}"
    if on_cpu:
        head += f" {'cpu ms/batch':>13} {'× compute (cpu)':>16}"
    lines += ["", head, "-" * len(head)]
    for v in variants:
        w, c = statistics.median(v.wall), statistics.median(v.cpu)
        row = f"{v.name:<34} {1000 * w:9.1f} {w * epoch_batches:9.1f} {w / floor_w:10.3f}"
        if on_cpu:
            row += f" {1000 * c:13.1f} {c / floor_c:16.3f}"
        lines.append(row)
    spread = ", ".join(f"{v.name.split()[0]} {min(v.wall) * 1000:.0f}-{max(v.wall) * 1000:.0f}" for v in variants)
    lines.append(f"(wall ms/batch range over repeats: {spread})")
    return "\n".join(lines)


__all__ = ["ROOT", "Variant", "endless", "eva", "load_notebook_net", "measure", "options", "table",
           "three_variants"]
