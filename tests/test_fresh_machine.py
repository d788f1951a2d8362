"""A newcomer's first hour: nothing lost by a failed run, a ledger that names the code that ran, committed
outputs free of one machine's paths and warnings, Colab links that install what produced the outputs, and GPU
notebooks that stop on a CPU instead of running for hours."""
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import nbformat
import pytest
import torch
import torch.nn as nn

import eva_utils as eva
from eva_utils import cli, results, train

ROOT = Path(__file__).resolve().parents[1]
NOTEBOOKS = sorted((ROOT / "notebooks").glob("[0-9][0-9]_*.ipynb"))
GPU_NOTEBOOKS = [p for p in NOTEBOOKS if int(p.name[:2]) >= 12]


@pytest.fixture(autouse=True)
def _keep_run_environment(monkeypatch):
    """eva.start() sets EVA_MODE and EVA_NEEDS_GPU for the notebook's kernel: restore them after each test."""
    for name in ("EVA_MODE", "EVA_NEEDS_GPU"):
        monkeypatch.setenv(name, os.environ.get(name, ""))


def _notebook(path: Path, *sources: str) -> Path:
    nb = nbformat.v4.new_notebook()
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    nb.cells = [nbformat.v4.new_code_cell(s) for s in sources]
    nb.cells[0].metadata["tags"] = ["parameters"]
    nbformat.write(nb, path)
    return path


# --------------------------------------------------------------------------- eva run --full never destroys a notebook
REPORT = ("import eva_utils as eva\n"
          "h = eva.History(train_loss=[1.0], train_acc=[90.0], test_loss=[1.0], test_acc=[91.0], lr=[0.1], "
          "epoch_time=[1.0])\n"
          "eva.start('99_x', mode='full', device='cpu').report(h, eva.Target(), params=1)")


def test_failed_full_run_leaves_the_notebook_and_the_ledger_as_they_were(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)  # no repository here: build/ goes under the working directory
    monkeypatch.setenv("EVA_RESULTS_DIR", str(tmp_path / "results"))
    nb = _notebook(tmp_path / "fails.ipynb", "X = 1", REPORT, "raise RuntimeError('boom')")
    before = nb.read_bytes()
    assert cli.run_notebooks([nb], "full", {}) == 1
    assert nb.read_bytes() == before
    assert not (tmp_path / "results" / "ledger.jsonl").exists()  # the step that reported before the error
    assert len((tmp_path / "build" / "failed" / "fails.ledger.jsonl").read_text().splitlines()) == 1
    failed = tmp_path / "build" / "failed" / "fails.ipynb"
    assert failed.is_file() and "boom" in failed.read_text()
    assert not (tmp_path / "build" / "running" / "fails.ipynb").exists()
    err = capsys.readouterr().err
    assert "RuntimeError: boom" in err and str(failed) in err and "unchanged" in err


def test_interrupted_full_run_leaves_the_notebook_byte_identical(tmp_path, monkeypatch, capsys):
    import papermill as pm

    monkeypatch.chdir(tmp_path)
    nb = _notebook(tmp_path / "slow.ipynb", "X = 1")
    before = nb.read_bytes()

    def interrupted(src, out, **kwargs):  # papermill has written part of the output when Ctrl-C arrives
        Path(out).write_text("half-written")
        raise KeyboardInterrupt

    monkeypatch.setattr(pm, "execute_notebook", interrupted)
    assert cli.run_notebooks([nb], "full", {}) == 130
    assert nb.read_bytes() == before
    assert (tmp_path / "build" / "failed" / "slow.ipynb").read_text() == "half-written"
    assert "KeyboardInterrupt" in capsys.readouterr().err


