"""Notebook 15's small pieces (as Page's ``core.py`` is to his ``dawn.py``): a clock, a run's record, the tables.

The network, the training loop and the hyper-parameters live in the notebook itself, in the cells tagged
``recipe``; the tricks are in ``tricks``, the on-device data path in ``fastdata``. What is here is what the
notebook's loop leans on and what ``benchmarks/time_to_94.py`` needs to run the notebook's own recipe:

* ``Clock``: a stopwatch that reads the time only after the GPU has finished (CUDA calls return at once);
* ``RunResult`` and ``time_to_target``: what one run measured, and its **time to 94 %** = set-up + the
  training time of the epochs up to the first whose test accuracy reaches the target (tests not counted);
  ``total_s`` = set-up + training + the final test: airbench's timing rule;
* ``row_line``, ``table``, ``final_summary``, ``record``, ``title``: the notebook's rows, its performance log,
  its 5-run summary, one ledger line per row, plot titles that say when a run is not a result;
* ``show``: print the code of a trick (without its docstring), so that each section shows what runs;
* ``load``: the notebook's ``recipe`` cells executed into a namespace (``FINAL``, ``DavidNet``, ``train``...).
"""
from __future__ import annotations

import ast
import contextlib
import inspect
import io
import statistics
import textwrap
import time
from dataclasses import dataclass
from pathlib import Path

import torch

from . import config
from .train import History

NOTEBOOK = Path(__file__).resolve().parents[1] / "notebooks" / "15_fast_cifar10.ipynb"

#: What a smoke run of notebook 15 shrinks (``eva.start`` sets these after the parameters cell; the benchmark's
#: ``--smoke`` passes them to ``load``).
SMOKE_PARAMETERS = config.SMOKE_PARAMETERS["15_fast_cifar10"]


class Clock:
    """``with clock:`` adds the seconds of the block to ``clock.total`` (and ``clock.last``).

    The device is synchronised on entry and exit: a GPU clock read without it measures how fast the work
    was *queued*, not how fast it ran. Only the blocks count, so testing can happen between them unpaid.
    """

    def __init__(self, device="cpu"):
        self.device = torch.device(device)
        self.total = self.last = 0.0

    def __enter__(self):
        config.synchronize(self.device)
        self._t0 = time.perf_counter()
        return self

    def __exit__(self, *exc):
        config.synchronize(self.device)
        self.last = time.perf_counter() - self._t0
        self.total += self.last
        return False


def time_to_target(setup_s: float, epoch_times, test_accs, target: float) -> float | None:
    """Set-up + training seconds up to the first epoch whose test accuracy is ≥ ``target``; ``None`` if none."""
    clock = setup_s
    for seconds, acc in zip(epoch_times, test_accs):
        clock += seconds
        if acc >= target:
            return clock
    return None


@dataclass
class RunResult:
    """What one training run measured. ``model`` is the one tested (the moving average when there is one)."""

    history: History
    setup_s: float
    final_test_s: float
    model: torch.nn.Module
    target: float = 94.0
    params: int = 0                 # trainable parameters of the trained net (the average has none trainable)

    @property
    def final_acc(self) -> float:
        return self.history.test_acc[-1]

    @property
    def train_s(self) -> float:
        return self.history.wall_s

    @property
    def total_s(self) -> float:
        """Set-up + training + the final test (with TTA if the recipe has it): airbench's timing rule."""
        return self.setup_s + self.train_s + self.final_test_s

    @property
    def time_to_target_s(self) -> float | None:
        return time_to_target(self.setup_s, self.history.epoch_time, self.history.test_acc, self.target)

    @property
    def epoch_s(self) -> float:
        """Seconds per epoch once warm: the last epoch's (the first pays for cuDNN's choice of algorithms)."""
        return self.history.epoch_time[-1]


def _reached(r: RunResult) -> str:
    return "not reached" if r.time_to_target_s is None else f"{r.time_to_target_s:.1f} s"


def row_line(name: str, r: RunResult, previous: RunResult | None = None) -> str:
    """One row of the bag of tricks: epochs, seconds per epoch, final accuracy (and change), time to target."""
    delta = f"({r.final_acc - previous.final_acc:+5.2f})" if previous is not None else " " * 7
    return (f"{name:<24} {r.history.epochs:>3} ep  {r.epoch_s:6.2f} s/ep  final {r.final_acc:6.2f} % {delta}  "
            f"time to {r.target:g} %: {_reached(r)}")


