"""The results ledger and the README table made from it.

Every report appends one JSON line to ``results/ledger.jsonl`` (full runs) or ``results/smoke/ledger.jsonl``
(smoke runs, git-ignored), with the git commit of the code that ran. The README's results table is generated
from the full runs' lines (``eva results --update-readme``), never typed by hand.
"""
from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

from .config import duration, exclusive, project_root

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
    text = "".join(json.dumps(e) + "\n" for e in entries)
    with exclusive(Path(path)) as f:
        f.write(text)
        f.flush()
        os.fsync(f.fileno())


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
    """The latest full-mode entry per (notebook, label) of each notebook's latest run, sorted by notebook then label.

    A notebook's latest run is the commit (``git_sha``) of its newest line: a step that the notebook no longer has
    (renamed or removed in a redesign) drops out with the run that had it, instead of standing beside the new ones.
    """
    full = [e for e in entries if e.get("mode") == "full"]
    newest = {}
    for e in full:
        newest[e["notebook"]] = e.get("git_sha")
    latest = {}
    for e in full:
        if e.get("git_sha") == newest[e["notebook"]]:
            latest[(e["notebook"], e.get("label", ""))] = e
    return [latest[key] for key in sorted(latest)]


def target_text(t: dict) -> str:
    """A ledger line's target in words: ``≥ 99.4 % (last 3), ≤ 14,000 params, ≤ 15 ep`` ("" for none)."""
    target = []
    if "test_acc" in t:
        target.append(f"≥ {t['test_acc']} %" + (f" (last {t['hold_last']})" if t.get("hold_last") else ""))
    if "params" in t:
        target.append(f"≤ {t['params']:,} params")
    if "epochs" in t:
        target.append(f"≤ {t['epochs']} ep")
    return ", ".join(target)


def markdown_table(entries: list[dict]) -> str:
    """The README results table: one row per notebook step, from full runs only."""
    rows = latest_full(entries)
    head = ("| notebook | step | params | best test % (epoch) | last-3 min test % | best train % | epochs | "
            "target | met | device | train time | seed reference |\n"
            "| --- | --- | ---: | ---: | ---: | ---: | ---: | --- | --- | --- | ---: | --- |")
    if not rows:
        return head + "\n| _no full run recorded yet_ |  |  |  |  |  |  |  |  |  |  |  |"
    out = [head]
    dirty = val = False
    for e in rows:
        m, t = e["metrics"], e.get("target", {})
        last = next((v for k, v in m.items() if k.startswith("last") and k.endswith("_min_test_acc")), None)
        mark = " †" if e.get("git_dirty") else ""
        on = " val" if e.get("evaluated_on") == "validation" else ""
        dirty, val = dirty or bool(mark), val or bool(on)
        out.append(
            f"| [{e['notebook']}](notebooks/{e['notebook']}.ipynb){mark} | {e.get('label') or '-'} | {e['params']:,} | "
            f"{m['best_test_acc']:.2f} ({m['best_epoch']}){on} | {'-' if last is None else f'{last:.2f}{on}'} | "
            f"{m['best_train_acc']:.2f} | {e['epochs']} | {target_text(t) or '-'} | "
            f"{'yes' if e['passed'] else 'no'} | {e['device']} | {duration(e['wall_s'])} | {e.get('reference') or '-'} |"
        )
    if val:
        out.append("\nval: measured on the notebook's validation split (a design step), not on the test set.")
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