def test_a_killed_full_run_keeps_its_copy_and_leaves_the_notebook_and_the_ledger(tmp_path):
    """`kill` (SIGTERM, as a scheduler's time limit sends) mid-run: a real `eva run --full` process and kernel."""
    nb = _notebook(tmp_path / "long.ipynb", "X = 1", REPORT, "import time\nprint('training', flush=True)\n"
                   "time.sleep(120)")
    before = nb.read_bytes()
    env = {**os.environ, "EVA_RESULTS_DIR": str(tmp_path / "results"), "EVA_MODE": "full"}
    proc = subprocess.Popen([sys.executable, "-m", "eva_utils.cli", "run", "--full", nb.name], cwd=tmp_path, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    staged = tmp_path / "build" / "running" / "long.ledger.jsonl"
    deadline = time.time() + 120
    while not staged.exists() and time.time() < deadline:  # the report has run; the last cell is "training"
        time.sleep(0.5)
    time.sleep(2)
    assert proc.poll() is None, proc.communicate()
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 143, err
    assert nb.read_bytes() == before and not (tmp_path / "results" / "ledger.jsonl").exists()
    assert "99_x" in (tmp_path / "build" / "failed" / "long.ipynb").read_text()  # the copy as far as it got
    assert (tmp_path / "build" / "failed" / "long.ledger.jsonl").is_file()  # the report's line, kept aside
    assert "Terminated" in err and "unchanged" in err


def test_successful_full_run_replaces_the_notebook_and_records_its_ledger_lines(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("EVA_RESULTS_DIR", str(tmp_path / "results"))
    nb = _notebook(tmp_path / "ok.ipynb", "X = 1", "print(X * 6 * 7)", REPORT)
    assert cli.run_notebooks([nb], "full", {"X": 2}) == 0
    assert nbformat.read(nb, as_version=4).metadata.papermill.output_path == str(nb)  # not build/running/
    entry, = results.read_ledger(tmp_path / "results" / "ledger.jsonl")
    assert entry["notebook"] == "99_x" and entry["metrics"]["best_test_acc"] == 91.0
    outputs = [o for c in nbformat.read(nb, as_version=4).cells for o in c.get("outputs", [])]
    assert any("84" in o.get("text", "") for o in outputs)
    assert not list((tmp_path / "build").rglob("*.ipynb"))


# --------------------------------------------------------------------------- the ledger names the code that ran
def _git(repo, *args):
    subprocess.run(["git", *args], cwd=repo, check=True, capture_output=True)


def test_git_state_covers_eva_utils_and_the_notebook_code_not_its_outputs(tmp_path):
    (tmp_path / "eva_utils").mkdir()
    (tmp_path / "eva_utils" / "a.py").write_text("x = 1\n")
    (tmp_path / "notebooks").mkdir()
    nb = _notebook(tmp_path / "notebooks" / "99_x.ipynb", "SEED = 1", "print(SEED)")
    _git(tmp_path, "init", "-q")
    _git(tmp_path, "add", ".")
    _git(tmp_path, "-c", "user.name=t", "-c", "user.email=t@t", "commit", "-qm", "c")
    sha = subprocess.run(["git", "rev-parse", "HEAD"], cwd=tmp_path, capture_output=True, text=True).stdout.strip()
    assert results.git_state("99_x", tmp_path) == (sha, False)

    book = nbformat.read(nb, as_version=4)
    book.cells[1].outputs = [nbformat.v4.new_output("stream", text="1\n")]  # a run's outputs: still clean
    nbformat.write(book, nb)
    assert results.git_state("99_x", tmp_path) == (sha, False)

    book.cells[1].source = "print(SEED + 1)"  # the code changed: dirty
    nbformat.write(book, nb)
    assert results.git_state("99_x", tmp_path) == (sha, True)
    assert results.git_state("98_other", tmp_path) == (sha, False)

    _git(tmp_path, "checkout", "-q", "--", "notebooks")
    (tmp_path / "eva_utils" / "a.py").write_text("x = 2\n")
    assert results.git_state("99_x", tmp_path) == (sha, True)


def test_ledger_records_the_code_at_start_and_each_training_runs_start(tmp_path, monkeypatch):
    monkeypatch.setenv("EVA_RESULTS_DIR", str(tmp_path))
    monkeypatch.setattr(results, "git_state", lambda *a, **k: ("a" * 40, False))
    run = eva.Run("99_test", mode="full", device="cpu")
    monkeypatch.setattr(results, "git_state", lambda *a, **k: ("b" * 40, True))  # edited while it trained
    h1 = eva.History(train_loss=[1.0], train_acc=[90.0], test_loss=[1.0], test_acc=[90.0], lr=[0.1],
                     epoch_time=[1.0], started="2026-01-01T00:00:00+00:00")
    h2 = eva.History(**{**h1.to_dict(), "started": "2026-01-01T01:00:00+00:00"})
    e1 = run.report(h1, eva.Target(), nn.Linear(1, 1), label="one")
    e2 = run.report(h2, eva.Target(), nn.Linear(1, 1), label="two")
    assert (e1["git_sha"], e1["git_dirty"]) == ("a" * 40, False)
    assert (e1["started"], e2["started"]) == ("2026-01-01T00:00:00+00:00", "2026-01-01T01:00:00+00:00")


def test_fit_stamps_each_history_with_its_start(tmp_path):
    x, y = torch.randn(8, 2), torch.tensor([0, 1] * 4)
    loader = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(x, y), batch_size=4)
    model = nn.Linear(2, 2)
    h = eva.fit(model, loader, loader, torch.optim.SGD(model.parameters(), lr=0.1), 1, device="cpu",
                checkpoint=None, verbose=False)
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\+00:00", h.started)


def test_readme_table_marks_runs_started_from_a_dirty_tree():
    h = eva.History(train_loss=[1.0], train_acc=[90.0], test_loss=[1.0], test_acc=[90.0], lr=[0.1], epoch_time=[1.0])
    base = {"notebook": "99_x", "label": "", "mode": "full", "device": "cpu", "epochs": 1, "params": 1, "wall_s": 1.0,
            "metrics": {"best_test_acc": 90.0, "best_epoch": 1, "best_train_acc": 90.0}, "passed": False}
    clean = results.markdown_table([{**base, "git_dirty": False}])
    dirty = results.markdown_table([{**base, "git_dirty": True}])
    assert "†" not in clean and "[99_x](notebooks/99_x.ipynb) † |" in dirty and "\n† started from" in dirty
    assert h.epochs == 1


# --------------------------------------------------------------------------- committed outputs carry no machine noise
NOISE = re.compile(r"(?<![\w.~$])(/(?:home|root|tmp|opt|usr|work|content|mnt|Users|var)/[\w.-]+"
                   r"|[A-Za-z]:\\\\[\w]|TqdmWarning|IProgress not found|Error fetching version info)")


def _output_text(output) -> str:
    if "text" in output:
        return output["text"]
    data = output.get("data", {})
    return "".join(data.get(k, "") for k in ("text/plain", "text/markdown", "text/html")) + \
        "\n".join(output.get("traceback", []))


def test_the_noise_pattern_catches_what_it_should():
    for bad in ("ledger: /work/main/results/ledger.jsonl", "/opt/torch/.venv/lib/tqdm/auto.py:21: TqdmWarning: x",
                "UserWarning: Error fetching version info <urlopen error>", "looked for /root/.cache/torch/x.pth",
                "saved C:\\\\Users\\\\me\\\\x.pt"):
        assert NOISE.search(bad), bad
    for fine in ("ledger: results/ledger.jsonl", "$EVA_DATA_DIR/cifar100/cifar100.npz", "~/.cache/torch/x.pth",
                 "28 -> 24 /opt"):
        assert not NOISE.search(fine), fine


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_committed_outputs_carry_no_absolute_paths_or_environment_warnings(path):
    nb = nbformat.read(path, as_version=4)
    found = [(i, m.group(0)) for i, c in enumerate(nb.cells) if c.cell_type == "code"
             for o in c.get("outputs", []) for m in NOISE.finditer(_output_text(o))]
    assert not found, f"{path.name}: machine noise in outputs (cell, text): {found[:5]}"
    papermill = nb.metadata.get("papermill", {})
    assert not any(NOISE.search(str(papermill.get(k, ""))) for k in ("input_path", "output_path")), papermill


# --------------------------------------------------------------------------- Colab installs what produced the outputs
def test_every_notebook_links_and_installs_the_release_named_in_pyproject():
    url, tag = cli.release()
    assert re.fullmatch(r"https://github\.com/[\w.-]+/[\w.-]+", url) and re.fullmatch(r"v\d+\.\d+\.\d+", tag)
    slug = url.split("github.com/")[1]
    assert len(NOTEBOOKS) == 15
    for path in NOTEBOOKS:
        nb = nbformat.read(path, as_version=4)
        assert f"https://colab.research.google.com/github/{slug}/blob/{tag}/notebooks/{path.name}" in nb.cells[0].source
        setup = next(c.source for c in nb.cells if c.cell_type == "code" and "google.colab" in c.source)
        assert f'"git+{url}@{tag}"' in setup, path.name
        others = set(re.findall(r"github\.com/([\w.-]+/[\w.-]+)", path.read_text())) - {slug}
        assert not others, f"{path.name} names another repository: {others}"


def test_eva_colab_rewrites_badges_and_install_cells(tmp_path):
    src = NOTEBOOKS[2]
    nb = tmp_path / src.name
    nb.write_text(src.read_text().replace(cli.release()[1], "v0.0.1").replace("eva-course/eva", "someone/else"))
    assert "v0.0.1" in nb.read_text()
    assert cli.main(["colab", str(nb)]) == 0
    assert nb.read_text() == src.read_text()


@pytest.mark.parametrize("path", GPU_NOTEBOOKS, ids=lambda p: p.stem)
def test_gpu_notebooks_say_so_at_the_top_and_declare_it(path):
    nb = nbformat.read(path, as_version=4)
    assert "Needs a GPU" in nb.cells[0].source and "Change runtime type" in nb.cells[0].source
    start = next(c.source for c in nb.cells if c.cell_type == "code" and "eva.start(" in c.source)
    assert "needs_gpu=True" in start


def _tiny_cifar_job():
    x, y = torch.randn(256, 3, 32, 32), torch.randint(0, 10, (256,))
    loader = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(x, y), batch_size=128)
    model = nn.Sequential(nn.Conv2d(3, 64, 3, padding=1), nn.BatchNorm2d(64), nn.ReLU(), nn.AdaptiveAvgPool2d(1),
                          nn.Flatten(), nn.Linear(64, 10))
    return model, loader, torch.optim.SGD(model.parameters(), lr=0.1)


