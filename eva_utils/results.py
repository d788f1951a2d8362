"""Targets, the printed Result block, and the results ledger.

A notebook states its **Target** before training (``Target(test_acc=99.0, params=11_000)``)
and ends with ``run.report(history, target, model)``, which prints what was *measured*
against that target and appends one JSON line to ``results/ledger.jsonl``:
mode, device, seed, epochs, parameters, wall time, per-epoch metrics, git commit.

Only full runs go to the committed ledger; smoke runs go to ``results/smoke/`` (git-ignored)
and their Result block says loudly that they are not results. The README's results table
is generated from the ledger (``eva results --markdown``), never typed by hand.
"""
from __future__ import annotations

import json
import os
import platform
import subprocess
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import torch

from . import config
from .config import project_root

LEDGER = "ledger.jsonl"
TABLE_START, TABLE_END = "<!-- results:start -->", "<!-- results:end -->"


def results_dir() -> Path:
    """``$EVA_RESULTS_DIR``, else ``<repo>/results``, else ``./results``."""
    if os.environ.get("EVA_RESULTS_DIR"):
        return Path(os.environ["EVA_RESULTS_DIR"])
    root = project_root()
    return (root / "results") if root else Path("results")


def ledger_path(mode: str) -> Path:
    base = results_dir()
    return base / LEDGER if mode == "full" else base / "smoke" / LEDGER


def append_ledger(path: Path, entries: list[dict]) -> None:
    """Append entries as JSON lines under an exclusive file lock: concurrent writers never interleave or lose lines."""
    import fcntl

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    text = "".join(json.dumps(e) + "\n" for e in entries)
    with path.open("a") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def _code_cells(text: str) -> list[str]:
    """The sources of a notebook's code cells: what ran, whatever the outputs are."""
    return ["".join(c["source"]) for c in json.loads(text)["cells"] if c["cell_type"] == "code"]


def git_state(notebook: str | None = None, root: Path | None = None) -> tuple[str | None, bool | None]:
    """(commit sha, whether the code differs from that commit) — None outside a git checkout.

    The code is ``eva_utils/`` and, when ``notebook`` is named, that notebook's code cells (its outputs
    change with every run, so they do not count). Read when a run *starts*: that is the code that ran.
    """
    root = root or project_root()
    if root is None:
        return None, None
    git = dict(cwd=root, capture_output=True, text=True, timeout=10)
    try:
        sha = subprocess.run(["git", "rev-parse", "HEAD"], **git).stdout.strip() or None
        if sha is None:
            return None, None
        dirty = bool(subprocess.run(["git", "status", "--porcelain", "--", "eva_utils"], **git).stdout.strip())
        path = f"notebooks/{notebook}.ipynb"
        if notebook and (root / path).is_file():
            committed = subprocess.run(["git", "show", f"HEAD:{path}"], **git)
            dirty |= committed.returncode != 0 or _code_cells(committed.stdout) != _code_cells((root / path).read_text())
        return sha, dirty
    except (OSError, subprocess.SubprocessError, ValueError, KeyError):
        return None, None


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


