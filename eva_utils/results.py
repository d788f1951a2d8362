"""Targets, the printed Result block, and the run that writes it to the ledger (``ledger.py``).

A notebook states its **Target** before training (``Target(test_acc=99.0, params=11_000)``)
and ends with ``run.report(history, target, model)``, which prints what was *measured*
against that target and appends one JSON line to ``results/ledger.jsonl``:
mode, device, seed, epochs, parameters, wall time, per-epoch metrics, git commit.

Only full runs go to the committed ledger; smoke runs go to ``results/smoke/`` (git-ignored)
and their Result block says loudly that they are not results. The README's results table
is generated from the ledger (``eva results --markdown``), never typed by hand.
"""
from __future__ import annotations

import os
import platform
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import torch

from . import config
from .config import project_root  # noqa: F401  (results.project_root: eva's CLI)
from .ledger import (LEDGER, TABLE_END, TABLE_START, append_ledger, git_state, latest_full,  # noqa: F401
                     ledger_path, markdown_table, read_ledger, results_dir, target_text, update_readme)



@dataclass
class Target:
    """What a step sets out to reach. ``None`` means "no requirement".

    test_acc:  test accuracy (percent) to reach; with ``hold_last=k`` it must hold in
               *each* of the last k epochs, otherwise the best epoch counts.
    params:    the largest number of trainable parameters allowed.
    epochs:    the most epochs allowed.
    """

    test_acc: float | None = None
    params: int | None = None
    epochs: int | None = None
    hold_last: int = 0

    def check(self, history, params: int) -> dict:
        """Each criterion -> (measured, required, passed)."""
        out = {}
        if self.test_acc is not None:
            if self.hold_last:
                measured = min(history.last(self.hold_last))
                out[f"min test acc, last {self.hold_last} epochs"] = (measured, self.test_acc,
                                                                    measured >= self.test_acc)
            else:
                measured = max(history.test_acc)
                out["best test acc"] = (measured, self.test_acc, measured >= self.test_acc)
        if self.params is not None:
            out["params"] = (params, self.params, params <= self.params)
        if self.epochs is not None:
            out["epochs"] = (history.epochs, self.epochs, history.epochs <= self.epochs)
        return out


