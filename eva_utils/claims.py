"""The facts an Analysis is written from, and a check that an Analysis states only facts.

An Analysis is prose, and prose drifts from the numbers above it: "above 99 % from epoch 6 on" when epoch 7 dipped
below, "still rising" when the last epoch fell. Two tools keep it honest:

* ``eva.facts("03_lighter_model")`` prints, from the notebook's full-run lines in the ledger, what an Analysis
  may quote: per-epoch train/test accuracy and loss with the train-test gap, the best and lowest epochs, the
  epoch from which each threshold held, and the direction of the last epochs. It reads the committed ledger, so
  its output is the same in a smoke run as in the full run that wrote the lines.
* ``check_claims(text, runs, printed)`` lists the sentences of an Analysis that its numbers contradict: a
  decimal number that appears nowhere in the notebook's outputs or ledger lines, "above X % from epoch N on",
  "from epoch N on ... between X % and Y %", "within X points ... to the end", "still rising/falling" and
  "stops improving after epoch N". ``tests/test_claims.py`` runs it on every committed notebook.
"""
from __future__ import annotations

import os
import re
from pathlib import Path

from . import ledger

SERIES = {"test accuracy": "test_acc", "train accuracy": "train_acc", "test loss": "test_loss",
          "train loss": "train_loss"}
THRESHOLDS = (98.0, 99.0, 99.2, 99.3, 99.4, 99.5)


def runs_of(notebook: str, entries: list[dict] | None = None) -> dict[str, dict]:
    """The latest full-run ledger entry of each step (label) of ``notebook``: ``{label: metrics}``.

    Without ``entries``: the committed ledger, then the lines that ``eva run``/``eva sweep`` have staged for the
    run in progress (``$EVA_LEDGER``), so that a full run's facts cell prints the run that has just reported.
    """
    if entries is None:
        staged = os.environ.get("EVA_LEDGER")
        entries = ledger.read_ledger() + (ledger.read_ledger(Path(staged)) if staged else [])
    return {e.get("label") or "": e["metrics"] for e in ledger.latest_full(entries) if e["notebook"] == notebook}


def held_from(values: list[float], threshold: float) -> int | None:
    """The first epoch (1-based) from which every later value is ≥ ``threshold``; None if the last one is below."""
    epoch = None
    for i in range(len(values), 0, -1):
        if values[i - 1] < threshold:
            break
        epoch = i
    return epoch


def _trend(values: list[float]) -> str:
    if len(values) < 2 or values[-1] == values[-2]:
        return "flat"
    return "rising" if values[-1] > values[-2] else "falling"


def describe(label: str, m: dict) -> str:
    """The facts of one run's metrics, as printed by :func:`facts`."""
    n = len(m["test_acc"])
    lines = [f"[{label or 'run'}] {n} epochs", "epoch  train acc  test acc  gap (train-test)  train loss  test loss"]
    for i in range(n):
        lines.append(f"{i + 1:>5}  {m['train_acc'][i]:>9.2f}  {m['test_acc'][i]:>8.2f}  "
                     f"{m['train_acc'][i] - m['test_acc'][i]:>+16.2f}  {m['train_loss'][i]:>10.4f}  "
                     f"{m['test_loss'][i]:>9.4f}")
    for name, key in SERIES.items():
        values = m[key]
        pick = max if "acc" in key else min
        best = pick(range(n), key=lambda i: values[i])
        word = "best" if "acc" in key else "lowest"
        digits = 2 if "acc" in key else 4
        lines.append(f"{name}: {word} {values[best]:.{digits}f} at epoch {best + 1}; final {values[-1]:.{digits}f}; "
                     f"last epoch {_trend(values)}")
    gaps = [a - b for a, b in zip(m["train_acc"], m["test_acc"])]
    lines.append(f"gap train-test: from {min(gaps):+.2f} to {max(gaps):+.2f} points")
    for t in THRESHOLDS:
        first = next((i + 1 for i, v in enumerate(m["test_acc"]) if v >= t), None)
        if first is not None:
            held = held_from(m["test_acc"], t)
            lines.append(f"test accuracy >= {t:.2f} %: first at epoch {first}"
                         + (f", held from epoch {held} on" if held else ", not held to the end"))
    return "\n".join(lines)