def test_a_gpu_notebook_in_full_mode_on_a_cpu_stops_within_seconds(monkeypatch):
    monkeypatch.delenv("EVA_ALLOW_CPU", raising=False)
    monkeypatch.setattr(results, "git_state", lambda *a, **k: (None, None))
    eva.start("99_gpu", mode="full", device="cpu", needs_gpu=True)
    model, loader, optimizer = _tiny_cifar_job()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    t0 = time.perf_counter()
    with pytest.raises(train.NeedsGPU, match=r"(?s)needs a GPU.*one training epoch would take about \d+ min.*"
                                             r"24 epochs: about [\d.]+ h.*Change runtime type > T4 GPU"):
        eva.fit(model, loader, loader, optimizer, 24, device="cpu", checkpoint=None)
    assert time.perf_counter() - t0 < 10
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())  # nothing trained, BN untouched


def test_the_gpu_check_stays_out_of_smoke_runs_cpu_notebooks_and_allowed_cpu_runs(monkeypatch):
    monkeypatch.setattr(results, "git_state", lambda *a, **k: (None, None))
    model, loader, optimizer = _tiny_cifar_job()
    for mode, needs_gpu, allow in (("smoke", True, ""), ("full", False, ""), ("full", True, "1")):
        monkeypatch.setenv("EVA_ALLOW_CPU", allow)
        eva.start("99_gpu", mode=mode, device="cpu", needs_gpu=needs_gpu)
        train.gpu_guard(model, loader, 24, device="cpu")  # returns without raising