def _fmt_time(seconds: float) -> str:
    m, s = divmod(int(round(seconds)), 60)
    return f"{m} min {s:02d} s" if m else f"{seconds:.1f} s"


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

    @property
    def smoke(self) -> bool:
        return self.mode == "smoke"

    def epochs(self, full: int) -> int:
        """``full`` epochs in a full run, 1 in a smoke run."""
        return 1 if self.smoke else full

    def checkpoint(self, label: str = "") -> Path:
        name = self.notebook + (f"-{label}" if label else "")
        return results_dir() / "checkpoints" / self.mode / f"{name}.pt"

    def __repr__(self) -> str:
        return (f"EVA run: {self.notebook} | mode {self.mode} | device {config.device_name(self.device)} | "
                f"seed {self.seed} | torch {torch.__version__}")

    def report(self, history, target: Target, model=None, params: int | None = None, label: str = "",
               reference: str = "", extra: dict | None = None, seed: int | None = None) -> dict:
        """Print the Result block (measured vs target) and append the run to the ledger. Returns the entry.

        ``seed``: the seed of this training run, when a notebook trains with several seeds.
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
            "seed": self.seed if seed is None else seed,
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
            "reference": reference, "passed": passed,
        }
        if os.environ.get("EVA_SWEEP"):
            entry["sweep"] = os.environ["EVA_SWEEP"]
        path = ledger_path(self.mode)
        # `eva run` and `eva sweep` stage a notebook's lines (EVA_LEDGER) and move them into the ledger only if
        # every cell succeeded: a failed or killed run leaves the committed ledger as it was.
        append_ledger(Path(os.environ.get("EVA_LEDGER") or path), [entry])
        print(self._result_block(entry, checks, history, path))
        return entry

    def _result_block(self, entry, checks, history, path) -> str:
        title = f"Result: {self.notebook}" + (f" [{entry['label']}]" if entry["label"] else "")
        lines = [title, "=" * len(title)]
        if self.smoke:
            lines += ["SMOKE RUN: 1 epoch on a small subset, on the CPU. This checks that the notebook runs;",
                      "these numbers are NOT results. Full run: eva run --full notebooks/" + self.notebook + ".ipynb", ""]
        m = entry["metrics"]
        k = min(3, history.epochs)
        lines += [
            f"mode {entry['mode']} | device {entry['device']} | seed {entry['seed']} | "
            f"{entry['epochs']} epochs in {_fmt_time(entry['wall_s'])}",
            f"params            {entry['params']:,}",
            f"best test acc     {m['best_test_acc']:.2f} %  (epoch {m['best_epoch']})",
            f"best train acc    {m['best_train_acc']:.2f} %",
            f"final test acc    {m['final_test_acc']:.2f} %",
            f"last-{k} test min   {min(history.last(k)):.2f} %  (last {k}: "
            + ", ".join(f"{a:.2f}" for a in history.last(k)) + ")",
        ]
        if entry["reference"]:
            lines.append(f"seed reference    {entry['reference']}")
        lines.append("")
        for name, (measured, required, ok) in checks.items():
            sign = "≤" if name in ("params", "epochs") else "≥"
            shown = f"{measured:,}" if isinstance(measured, int) else f"{measured:.2f} %"
            req = f"{required:,}" if isinstance(required, int) else f"{required:.2f} %"
            lines.append(f"target {name:<30} {sign} {req:<10} measured {shown:<10} {'PASS' if ok else 'MISS'}")
        verdict = "TARGET MET" if entry["passed"] else "TARGET MISSED"
        lines += [verdict + (" (smoke: meaningless)" if self.smoke else ""), f"ledger: {config.shown_path(path)}"]
        return "\n".join(lines)


def start(notebook: str, seed: int = 1, mode: str | None = None, device=None, needs_gpu: bool = False) -> Run:
    """Begin a notebook's run: resolve the mode, seed everything, pick the device, print it all.

    ``needs_gpu=True`` (notebooks 12-15): a full run on a CPU stops at its first training step with the
    measured time an epoch would take, instead of silently running for hours.
    """
    run = Run(notebook, seed=seed, mode=mode, device=device, needs_gpu=needs_gpu)
    print(run)
    return run


def read_ledger(path: Path | None = None) -> list[dict]:
    path = Path(path) if path else ledger_path("full")
    if not path.exists():
        return []
    entries = []
    for n, line in enumerate(path.read_text().splitlines(), 1):
        if line.strip():
            try:
                entries.append(json.loads(line))
            except json.JSONDecodeError as err:
                raise ValueError(f"{path}:{n} is not valid JSON ({err})") from None
    return entries


def latest_full(entries: list[dict]) -> list[dict]:
    """The latest full-mode entry per (notebook, label), sorted by notebook then label."""
    latest = {}
    for e in entries:
        if e.get("mode") == "full":
            latest[(e["notebook"], e.get("label", ""))] = e
    return [latest[key] for key in sorted(latest)]


def markdown_table(entries: list[dict]) -> str:
    """The README results table: one row per notebook step, from full runs only."""
    rows = latest_full(entries)
    head = ("| notebook | step | params | best test % (epoch) | last-3 min test % | best train % | epochs | "
            "target | met | device | train time | seed reference |\n"
            "| --- | --- | ---: | ---: | ---: | ---: | ---: | --- | --- | --- | ---: | --- |")
    if not rows:
        return head + "\n| _no full run recorded yet_ |  |  |  |  |  |  |  |  |  |  |  |"
    out = [head]
    dirty = False
    for e in rows:
        m, t = e["metrics"], e.get("target", {})
        target = []
        if "test_acc" in t:
            target.append(f"≥ {t['test_acc']} %" + (f" (last {t['hold_last']})" if t.get("hold_last") else ""))
        if "params" in t:
            target.append(f"≤ {t['params']:,} params")
        if "epochs" in t:
            target.append(f"≤ {t['epochs']} ep")
        last = next((v for k, v in m.items() if k.startswith("last") and k.endswith("_min_test_acc")), None)
        mark = " †" if e.get("git_dirty") else ""
        dirty |= bool(mark)
        out.append(
            f"| [{e['notebook']}](notebooks/{e['notebook']}.ipynb){mark} | {e.get('label') or '-'} | {e['params']:,} | "
            f"{m['best_test_acc']:.2f} ({m['best_epoch']}) | {'-' if last is None else f'{last:.2f}'} | "
            f"{m['best_train_acc']:.2f} | {e['epochs']} | {', '.join(target) or '-'} | "
            f"{'yes' if e['passed'] else 'no'} | {e['device']} | {_fmt_time(e['wall_s'])} | {e.get('reference') or '-'} |"
        )
    if dirty:
        out.append("\n† started from a working tree whose `eva_utils/` or notebook code differed from its commit "
                   "(`git_dirty` in the ledger): the code that ran is not exactly the recorded commit.")
    return "\n".join(out)


def update_readme(readme: Path, table: str) -> bool:
    """Replace the block between the results markers; returns whether the file changed."""
    text = readme.read_text()
    if TABLE_START not in text or TABLE_END not in text:
        raise ValueError(f"{readme} has no {TABLE_START} ... {TABLE_END} block to fill")
    head, rest = text.split(TABLE_START, 1)
    _, tail = rest.split(TABLE_END, 1)
    new = f"{head}{TABLE_START}\n{table}\n{TABLE_END}{tail}"
    if new != text:
        readme.write_text(new)
    return new != text