def facts(notebook: str, labels=None) -> None:
    """Print the facts of each full run of ``notebook`` recorded in the ledger (optionally only ``labels``)."""
    runs = runs_of(notebook)
    if not runs:
        print(f"no full run of {notebook} in the ledger yet")
    for label, m in runs.items():
        if labels is None or label in labels:
            print(describe(label, m), end="\n\n")


# --------------------------------------------------------------------------- the claims check
NUMBER = re.compile(r"(?<![\w.])\d+\.\d+(?![\w.])")
SENTENCE = re.compile(r"(?<=[.!?])\s+(?=[A-Z*(])")


def _series(text: str) -> str:
    """The series a claim is about: the last one named before it (test accuracy if none is named)."""
    s, found, at = text.lower(), "test_acc", -1
    for name, key in SERIES.items():
        if (i := s.rfind(name)) > at:
            found, at = key, i
    if at < 0 and "train" in s and "test" not in s:
        return "train_acc"
    return found


CLAIMS = {  # pattern -> why it is false for the values v of the series it is about (None if it holds)
    r"(?:above|over|at least|≥)\s*(\d+(?:\.\d+)?)\s*%[^.]*?from epoch (\d+) on":
        lambda v, m, x, e: (f"falls below {x} % after epoch {e} (min {min(v[int(e) - 1:]):.2f})"
                            if int(e) <= len(v) and min(v[int(e) - 1:]) < float(x) else None),
    r"(?i:from epoch) (\d+) on[^.]*?between (\d+\.\d+)\s*%? and (\d+\.\d+)\s*%":
        lambda v, m, e, lo, hi: (f"spans {min(v[int(e) - 1:]):.2f}-{max(v[int(e) - 1:]):.2f} from epoch {e}"
                                 if int(e) <= len(v) and not float(lo) <= min(v[int(e) - 1:]) <= max(v[int(e) - 1:])
                                 <= float(hi) else None),
    r"within (\d+(?:\.\d+)?) points[^.]*to the end":
        lambda v, m, x: (f"train and test differ by up to {_max_gap(m):.2f} points" if _max_gap(m) > float(x)
                         else None),
    r"still rising(?![^.]*epochs? \d)": lambda v, m: None if len(v) > 1 and v[-1] > v[-2] else f"the last epoch does not rise ({v[-2:]})",
    r"still falling(?![^.]*epochs? \d)": lambda v, m: None if len(v) > 1 and v[-1] < v[-2] else f"the last epoch does not fall ({v[-2:]})",
    r"stops improving after epoch (\d+)":
        lambda v, m, e: (f"improves after epoch {e}" if int(e) < len(v)
                         and any(_better(x, v[int(e) - 1], v) for x in v[int(e):]) else None),
}


def _max_gap(m: dict) -> float:
    return max(abs(a - b) for a, b in zip(m["train_acc"], m["test_acc"]))


def _better(x, y, v) -> bool:
    return x > y if v is not None and max(v) > 1.5 else x < y  # accuracies in %, losses below 1.5


def check_sentence(sentence: str, runs: dict[str, dict]) -> str | None:
    """Why ``sentence`` contradicts every run it could be about, or None. A claim must hold for one run at least."""
    problems = []
    for pattern, test in CLAIMS.items():
        for match in re.finditer(pattern, sentence):
            key = _series(sentence[:match.start()])
            whys = [test(m[key], m, *match.groups()) for m in runs.values()]
            if whys and all(whys):
                problems.append(f"{key} {whys[0]}")
    return "; ".join(problems) or None


def _values(text: str) -> set[float]:
    return {float(n) for n in NUMBER.findall(text)}


def check_claims(text: str, runs: dict[str, dict], printed: str) -> list[str]:
    """Sentences of ``text`` that ``runs`` contradict, and decimal numbers found neither in ``printed`` nor ``runs``.

    Numbers inside `code` spans are code, not claims. A number matches a printed or recorded one of equal value
    (``99.4`` matches ``99.40``); differences the text computes must be printed first (``facts`` prints gaps).
    """
    known = _values(printed)
    for m in runs.values():
        for key in SERIES.values():
            known |= {round(value, digits) for value in m[key] for digits in (2, 3, 4)}
    found = []
    prose = re.sub(r"`[^`]*`", "", " ".join(text.split()))
    for sentence in SENTENCE.split(prose):
        for number in NUMBER.findall(sentence):
            if float(number) not in known:
                found.append(f"{number} is not in the outputs or the ledger: {sentence[:120]}")
        if why := check_sentence(sentence, runs):
            found.append(f"{why}: {sentence[:160]}")
    return found
