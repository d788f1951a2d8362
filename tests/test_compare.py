"""eva.compare: one table for several runs, with values computed from the histories."""
import pytest

import eva_utils as eva


def _history(test_acc, seconds=2.0):
    n = len(test_acc)
    return eva.History(train_loss=[1.0] * n, train_acc=[90.0] * n, test_loss=[0.5] * n, test_acc=list(test_acc),
                       lr=[0.01] * n, epoch_time=[seconds] * n)


def test_compare_rows_hold_best_last_k_final_and_time(capsys):
    table = eva.compare({"step seed 1": _history([98.0, 99.5, 99.3, 99.41, 99.35], seconds=65.0),
                         "onecycle": _history([99.1, 99.2]), "diverged": None}, last=3)
    step, onecycle, diverged = table.rows
    assert (step["best"], step["best_epoch"], step["final"], step["epochs"]) == (99.5, 2, 99.35, 5)
    assert step["last_min"] == 99.3 and step["last_mean"] == pytest.approx((99.3 + 99.41 + 99.35) / 3)
    assert step["time_s"] == 325.0
    assert onecycle["last_min"] == 99.1 and onecycle["last_mean"] == pytest.approx(99.15)  # fewer epochs than k
    assert diverged == {"run": "diverged", "epochs": 0}

    printed = capsys.readouterr().out
    assert printed == str(table) + "\n"
    head, first, second, third = printed.splitlines()
    assert head.split() == ["run", "epochs", "best", "test", "%", "(epoch)", "last-3", "min", "%", "last-3", "mean",
                            "%", "final", "test", "%", "time"]
    assert first.split() == ["step", "seed", "1", "5", "99.50", "(2)", "99.30", "99.35", "99.35", "5", "min", "25",
                             "s"]
    assert "no completed epoch" in third
    md = table.markdown().splitlines()
    assert md[0].startswith("| run | epochs | best test % (epoch) | last-3 min % |")
    assert md[1].startswith("| --- | ---: |")
    assert md[2] == "| step seed 1 | 5 | 99.50 (2) | 99.30 | 99.35 | 99.35 | 5 min 25 s |"


def test_compare_with_a_level_counts_the_epochs_that_reach_it(capsys):
    table = eva.compare({"a": _history([99.3, 99.45, 99.38, 99.4]), "b": _history([99.0, 99.1])}, level=99.4)
    assert (table.rows[0]["first_at_level"], table.rows[0]["epochs_at_level"]) == (2, 2)
    assert (table.rows[1]["first_at_level"], table.rows[1]["epochs_at_level"]) == (None, 0)
    lines = capsys.readouterr().out.splitlines()
    assert "first epoch ≥ 99.4 %  epochs ≥ 99.4 %" in lines[0]
    assert lines[1].split()[:5] == ["a", "4", "99.45", "(2)", "2"] and lines[2].split()[:5] == ["b", "2", "99.10",
                                                                                               "(2)", "never"]


def test_compare_with_gain_shows_what_each_row_adds_to_the_one_above(capsys):
    table = eva.compare({"1 plain": _history([20.0, 23.0]), "2 +BN": _history([30.0, 35.5]), "3 diverged": None,
                         "4 deeper": _history([34.0])}, gain=True)
    assert [r.get("gain") for r in table.rows] == [None, 12.5, None, -1.5]  # row 4 against row 2, the last measured
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].endswith("best vs row above") and lines[2].endswith("+12.50") and lines[4].endswith("-1.50")


def test_compare_is_not_echoed_again_as_a_cells_value():
    from IPython.core.formatters import IPythonDisplayFormatter

    table = eva.compare({"a": _history([1.0])})
    assert IPythonDisplayFormatter()(table) is True  # handled (by printing nothing): no second copy
