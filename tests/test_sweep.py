"""`eva sweep`: notebook x parameters x seeds as Ray tasks, the ledger appends it makes, and its faults.

The Ray tests need `pip install -e ".[sweep]"` (CI installs it; without Ray they are skipped, except in CI where
that is a failure). They share two Ray sessions to keep the suite fast: one sweep in local mode (Ray started by the
sweep itself), and a head started with `ray start --head` on 127.0.0.1 that the other sweeps join with --address.
"""
import importlib.util
import json
import multiprocessing
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from contextlib import redirect_stdout
from io import StringIO
from pathlib import Path

import nbformat
import pytest

from eva_utils import cli, results, sweep

ROOT = Path(__file__).resolve().parents[1]
HAS_RAY = importlib.util.find_spec("ray") is not None
needs_ray = pytest.mark.skipif(not HAS_RAY, reason='Ray is not installed: pip install -e ".[sweep]" (CI installs it)')

# What each seed of the test notebook does: 1 reports through the real eva.start / run.report; 3 fails, 4 kills its
# kernel, 5 kills the Ray worker that runs papermill, 6 and 7 sleep; 2 and 8 and up write their ledger line as
# run.report does (to $EVA_LEDGER), without importing eva_utils and torch, so that their kernels start fast.
CELL = '''import json, os, time
if PIDFILE:
    open(f"{PIDFILE}-{SEED}", "w").write(str(os.getpid()))
acc = 98.0 + SEED / 10
if SEED == 1:
    import eva_utils as eva
    run = eva.start("t_sweep", seed=SEED)
    h = eva.History(train_loss=[1.0, 0.5], train_acc=[90.0, 95.0], test_loss=[0.5, 0.4], test_acc=[acc - 1, acc],
                    lr=[0.01, 0.01], epoch_time=[1.0, 1.0], device="cpu")
    run.report(h, eva.Target(test_acc=98.25), params=1000)
elif SEED == 3:
    raise ValueError(f"no good for seed {SEED}")
elif SEED == 4:
    os.kill(os.getpid(), 9)  # the kernel dies
elif SEED in (6, 7):
    time.sleep(600)  # interrupted by the test
else:
    metrics = {"best_test_acc": acc, "final_test_acc": acc - 0.5, "last2_min_test_acc": acc - 1, "test_acc": [acc]}
    entry = {"notebook": "t_sweep", "label": "", "mode": os.environ["EVA_MODE"], "seed": SEED, "metrics": metrics,
             "passed": acc >= 98.25, "sweep": os.environ.get("EVA_SWEEP")}
    with open(os.environ["EVA_LEDGER"], "a") as f:
        f.write(json.dumps(entry) + "\\n")
    if SEED == 5:
        os.kill(os.getppid(), 9)  # its line is staged, then the Ray worker running papermill is killed
        time.sleep(60)
'''


def write_notebook(path: Path) -> Path:
    nb = nbformat.v4.new_notebook()
    nb.metadata["kernelspec"] = {"name": "python3", "language": "python", "display_name": "Python 3"}
    params = nbformat.v4.new_code_cell("SEED = 1\nLR = 0.01\nPIDFILE = ''")
    params.metadata["tags"] = ["parameters"]
    nb.cells = [params, nbformat.v4.new_code_cell(CELL)]
    nbformat.write(nb, path)
    return path


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def eva_command(*args, env):
    return subprocess.Popen([sys.executable, "-m", "eva_utils.cli", *args], cwd=ROOT, env=env, text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT)


def output(proc, timeout: float) -> str:
    """What the command printed once it ended; one still running after ``timeout`` is killed and fails the test."""
    try:
        return proc.communicate(timeout=timeout)[0]
    except subprocess.TimeoutExpired:
        proc.kill()
        pytest.fail(f"still running after {timeout} s:\n{proc.communicate()[0]}")


# ---------------------------------------------------------------------------------------------- without Ray at all

def test_seeds_are_ranges_lists_or_one_seed():
    assert sweep.parse_seeds("1-10") == list(range(1, 11))
    assert sweep.parse_seeds("1,3,5") == [1, 3, 5] and sweep.parse_seeds("4") == [4]
    assert sweep.parse_seeds("1-3,7,2") == [1, 2, 3, 7]
    for bad in ("", "a", "5-2", "1-"):
        with pytest.raises(ValueError, match="1-10"):
            sweep.parse_seeds(bad)
    assert sweep.parse_values("0.01,0.05,adam,True") == [0.01, 0.05, "adam", True]