class Run:
    """One execution of a notebook: its name, mode, seed and device, and the clock."""

    def __init__(self, notebook: str, seed: int = 1, mode: str | None = None, device=None, needs_gpu: bool = False):
        self.notebook = notebook
        self.mode = config.mode(mode)
        os.environ["EVA_MODE"] = self.mode  # data loaders and get_device() follow the run's mode
        os.environ["EVA_NEEDS_GPU"] = "1" if needs_gpu else "0"  # fit() stops a full CPU run of a GPU notebook
        self.seed = config.seed_everything(seed)
        self.device = config.get_device(device)
        self.started = config.now()
        self.git_sha, self.git_dirty = git_state(notebook)  # the code as it is now, when the run starts
        self._t0 = time.perf_counter()
        self._trainings = 0  # fit() calls so far: numbers the automatic checkpoints

    @property
    def smoke(self) -> bool:
        return self.mode == "smoke"

    def next_checkpoint(self) -> Path:
        """The checkpoint file of this run's next training (what ``fit(..., checkpoint="auto")`` uses):
        ``results/checkpoints/<mode>/<notebook>-<nn>-seed<s>.pt`` (or under ``$EVA_CHECKPOINT_DIR``: each run of a
        sweep has its own), nn counting the trainings since ``eva.start``
        and s the last ``seed_everything`` seed -- the same file when the notebook is run again from the top."""
        self._trainings += 1
        seed = config.current_seed()
        folder = Path(os.environ.get("EVA_CHECKPOINT_DIR") or results_dir() / "checkpoints" / self.mode)
        return folder / f"{self.notebook}-{self._trainings:02d}-seed{seed}.pt"

    def entries(self, label: str = "") -> list[dict]:
        """The ledger lines this run has reported so far (those whose label starts with ``label``), including the
        lines that ``eva run`` has staged and that tasks of ``eva.map_seeds`` reported in their own processes:
        what ``eva.sweep_table`` summarises."""
        staged = os.environ.get("EVA_LEDGER")
        lines = read_ledger(ledger_path(self.mode)) + (read_ledger(Path(staged)) if staged else [])
        return [e for e in lines if e.get("notebook") == self.notebook and e.get("git_sha") == self.git_sha
                and str(e.get("started", "")) >= self.started and str(e.get("label", "")).startswith(label)]

    @property
    def folder(self) -> Path:
        """Where this run saves what it makes (e.g. a trained model): ``results/``, or ``results/smoke/`` in a
        smoke run, so that nothing a smoke run saves lands among the results."""
        return results_dir() / ("smoke" if self.smoke else "")

    def __repr__(self) -> str:
        return (f"EVA run: {self.notebook} | mode {self.mode} | device {config.device_name(self.device)} | "
                f"seed {self.seed} | torch {torch.__version__}")

    def report(self, history, target: Target, model=None, params: int | None = None, label: str = "",
               reference: str = "", extra: dict | None = None, seed: int | None = None, quiet: bool = False,
               split: str = "test") -> dict:
        """Print the Result block (measured vs target) and append the run to the ledger. Returns the entry.

        ``seed``: the seed of this training run; by default the one ``fit`` recorded (``history.seed``), else the run's.
        ``quiet=True`` prints one line instead of the block (a cell reporting several runs, then ``eva.compare``).
        ``split="validation"``: the history's "test" columns were measured on a validation split (a design step,
        not a result); the Result says "val" and the ledger line records ``evaluated_on``.
        """
        from .summary import count_params

        params = count_params(model) if params is None else params
        checks = target.check(history, params)
        passed = all(ok for _, _, ok in checks.values())
        k = min(3, history.epochs)
        entry = {
            "notebook": self.notebook, "label": label, "mode": self.mode,
            "started": getattr(history, "started", "") or self.started,
            "device": history.device or config.device_name(self.device),
            "seed": next(s for s in (seed, getattr(history, "seed", None), self.seed) if s is not None),
            "epochs": history.epochs, "params": params, "wall_s": round(history.wall_s, 1),
            "git_sha": self.git_sha, "git_dirty": self.git_dirty, "torch": torch.__version__, "host": platform.node(),
            "metrics": {
                "train_acc": [round(a, 2) for a in history.train_acc],
                "test_acc": [round(a, 2) for a in history.test_acc],
                "train_loss": [round(v, 5) for v in history.train_loss],
                "test_loss": [round(v, 5) for v in history.test_loss],
                "lr": history.lr,
                "best_test_acc": round(max(history.test_acc), 2), "best_epoch": history.best_epoch,
                "best_train_acc": round(max(history.train_acc), 2),
                "final_test_acc": round(history.test_acc[-1], 2),
                f"last{k}_min_test_acc": round(min(history.last(k)), 2),
                **(extra or {}),
            },
            "target": {key: val for key, val in asdict(target).items() if val not in (None, 0)},
            "reference": reference, "passed": passed, "evaluated_on": split,
        }
        if os.environ.get("EVA_SWEEP"):
            entry["sweep"] = os.environ["EVA_SWEEP"]
        path = ledger_path(self.mode)
        # `eva run` and `eva sweep` stage a notebook's lines (EVA_LEDGER) and move them into the ledger only if
        # every cell succeeded: a failed or killed run leaves the committed ledger as it was.
        append_ledger(Path(os.environ.get("EVA_LEDGER") or path), [entry])
        print(self._result_line(entry) if quiet else self._result_block(entry, checks, history, path))
        return entry

    def _title(self, entry) -> str:
        return f"Result: {self.notebook}" + (f" [{entry['label']}]" if entry["label"] else "")

    @staticmethod
    def _word(entry) -> str:
        return "test" if entry.get("evaluated_on", "test") == "test" else "val"

    def _result_line(self, entry) -> str:
        m, k, word = entry["metrics"], min(3, entry["epochs"]), self._word(entry)
        verdict = f"target {target_text(entry['target']) or 'none'}: TARGET {'MET' if entry['passed'] else 'MISSED'}"
        return " | ".join([self._title(entry), f"mode {entry['mode']}", f"seed {entry['seed']}",
                           f"{entry['params']:,} params", f"best {word} acc {m['best_test_acc']:.2f} % (epoch "
                           f"{m['best_epoch']})", f"last-{k} min {m[f'last{k}_min_test_acc']:.2f} %", verdict]
                          + (["SMOKE RUN: these numbers are NOT results"] if self.smoke else []))

    def _result_block(self, entry, checks, history, path) -> str:
        title = self._title(entry)
        lines = [title, "=" * len(title)]
        if self.smoke:
            lines += ["SMOKE RUN: 1 epoch on a small subset, on the CPU. This checks that the notebook runs;",
                      "these numbers are NOT results. Full run: eva run --full notebooks/" + self.notebook + ".ipynb", ""]
        m, word = entry["metrics"], self._word(entry)
        k = min(3, history.epochs)
        lines += [
            f"mode {entry['mode']} | device {entry['device']} | seed {entry['seed']} | "
            f"{entry['epochs']} epochs in {config.duration(entry['wall_s'])}",
            f"params            {entry['params']:,}",
            f"best {word} acc{' ' * (9 - len(word))}{m['best_test_acc']:.2f} %  (epoch {m['best_epoch']})",
            f"best train acc    {m['best_train_acc']:.2f} %",
            f"final {word} acc{' ' * (8 - len(word))}{m['final_test_acc']:.2f} %",
            f"last-{k} {word} min{' ' * (7 - len(word))}{min(history.last(k)):.2f} %  (last {k}: "
            + ", ".join(f"{a:.2f}" for a in history.last(k)) + ")",
        ]
        if entry["reference"]:
            lines.append(f"seed reference    {entry['reference']}")
        lines.append("")
        for name, (measured, required, ok) in checks.items():
            sign = "≤" if name in ("params", "epochs") else "≥"
            shown = f"{measured:,}" if isinstance(measured, int) else f"{measured:.2f} %"
            req = f"{required:,}" if isinstance(required, int) else f"{required:.2f} %"
            name = name.replace("test", word)
            lines.append(f"target {name:<30} {sign} {req:<10} measured {shown:<10} {'PASS' if ok else 'MISS'}")
        verdict = "TARGET MET" if entry["passed"] else "TARGET MISSED"
        lines += [verdict + (" (smoke: meaningless)" if self.smoke else "")
                  + ("" if word == "test" else " on the validation split: a design decision, not a test result"),
                  f"ledger: {config.shown_path(path)}"]
        return "\n".join(lines)


_current: Run | None = None


def current_run() -> Run | None:
    """The run that the last ``start()`` began: ``fit`` puts its automatic checkpoints under it."""
    return _current


def start(notebook: str, seed: int = 1, mode: str | None = None, device=None, needs_gpu: bool = False) -> Run:
    """Begin a notebook's run: resolve the mode, seed everything, pick the device, print it all.

    ``needs_gpu=True`` (notebooks 12-15): a full run on a CPU stops at its first training step with the
    measured time an epoch would take, instead of silently running for hours.
    In a smoke run, the parameters that ``config.SMOKE_PARAMETERS`` lists for this notebook replace the ones its
    parameters cell set (in the namespace that called ``start``, as ``eva run -p NAME VALUE`` would), said aloud.
    """
    global _current
    run = _current = Run(notebook, seed=seed, mode=mode, device=device, needs_gpu=needs_gpu)
    print(run)
    namespace = sys._getframe(1).f_globals
    for name, value in config.SMOKE_PARAMETERS.get(notebook, {}).items() if run.smoke else ():
        if name in namespace:
            print(f"smoke run: {name} = {value!r} instead of {namespace[name]!r}")
            namespace[name] = value
    return run
