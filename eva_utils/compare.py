"""Several training runs side by side: ``eva.compare({label: history, ...})`` prints one table.

A notebook that trains several runs (schedules, seeds, ablation rows, fine-tuning variants) ends with this one
call instead of a hand-formatted table, and ``eva.plot_history`` takes the same dict to draw them in one figure.
Per run: the best test accuracy and its epoch, the minimum and mean of the last ``last`` epochs (what a target
"held over the last epochs" looks at), the final accuracy, and the training time; with ``level=99.4``, also the
first epoch at or above that accuracy and how many epochs were; with ``gain=True`` (an ablation, each row one
change more), how many points each row's best gains over the row above.
"""
from __future__ import annotations

import json
import statistics
from dataclasses import dataclass

from .config import duration

__all__ = ["Comparison", "compare", "sweep_table"]


@dataclass
class Comparison:
    """The table ``compare`` printed: ``rows`` (one dict per run), ``str()`` as printed, ``markdown()``."""

    rows: list
    last: int
    level: float | None = None
    gain: bool = False

    def _cells(self, row: dict) -> list:
        if row["epochs"] == 0:
            return [row["run"], "0", "no completed epoch"] + [""] * (len(self._head()) - 3)
        reached = [] if self.level is None else [str(row["first_at_level"] or "never"), str(row["epochs_at_level"])]
        gain = [] if not self.gain else ["" if row["gain"] is None else f"{row['gain']:+.2f}"]
        return [row["run"], str(row["epochs"]), f"{row['best']:.2f} ({row['best_epoch']})", *reached,
                f"{row['last_min']:.2f}", f"{row['last_mean']:.2f}", f"{row['final']:.2f}", duration(row["time_s"]),
                *gain]

    def _head(self) -> list:
        k, x = self.last, self.level
        level = [] if x is None else [f"first epoch ≥ {x} %", f"epochs ≥ {x} %"]
        return ["run", "epochs", "best test % (epoch)", *level, f"last-{k} min %", f"last-{k} mean %", "final test %",
                "time", *(["best vs row above"] if self.gain else [])]

    def __str__(self) -> str:
        table = [self._head()] + [self._cells(r) for r in self.rows]
        widths = [max(len(line[i]) for line in table) for i in range(len(table[0]))]
        return "\n".join("  ".join(cell.ljust(w) if i == 0 else cell.rjust(w)
                                   for i, (cell, w) in enumerate(zip(line, widths))).rstrip() for line in table)

    def markdown(self) -> str:
        lines = [self._head(), ["---"] + ["---:"] * (len(self._head()) - 1)] + [self._cells(r) for r in self.rows]
        return "\n".join("| " + " | ".join(line) + " |" for line in lines)

    def _ipython_display_(self) -> None:  # compare() has printed it: as a cell's last value, show nothing more
        return None


def compare(histories: dict, last: int = 3, level: float | None = None, gain: bool = False) -> Comparison:
    """Print and return a table of ``histories`` (``{label: History}``; ``None`` for a run with no epoch).

    ``last``: how many final epochs the "last-k" columns look at (fewer when a run is shorter).
    ``level``: a test accuracy (%); adds the first epoch that reached it (1-based) and how many epochs did.
    ``gain``: adds each row's best minus the best of the nearest row above that completed an epoch.
    """
    rows, previous = [], None
    for label, h in histories.items():
        acc = list(h.test_acc) if h is not None else []
        row = {"run": str(label), "epochs": len(acc)}
        if acc:
            tail = acc[-last:]
            row.update(best=max(acc), best_epoch=acc.index(max(acc)) + 1, last_min=min(tail),
                       last_mean=sum(tail) / len(tail), final=acc[-1], time_s=float(sum(h.epoch_time)))
            if level is not None:
                row.update(first_at_level=next((e for e, a in enumerate(acc, 1) if a >= level), None),
                           epochs_at_level=sum(a >= level for a in acc))
            row["gain"], previous = (None if previous is None else row["best"] - previous), row["best"]
        rows.append(row)
    table = Comparison(rows, last, level, gain)
    print(table)
    return table


# --------------------------------------------------------------------------- many seeds: the ledger lines of a sweep
def _last_k(entry: dict) -> tuple[str, float | None]:
    """The ``last<k>_min_test_acc`` metric of an entry: (its key, its value)."""
    return next(((k, v) for k, v in entry["metrics"].items() if k.startswith("last") and k.endswith("_min_test_acc")),
                ("last3_min_test_acc", None))


def sweep_table(entries: list[dict], markdown: bool = False) -> str:
    """One block per group (notebook, step, swept parameters): n, mean ± std (sample), min, max of the best, final
    and last-k-minimum test accuracy over the group's runs, and how many runs met the target. ``entries``: ledger
    lines (a sweep's, or ``run.entries()`` of a notebook that trained several seeds); a label's trailing
    ``seed N`` is not part of its group."""
    groups: dict[tuple, list[dict]] = {}
    for e in entries:
        label = e.get("label") or ""
        label = label.removesuffix(f" seed {e.get('seed')}")  # "final seed 3" is one run of the group "final"
        key = (e["notebook"], label, json.dumps(e.get("sweep_params") or {}, sort_keys=True))
        groups.setdefault(key, []).append(e)
    head = ["notebook", "step", "parameters", "metric", "n", "mean ± std", "min", "max", "target met"]
    rows = []
    for (notebook, label, params), group in sorted(groups.items()):
        k = _last_k(group[0])[0][len("last"):-len("_min_test_acc")]
        shown = " ".join(f"{name}={value}" for name, value in json.loads(params).items()) or "-"
        split = "val" if all(e.get("evaluated_on") == "validation" for e in group) else "test"
        metrics = [(f"best {split} %", lambda e: e["metrics"]["best_test_acc"]),
                   (f"final {split} %", lambda e: e["metrics"]["final_test_acc"]),
                   (f"last-{k} min {split} %", lambda e: _last_k(e)[1])]
        for i, (name, get) in enumerate(metrics):
            values = [v for v in map(get, group) if v is not None]
            spread = f" ± {statistics.stdev(values):.2f}" if len(values) > 1 else ""
            stats = [f"{statistics.fmean(values):.2f}{spread}", f"{min(values):.2f}", f"{max(values):.2f}"] if values \
                else ["-", "-", "-"]
            met = f"{sum(bool(e.get('passed')) for e in group)}/{len(group)}"
            first = [notebook, label or "-", shown] if i == 0 or markdown else ["", "", ""]
            rows.append([*first, name, str(len(values)), *stats, met if i == 0 or markdown else ""])
    if markdown:
        align = ["---"] * 4 + ["---:"] * 4 + ["---"]
        return "\n".join("| " + " | ".join(r) + " |" for r in [head, align, *rows])
    widths = [max(len(r[c]) for r in [head, *rows]) for c in range(len(head))]
    return "\n".join("  ".join(cell.ljust(w) if c < 4 else cell.rjust(w) for c, (cell, w) in enumerate(zip(r, widths)))
                     .rstrip() for r in [head, *rows])