def test_plan_is_every_notebook_value_and_seed():
    jobs = sweep.plan(["a.ipynb", "b.ipynb"], {"LR": [0.01, 0.05], "BS": [64]}, [1, 2, 3])
    assert len(jobs) == 12 and len({j.name for j in jobs}) == 12
    assert jobs[0].name == "a-LR=0.01-BS=64-seed1" and str(jobs[0]) == "a LR=0.01 BS=64 SEED=1"


def _writer(path, worker, lines):
    for i in range(lines):  # lines of very different sizes, some far above a pipe's or a buffer's atomic size
        results.append_ledger(path, [{"worker": worker, "i": i, "pad": "x" * (50 + (i * 997) % 20_000)}])


def test_concurrent_ledger_appends_lose_and_interleave_nothing(tmp_path):
    path, workers, lines = tmp_path / "ledger.jsonl", 8, 200
    ctx = multiprocessing.get_context("fork")  # spawn would import eva_utils (and torch) again in each writer
    procs = [ctx.Process(target=_writer, args=(path, w, lines)) for w in range(workers)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(120)
        assert p.exitcode == 0
    got = [json.loads(line) for line in path.read_text().splitlines()]  # each line whole, or json.loads fails
    assert len(got) == workers * lines
    assert sorted((e["worker"], e["i"]) for e in got) == [(w, i) for w in range(workers) for i in range(lines)]
    for w in range(workers):  # each writer's lines in its own order
        assert [e["i"] for e in got if e["worker"] == w] == list(range(lines))


def test_without_ray_eva_sweep_says_how_to_install_it(tmp_path, monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "ray", None)  # `import ray` raises ImportError
    nb = write_notebook(tmp_path / "t.ipynb")
    assert cli.main(["sweep", str(nb), "--seeds", "1-2", "--output-dir", str(tmp_path)]) == 2
    assert 'pip install -e ".[sweep]"' in capsys.readouterr().err
    assert not list(tmp_path.glob("2*"))  # no sweep folder either


def test_sweep_table_has_n_mean_std_min_max_and_met_per_group(tmp_path, monkeypatch, capsys):
    def entry(seed, acc, lr, passed, sweep_id="S1"):
        return {"notebook": "03_x", "label": "", "mode": "full", "seed": seed, "sweep": sweep_id,
                "sweep_params": {"LR": lr}, "passed": passed,
                "metrics": {"best_test_acc": acc, "final_test_acc": acc - 1, "last3_min_test_acc": acc - 2}}
    entries = [entry(1, 99.0, 0.01, True), entry(2, 99.2, 0.01, True), entry(3, 99.4, 0.01, False),
               entry(1, 98.0, 0.1, False), entry(1, 50.0, 0.1, False, sweep_id="other")]
    table = sweep.sweep_table(entries[:4])
    lines = table.splitlines()
    assert lines[0].split()[:4] == ["notebook", "step", "parameters", "metric"]
    assert lines[1].split() == ["03_x", "-", "LR=0.01", "best", "test", "%", "3", "99.20", "±", "0.20", "99.00",
                                "99.40", "2/3"]  # sample std of 99.0, 99.2, 99.4
    assert "last-3 min test %" in lines[3] and "97.20 ± 0.20" in lines[3]
    assert lines[4].split()[-5:] == ["1", "98.00", "98.00", "98.00", "0/1"]  # one run: no std
    md = sweep.sweep_table(entries[:4], markdown=True).splitlines()
    assert md[0].startswith("| notebook |") and md[1].startswith("| --- |") and len(md) == 2 + 6
    assert md[2] == "| 03_x | - | LR=0.01 | best test % | 3 | 99.20 ± 0.20 | 99.00 | 99.40 | 2/3 |"

    monkeypatch.setenv("EVA_RESULTS_DIR", str(tmp_path))
    results.append_ledger(results.ledger_path("full"), entries)
    assert cli.main(["results", "--sweep", "S1", "--markdown"]) == 0
    out = capsys.readouterr().out
    assert out.count("| 03_x |") == 6 and "50.00" not in out
    assert cli.main(["results", "--sweep", "S1", "--smoke"]) == 1
    assert "no run of sweep S1" in capsys.readouterr().err


# ------------------------------------------------------------------------------------- Ray started by the sweep

@pytest.fixture(scope="module")
def local_sweep(tmp_path_factory):
    """One sweep in local mode: 5 runs, 2 good, 1 failing cell, 1 dead kernel, 1 killed worker."""
    tmp = tmp_path_factory.mktemp("local_sweep")
    nb = write_notebook(tmp / "t_sweep.ipynb")
    environ, sigterm = dict(os.environ), signal.getsignal(signal.SIGTERM)  # ray.init changes both
    os.environ.update(EVA_RESULTS_DIR=str(tmp / "results"))
    os.environ.pop("RAY_ADDRESS", None)
    out = StringIO()
    try:
        with redirect_stdout(out):
            t0 = time.perf_counter()
            code = sweep.run_sweep([nb], sweep.parse_seeds("1-5"), {"LR": [0.1]}, "smoke", output_dir=tmp / "sweeps")
            seconds = time.perf_counter() - t0
    finally:
        os.environ.clear()
        os.environ.update(environ)
        signal.signal(signal.SIGTERM, sigterm)
    [folder] = (tmp / "sweeps").iterdir()
    ledger = results.read_ledger(tmp / "results" / "smoke" / "ledger.jsonl")
    return {"code": code, "out": out.getvalue(), "ledger": ledger, "id": folder.name, "folder": folder,
            "seconds": seconds, "tmp": tmp}


@needs_ray
def test_local_sweep_writes_one_ledger_line_per_good_run_with_the_sweep_id(local_sweep):
    ledger, sweep_id = local_sweep["ledger"], local_sweep["id"]
    assert sorted(e["seed"] for e in ledger) == [1, 2]
    for e in ledger:
        assert e["sweep"] == sweep_id and e["sweep_params"] == {"LR": 0.1} and e["mode"] == "smoke"
    real = next(e for e in ledger if e["seed"] == 1)  # written by run.report in the kernel
    assert real["notebook"] == "t_sweep" and real["metrics"]["best_test_acc"] == 98.1 and "git_sha" in real
    assert real["device"] == "cpu"
    folder = local_sweep["folder"]
    assert {p.name for p in folder.glob("*.ipynb")} == {f"t_sweep-LR=0.1-seed{s}.ipynb" for s in range(1, 6)}
    assert (folder / "summary.md").read_text().startswith("| notebook |")
    rows = [line.split() for line in local_sweep["out"].splitlines()]
    assert ["t_sweep", "-", "LR=0.1", "best", "test", "%", "2", "98.15", "±", "0.07", "98.10", "98.20", "0/2"] in rows
    assert f"eva results --sweep {sweep_id} --smoke" in local_sweep["out"]
    print(f"local sweep of 5 runs: {local_sweep['seconds']:.1f} s")


@needs_ray
def test_a_failing_run_is_reported_with_its_cell_and_the_others_complete(local_sweep):
    out = local_sweep["out"]
    assert local_sweep["code"] == 1 and "2 of 5 runs succeeded, 3 failed" in out
    # cell 3: the parameters cell, the one papermill adds after it, the failing one
    assert "FAILED t_sweep LR=0.1 SEED=3: cell [3] ValueError: no good for seed 3" in out
    assert "t_sweep-LR=0.1-seed3.ipynb" in out


@needs_ray
def test_a_dead_kernel_is_a_failed_run(local_sweep):
    assert "FAILED t_sweep LR=0.1 SEED=4: DeadKernelError" in local_sweep["out"]


@needs_ray
def test_a_killed_worker_is_a_failed_run_with_no_ledger_line(local_sweep):
    assert "FAILED t_sweep LR=0.1 SEED=5: WorkerCrashedError" in local_sweep["out"]
    staged = local_sweep["folder"] / "t_sweep-LR=0.1-seed5.jsonl"
    assert staged.read_text().count("\n") == 1  # it had reported before it was killed ...
    assert 5 not in [e["seed"] for e in local_sweep["ledger"]]  # ... and none of that reached the ledger


# ------------------------------------------------------------------------- a Ray head that the sweeps join

@pytest.fixture(scope="module")
def ray_head(tmp_path_factory):
    """`ray start --head` on 127.0.0.1, as a user starts it (with Ray's default token authentication), with a temp
    folder of its own; stopped afterwards.

    It runs with --block and is stopped by a SIGTERM to that one process, which takes its cluster down:
    `ray stop` would stop every Ray cluster of this machine, other people's included.
    """
    if not HAS_RAY:
        pytest.skip('Ray is not installed: pip install -e ".[sweep]" (CI installs it)')
    port = free_port()
    env = {k: v for k, v in os.environ.items() if k not in ("RAY_ADDRESS", "RAY_AUTH_MODE", "RAY_AUTH_TOKEN")}
    temp = Path(f"/tmp/ray-eva-{port}")  # Ray's socket paths must stay short: not under pytest's tmp_path
    log = (tmp_path_factory.mktemp("ray_head") / "head.log").open("w")
    head = subprocess.Popen([sys.executable, "-m", "ray.scripts.scripts", "start", "--head", "--block",
                             f"--port={port}", "--node-ip-address=127.0.0.1", "--num-cpus=3", "--num-gpus=0",
                             "--include-dashboard=false", "--disable-usage-stats", f"--temp-dir={temp}"],
                            env=env, stdout=log, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 120
        while "Ray runtime started" not in Path(log.name).read_text():
            assert head.poll() is None and time.monotonic() < deadline, Path(log.name).read_text()[-3000:]
            time.sleep(0.5)
        yield f"127.0.0.1:{port}", env
    finally:
        head.send_signal(signal.SIGTERM)
        try:
            head.wait(60)
        except subprocess.TimeoutExpired:
            head.kill()
        log.close()
        shutil.rmtree(temp, ignore_errors=True)


@needs_ray
def test_sweep_joins_a_running_head_through_address(ray_head, tmp_path):
    address, env = ray_head
    nb = write_notebook(tmp_path / "t_sweep.ipynb")
    env = {**env, "EVA_RESULTS_DIR": str(tmp_path / "results")}
    proc = eva_command("sweep", str(nb), "--seeds", "2,8", "-p", "LR", "0.01,0.05", "--address", address,
                       "--output-dir", str(tmp_path / "sweeps"), env=env)
    out = output(proc, 300)
    assert proc.returncode == 0, out
    assert f"on the Ray cluster at {address}" in out and "4 of 4 runs succeeded" in out
    ledger = results.read_ledger(tmp_path / "results" / "smoke" / "ledger.jsonl")
    assert sorted((e["sweep_params"]["LR"], e["seed"]) for e in ledger) == [(0.01, 2), (0.01, 8), (0.05, 2), (0.05, 8)]


@needs_ray
def test_ctrl_c_cancels_the_sweep_and_leaves_only_whole_lines(ray_head, tmp_path):
    address, env = ray_head
    nb = write_notebook(tmp_path / "t_sweep.ipynb")
    env = {**env, "EVA_RESULTS_DIR": str(tmp_path / "results")}
    pids, ledger = tmp_path / "pid", tmp_path / "results" / "smoke" / "ledger.jsonl"
    # the head has 3 CPUs: the 3 runs start at once; seed 2 finishes, seeds 6 and 7 sleep until interrupted
    proc = eva_command("sweep", str(nb), "--seeds", "2,6,7", "-p", "PIDFILE", str(pids), "--address", address,
                       "--output-dir", str(tmp_path / "sweeps"), env=env)
    deadline = time.monotonic() + 180
    while not (ledger.exists() and Path(f"{pids}-6").exists() and Path(f"{pids}-7").exists()):
        if proc.poll() is not None or time.monotonic() > deadline:
            proc.kill()
            pytest.fail("the sweep ended or did not start its runs:\n" + proc.communicate()[0])
        time.sleep(0.5)
    proc.send_signal(signal.SIGINT)
    out = output(proc, 60)
    assert proc.returncode == 130, out
    assert "interrupted: cancelled 2 unfinished run(s)" in out and "1 of 3 runs succeeded" in out
    assert [e["seed"] for e in results.read_ledger(ledger)] == [2]  # whole lines, the finished run's only
    kernels = [int(Path(f"{pids}-{s}").read_text()) for s in (6, 7)]
    deadline = time.monotonic() + 30
    while any(_alive(pid) for pid in kernels) and time.monotonic() < deadline:
        time.sleep(0.5)
    assert not any(_alive(pid) for pid in kernels), "the cancelled runs' kernels still run"


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return Path(f"/proc/{pid}").exists() and "zombie" not in Path(f"/proc/{pid}/status").read_text()


def test_ci_installs_ray():
    if os.environ.get("CI") and not HAS_RAY:
        pytest.fail('CI must test eva sweep: .ci/run should pip install -e ".[test,sweep]"')
