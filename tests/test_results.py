"""The Result block and the ledger record what was measured; the README table is generated, never stale."""
import json
import os
from pathlib import Path

import pytest
import torch.nn as nn

import eva_utils as eva
from eva_utils import cli, results

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(autouse=True)
def _keep_run_environment(monkeypatch):
    """A Run sets EVA_MODE and EVA_NEEDS_GPU for the notebook's kernel and start() makes it current: undo both."""
    for name in ("EVA_MODE", "EVA_NEEDS_GPU"):
        monkeypatch.setenv(name, os.environ.get(name, ""))
    monkeypatch.setattr(results, "_current", None)


def _history(test_acc, train_acc=None):
    n = len(test_acc)
    return eva.History(train_loss=[1.0] * n, train_acc=train_acc or [90.0] * n, test_loss=[0.5] * n,
                       test_acc=list(test_acc), lr=[0.01] * n, epoch_time=[2.0] * n, device="cpu (2 threads)")


def test_target_hold_last_uses_the_minimum_of_the_last_epochs():
    t = eva.Target(test_acc=99.4, params=8000, epochs=15, hold_last=3)
    h = _history([99.0, 99.5, 99.41, 99.39, 99.45])
    checks = t.check(h, 7_990)
    assert checks["min test acc, last 3 epochs"] == (99.39, 99.4, False)
    assert checks["params"] == (7_990, 8000, True) and checks["epochs"] == (5, 15, True)
    assert eva.Target(test_acc=99.4).check(h, 1)["best test acc"] == (99.5, 99.4, True)