def table(results: dict) -> str:
    """The performance log: one line per row, in order, each compared with the row before."""
    lines = [title(f"{'row':<24} {'ep':>3}     {'s/epoch':>7}  {'final test acc (change)':<24}  time to target")]
    previous = None
    for name, r in results.items():
        lines.append(row_line(name, r, previous))
        previous = r
    return "\n".join(lines)


def final_summary(runs: list, seeds: list) -> str:
    """Each run of the final recipe, then the mean ± std of the accuracies and of the times."""
    lines = [f"run {k} (seed {s}): final test acc {r.final_acc:6.2f} %   time to {r.target:g} %: {_reached(r):<11}  "
             f"set-up + training + final test {r.total_s:6.2f} s" for k, (r, s) in enumerate(zip(runs, seeds), 1)]
    accs, totals = [r.final_acc for r in runs], [r.total_s for r in runs]
    reached = [r.time_to_target_s for r in runs if r.time_to_target_s is not None]
    std = statistics.stdev(accs) if len(accs) > 1 else 0.0
    lines.append(f"mean of {len(runs)}: {statistics.mean(accs):.2f} % ± {std:.2f} (std), min {min(accs):.2f}, "
                 f"max {max(accs):.2f}   |   {statistics.mean(totals):.2f} s per run   |   {len(reached)} of "
                 f"{len(runs)} runs reached {runs[0].target:g} %" +
                 (f", after {statistics.mean(reached):.2f} s on average" if reached else ""))
    return title("\n".join(lines))


def mean_history(histories) -> History:
    """Epoch-by-epoch means of several runs of one recipe (what the 5-run Result reports)."""
    fields = ("train_loss", "train_acc", "test_loss", "test_acc", "lr", "epoch_time")
    return History(**{f: [statistics.mean(v) for v in zip(*(getattr(h, f) for h in histories))] for f in fields},
                   device=histories[0].device, started=histories[0].started, seed=histories[0].seed)


def record(run, name: str, r: RunResult, target, extra: dict | None = None) -> dict:
    """One ledger line for one row (``run.report``), without its printed Result: the row's line says it all."""
    with contextlib.redirect_stdout(io.StringIO()):
        return run.report(r.history, target, params=r.params, label=name, extra={
            "time_to_94_s": None if r.time_to_target_s is None else round(r.time_to_target_s, 2),
            "setup_s": round(r.setup_s, 2), "train_s": round(r.train_s, 2), "total_s": round(r.total_s, 2),
            **(extra or {})})


def title(text: str) -> str:
    """A plot or table title; in a smoke run it says that its numbers are not results."""
    return f"SMOKE RUN (tiny net, few images, CPU): NOT results\n{text}" if config.is_smoke() else text


def show(*objects) -> None:
    """Print the source of functions or classes without their docstrings: the code that a section runs."""
    for obj in objects:
        source = textwrap.dedent(inspect.getsource(obj))
        drop = set()
        for node in ast.walk(ast.parse(source)):
            body = getattr(node, "body", None)
            if (isinstance(node, (ast.FunctionDef, ast.ClassDef)) and body and isinstance(body[0], ast.Expr)
                    and isinstance(body[0].value, ast.Constant) and isinstance(body[0].value.value, str)):
                drop.update(range(body[0].lineno, body[0].end_lineno + 1))
        print("\n".join(line for i, line in enumerate(source.splitlines(), 1) if i not in drop).rstrip() + "\n")


def load(path=NOTEBOOK, **params) -> dict:
    """The namespace of a notebook's parameters cell (``params`` override it) and of its cells tagged ``recipe``.

    ``load(**SMOKE_PARAMETERS)["train"]`` is notebook 15's training loop, as the notebook runs it.
    """
    import nbformat

    cells = nbformat.read(Path(path), as_version=4).cells
    namespace: dict = {"__name__": "notebook_recipe"}
    exec(next(c.source for c in cells if "parameters" in c.metadata.get("tags", [])), namespace)
    namespace.update(params)
    recipe = [c.source for c in cells if "recipe" in c.metadata.get("tags", [])]
    if not recipe:
        raise ValueError(f"{Path(path).name} has no cells tagged 'recipe'")
    for source in recipe:
        exec(source, namespace)
    return namespace


__all__ = ["Clock", "NOTEBOOK", "RunResult", "SMOKE_PARAMETERS", "final_summary", "load", "mean_history", "record",
           "row_line", "show", "table", "time_to_target", "title"]