def test_full_report_writes_one_complete_ledger_line(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("EVA_RESULTS_DIR", str(tmp_path))
    run = eva.Run("99_test", seed=3, mode="full", device="cpu")
    model = nn.Linear(10, 2)  # 22 parameters
    entry = run.report(_history([98.0, 99.1, 99.0]), eva.Target(test_acc=99.0, params=100), model, reference="seed X")
    lines = (tmp_path / "ledger.jsonl").read_text().splitlines()
    assert len(lines) == 1 and json.loads(lines[0]) == entry
    for key in ("notebook", "mode", "started", "device", "seed", "epochs", "params", "wall_s", "git_sha", "metrics",
                "target", "passed"):
        assert key in entry, key
    assert entry["notebook"] == "99_test" and entry["mode"] == "full" and entry["seed"] == 3
    assert entry["params"] == 22 and entry["epochs"] == 3 and entry["wall_s"] == 6.0 and entry["passed"] is True
    m = entry["metrics"]
    assert m["test_acc"] == [98.0, 99.1, 99.0] and m["train_acc"] == [90.0] * 3
    assert m["best_test_acc"] == 99.1 and m["best_epoch"] == 2 and m["final_test_acc"] == 99.0
    out = capsys.readouterr().out
    assert "best test acc     99.10 %  (epoch 2)" in out and "TARGET MET" in out and "SMOKE" not in out
    assert not (tmp_path / "smoke").exists()


def test_smoke_report_is_labelled_and_stays_out_of_the_committed_ledger(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("EVA_RESULTS_DIR", str(tmp_path))
    run = eva.Run("99_test", mode="smoke")
    entry = run.report(_history([50.0]), eva.Target(test_acc=99.0), nn.Linear(2, 2), seed=5)
    assert entry["seed"] == 5 and "| seed 5 |" in capsys.readouterr().out  # a run trained with another seed
    run.report(_history([50.0]), eva.Target(test_acc=99.0), nn.Linear(2, 2))
    assert not (tmp_path / "ledger.jsonl").exists() and (tmp_path / "smoke" / "ledger.jsonl").exists()
    out = capsys.readouterr().out
    assert "SMOKE RUN" in out and "NOT results" in out and "TARGET MISSED (smoke: meaningless)" in out


def test_smoke_mode_forces_the_cpu_and_one_epoch(monkeypatch):
    run = eva.Run("99_test", mode="smoke")
    assert run.device.type == "cpu" and eva.config.epochs(15) == 1
    monkeypatch.setenv("EVA_MODE", "full")
    assert eva.Run("99_test").mode == "full" and eva.config.epochs(15) == 15
    with pytest.raises(ValueError, match="smoke"):
        eva.Run("99_test", mode="fast")


def test_quiet_report_prints_one_line_and_still_writes_the_ledger(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("EVA_RESULTS_DIR", str(tmp_path))
    run = eva.Run("99_test", mode="full", device="cpu")
    entry = run.report(_history([98.0, 99.5, 99.3, 99.41]), eva.Target(test_acc=99.4, hold_last=3), nn.Linear(2, 2),
                       label="step seed 2", seed=2, quiet=True)
    out = capsys.readouterr().out
    assert out == ("Result: 99_test [step seed 2] | mode full | seed 2 | 6 params | best test acc 99.50 % (epoch 2) | "
                   "last-3 min 99.30 % | target ≥ 99.4 % (last 3): TARGET MISSED\n")
    assert json.loads((tmp_path / "ledger.jsonl").read_text()) == entry and entry["label"] == "step seed 2"
    seeded = eva.History(**{**_history([50.0]).to_dict(), "seed": 4})  # fit records the seed it trained with
    assert eva.Run("99_test", mode="smoke").report(seeded, eva.Target(), nn.Linear(2, 2), quiet=True)["seed"] == 4
    assert capsys.readouterr().out.endswith("target none: TARGET MET | SMOKE RUN: these numbers are NOT results\n")


def test_run_entries_are_this_runs_lines_staged_or_not_and_sweep_table_groups_their_seeds(tmp_path, monkeypatch):
    monkeypatch.setenv("EVA_RESULTS_DIR", str(tmp_path))
    old = eva.Run("99_test", mode="full", device="cpu")
    old.report(_history([99.9] * 3), eva.Target(test_acc=99.4, hold_last=3), nn.Linear(2, 2), label="final", quiet=True)
    run = eva.Run("99_test", mode="full", device="cpu")
    run.started = "9999"  # the earlier run's line is older than this run
    other_step = run.report(_history([90.0] * 3), eva.Target(), nn.Linear(2, 2), label="step1", quiet=True)
    staged = tmp_path / "staged.jsonl"
    monkeypatch.setenv("EVA_LEDGER", str(staged))  # as under `eva run`: the tasks' lines wait there
    finals = []
    for seed, acc in ((1, [99.5, 99.4, 99.6]), (2, [99.3, 99.5, 99.5]), (3, [99.6, 99.6, 99.7])):
        h = eva.History(**{**_history(acc).to_dict(), "seed": seed, "started": "9999-01-0%d" % seed})
        finals.append(run.report(h, eva.Target(test_acc=99.4, hold_last=3), nn.Linear(2, 2),
                                 label="final" if seed == 1 else f"final seed {seed}", quiet=True))
    assert len(staged.read_text().splitlines()) == 3 and run.entries("final") == finals
    assert run.entries() == [e for e in [other_step, *finals] if e["started"] >= "9999"] != []
    assert "best val %" in eva.sweep_table([dict(e, evaluated_on="validation") for e in finals])
    table = eva.sweep_table(run.entries("final")).splitlines()
    assert len(table) == 1 + 3  # one group: the seeds of "final" (3 metrics)
    assert table[1].split()[:2] == ["99_test", "final"]  # best 99.6, 99.5, 99.7; seed 2 dips to 99.3: missed
    assert table[1].split()[-7:] == ["3", "99.60", "±", "0.10", "99.50", "99.70", "2/3"]
    assert table[3].split()[-6:] == ["3", "99.43", "±", "0.15", "99.30", "99.60"]  # last-3 min: 99.4, 99.3, 99.6


def test_start_makes_the_run_current_and_shrinks_listed_parameters_in_a_smoke_run(monkeypatch, capsys):
    monkeypatch.setattr(eva.config, "SMOKE_PARAMETERS", {"99_big": {"WIDTH": 4, "ABSENT": 1}})
    namespace = {"WIDTH": 64, "eva": eva}  # a notebook's globals after its parameters cell
    exec("run = eva.start('99_big', mode='full', device='cpu')", namespace)
    assert namespace["WIDTH"] == 64 and results.current_run() is namespace["run"]
    exec("run = eva.start('99_big', mode='smoke')", namespace)
    assert namespace["WIDTH"] == 4 and "ABSENT" not in namespace and results.current_run() is namespace["run"]
    assert "smoke run: WIDTH = 4 instead of 64" in capsys.readouterr().out


def test_markdown_table_uses_the_latest_full_entry_per_notebook():
    def entry(nb, acc, mode="full", label=""):
        return {"notebook": nb, "label": label, "mode": mode, "params": 10_790, "epochs": 15, "wall_s": 600.0,
                "device": "cpu", "passed": acc >= 99, "target": {"test_acc": 99.0}, "reference": "",
                "metrics": {"best_test_acc": acc, "best_epoch": 15, "best_train_acc": 99.1, "last3_min_test_acc": acc}}
    table = results.markdown_table([entry("03_a", 98.0), entry("03_a", 99.2), entry("03_a", 10.0, mode="smoke"),
                                    entry("01_b", 99.3)])
    rows = table.splitlines()[2:]
    assert len(rows) == 2 and rows[0].startswith("| [01_b]") and "99.20 (15)" in rows[1] and "10.00" not in table


def test_markdown_table_keeps_only_the_latest_run_of_a_notebook_and_marks_validation_steps():
    def entry(label, sha, acc, on="test"):
        return {"notebook": "11_x", "label": label, "mode": "full", "params": 7_756, "epochs": 15, "wall_s": 60.0,
                "device": "cpu", "passed": False, "target": {}, "reference": "", "git_sha": sha, "evaluated_on": on,
                "metrics": {"best_test_acc": acc, "best_epoch": 3, "best_train_acc": 99.0, "last3_min_test_acc": acc}}
    old = [entry("step1", "a", 98.1), entry("step6 seed 3", "a", 99.5)]  # a redesign removed "step6 seed 3"
    new = [entry("step1", "b", 97.7, on="validation"), entry("final", "b", 99.4)]
    rows = results.markdown_table(old + new).splitlines()
    assert [r.split("|")[2].strip() for r in rows if r.startswith("| [")] == ["final", "step1"]
    assert "| 97.70 (3) val | 97.70 val |" in rows[3] and "| 99.40 (3) | 99.40 |" in rows[2]
    assert "val: measured on the notebook's validation split" in rows[-1]
    assert "val" not in results.markdown_table(old)


def test_readme_results_table_is_not_stale():
    readme = (ROOT / "README.md").read_text()
    block = readme.split(results.TABLE_START, 1)[1].split(results.TABLE_END, 1)[0].strip()
    expected = results.markdown_table(results.read_ledger(ROOT / "results" / "ledger.jsonl")).strip()
    assert block == expected, "README results table is stale: run `eva results --update-readme`"


def test_committed_ledger_holds_full_runs_only():
    for e in results.read_ledger(ROOT / "results" / "ledger.jsonl"):
        assert e["mode"] == "full" and e["metrics"]["test_acc"] and e["git_sha"], e["notebook"]


def test_cli_refuses_mode_parameter_and_missing_notebooks(tmp_path):
    with pytest.raises(SystemExit, match="--smoke or --full"):
        cli.main(["run", "x.ipynb", "-p", "MODE", "full"])
    with pytest.raises(SystemExit, match="no such notebook"):
        cli.main(["run", str(tmp_path / "missing.ipynb")])
    assert cli._value("0.01") == 0.01 and cli._value("True") is True and cli._value("adam") == "adam"


def test_cli_smoke_run_executes_a_notebook_without_touching_it(tmp_path):
    import nbformat

    nb = nbformat.v4.new_notebook()
    nb.metadata["kernelspec"] = {"name": "python3", "language": "python", "display_name": "Python 3"}
    param = nbformat.v4.new_code_cell("X = 1")
    param.metadata["tags"] = ["parameters"]
    nb.cells = [param, nbformat.v4.new_code_cell("import os\nprint(os.environ['EVA_MODE'], X * 2)")]
    path = tmp_path / "t.ipynb"
    nbformat.write(nb, path)
    before = path.read_text()
    assert cli.main(["run", str(path), "--smoke", "-p", "X", "21", "--output-dir", str(tmp_path / "out")]) == 0
    assert path.read_text() == before
    executed = nbformat.read(tmp_path / "out" / "t.ipynb", as_version=4)
    assert executed.cells[-1].outputs[0]["text"].strip() == "smoke 42"


def test_cli_evaluate_scores_a_saved_model_on_the_real_test_set(tmp_path, capsys):
    import os

    import torch

    if not (eva.config.data_dir() / "MNIST" / "raw").is_dir() and not os.environ.get("CI"):
        pytest.skip("EVA_DATA_DIR has no MNIST copy")
    # a "model" that always answers 1: its accuracy is exactly the share of ones in the test set (1135 / 10000)
    model = nn.Sequential(nn.Flatten(), nn.Linear(784, 10))
    with torch.no_grad():
        model[1].weight.zero_()
        model[1].bias.copy_(torch.arange(10) == 1)
    from eva_utils.export import save_for_evaluation

    path = save_for_evaluation(model, tmp_path / "m.pt2", (1, 28, 28))
    assert cli.main(["evaluate", str(path)]) == 0
    assert "10,000 images: accuracy 11.35 %" in capsys.readouterr().out
    with pytest.raises(SystemExit, match="not a saved model"):
        (tmp_path / "bad.pt").write_bytes(b"not a model")
        cli.main(["evaluate", str(tmp_path / "bad.pt")])
