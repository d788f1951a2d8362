"""``eva sweep``: many runs of the course notebooks at once, on Ray.

One training run is one sample. Whether a recipe *reliably* holds 99.4 %, or whether ``LR=0.05`` beats
``LR=0.01``, is a question about a distribution: run the notebook with several seeds (and values) and
report n, mean ± std, min and max. A **sweep** is that grid::

    eva sweep notebooks/03_lighter_model.ipynb --seeds 1-10 -p LR 0.01,0.05 --full

is 2 values × 10 seeds = 20 executions of the notebook by papermill, each with its parameters cell
overridden (``LR``, ``SEED``), each one **Ray task**. Ray queues the tasks and starts as many at once as the
resources allow: ``--cpus-per-run`` cores each (1 by default, and the kernel uses that many threads) and
``--gpus-per-run`` of a GPU (0.25: four small MNIST runs share one GPU). Without ``--address`` (or
``$RAY_ADDRESS``) Ray starts on this machine; with one, the sweep joins that cluster.

Each run stands alone:

* its executed copy goes to ``build/sweeps/<sweep-id>/<run>.ipynb``; the committed notebook is never touched;
* ``run.report`` stages its ledger lines in ``<run>.jsonl`` beside it (``$EVA_LEDGER``, tagged ``$EVA_SWEEP``);
  this process appends them to the real ledger, under its file lock, only when every cell succeeded. So a
  failed run, a killed worker or Ctrl-C adds nothing, and never half a line, to the ledger;
* a failure is reported with its notebook, parameters and failing cell, and the other runs go on;
* Ctrl-C cancels what is queued or running; what had finished stays recorded.

At the end (and with ``eva results --sweep ID``): one block per group of runs, the same notebook, step and
parameters over the seeds, with n, mean ± std, min and max of the test accuracies and how many met the target.
"""
from __future__ import annotations

import contextlib
import itertools
import json
import os
import re
import secrets
import signal
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path

from . import config, parallel, results
from .compare import sweep_table

INSTALL = 'eva sweep needs Ray: pip install -e ".[sweep]"  (outside the repository: pip install "ray>=2.9")'


def parse_seeds(text: str) -> list[int]:
    """``"1-10"``, ``"1,3,5"``, ``"4"`` or a mix (``"1-3,7"``) -> the seeds in order, each once."""
    seeds: list[int] = []
    for part in str(text).replace(" ", "").split(","):
        first, dash, last = part.partition("-")
        try:
            span = range(int(first), int(last) + 1) if dash else [int(part)]
        except ValueError:
            raise ValueError(f"bad seeds {text!r}: write them as 1-10, 1,3,5 or 4") from None
        if not span:
            raise ValueError(f"bad seeds {text!r}: {part} is empty; write them as 1-10, 1,3,5 or 4")
        seeds += [s for s in span if s not in seeds]
    return seeds


def parse_values(text: str) -> list:
    """``"0.01,0.05"`` -> ``[0.01, 0.05]``: comma-separated values, each a Python literal or else a string."""
    from .cli import _value

    return [_value(v.strip()) for v in text.split(",")]


@dataclass
class Job:
    """One run of a sweep: a notebook, the swept parameter values (SEED apart) and a seed."""

    notebook: Path
    params: dict
    seed: int

    @property
    def name(self) -> str:
        """File name of its executed copy, e.g. ``03_lighter_model-LR=0.05-seed3``."""
        parts = [self.notebook.stem, *(f"{k}={v}" for k, v in self.params.items()), f"seed{self.seed}"]
        return re.sub(r"[^\w.=+-]", "_", "-".join(parts))

    def __str__(self) -> str:
        return " ".join([self.notebook.stem, *(f"{k}={v!r}" for k, v in self.params.items()), f"SEED={self.seed}"])


def plan(notebooks, grid: dict, seeds) -> list[Job]:
    """Every combination notebook × parameter values × seed."""
    return [Job(Path(nb), dict(zip(grid, values)), seed)
            for nb in notebooks for values in itertools.product(*grid.values()) for seed in seeds]


def execute(notebook: str, output: str, parameters: dict, env: dict) -> dict:
    """One run, inside a Ray worker: papermill executes the notebook in a kernel that inherits ``env``.

    A failing cell is an answer, not an exception: ``{"ok": False, "error": {...}}``; only the death of the
    worker itself reaches the driver, as a Ray error. The staged ledger lines come back with the answer, so the
    driver needs no file system shared with the worker. Uses nothing from eva_utils: Ray ships this function to
    the workers by value, so they import papermill, not the package and torch (the kernel does that).
    """
    import papermill as pm

    saved = {key: os.environ.get(key) for key in env}
    os.environ.update(env)  # the kernel papermill starts inherits the worker's environment
    t0, error = time.perf_counter(), None
    try:
        pm.execute_notebook(notebook, output, parameters=parameters, cwd=str(Path(notebook).parent),
                            kernel_name="python3", progress_bar=False)
    except pm.PapermillExecutionError as err:
        error = {"cell": err.exec_count, "ename": err.ename, "evalue": err.evalue}
    except Exception as err:  # the kernel died or did not start, a timeout, ...
        error = {"cell": None, "ename": type(err).__name__, "evalue": (str(err).strip().splitlines() or [""])[0]}
    finally:
        for key, value in saved.items():
            os.environ.pop(key) if value is None else os.environ.__setitem__(key, value)
    staged = Path(env["EVA_LEDGER"])
    lines = staged.read_text().splitlines() if error is None and staged.exists() else []
    return {"ok": error is None, "seconds": time.perf_counter() - t0, "error": error,
            "entries": [json.loads(line) for line in lines if line.strip()]}


@contextlib.contextmanager
def _interrupt_held(then_raise: bool = True):
    """Hold a Ctrl-C until the block is done (then raise it, or drop it): a ledger append is never cut short."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    caught = []
    previous = signal.signal(signal.SIGINT, lambda *_: caught.append(True))
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)
    if caught and then_raise:
        raise KeyboardInterrupt


def _failure(job: Job, outcome: dict, out: Path) -> str:
    err = outcome["error"]
    where = f"cell [{err['cell']}] " if err.get("cell") is not None else ""
    return (f"FAILED {job}: {where}{err['ename']}: {err['evalue']}\n"
            f"       executed copy: {config.shown_path(out / (job.name + '.ipynb'))}")


def run_sweep(notebooks, seeds, grid: dict | None = None, mode: str = "smoke", cpus_per_run: float = 1,
              gpus_per_run: float | None = None, address: str | None = None, output_dir: Path | None = None) -> int:
    """Run the sweep; 0 if every run succeeded, 1 if one failed, 130 after Ctrl-C, 2 if it could not start."""
    address = address or os.environ.get("RAY_ADDRESS")
    address = None if address == "local" else address
    if address:
        parallel.token_auth()
    ray = parallel.import_ray()
    if ray is None:
        print(INSTALL, file=sys.stderr)
        return 2
    grid = dict(grid or {})
    if {"MODE", "SEED"} & set(grid):
        raise SystemExit("eva sweep: choose the mode with --smoke or --full and the seeds with --seeds, not -p")
    missing = [p for p in notebooks if not Path(p).is_file()]
    if missing:
        raise SystemExit(f"eva sweep: no such notebook: {', '.join(map(str, missing))}")
    jobs = plan(notebooks, grid, seeds)
    sweep_id = f"{time.strftime('%Y%m%d-%H%M')}-{secrets.token_hex(2)}"
    out = Path(output_dir or (config.project_root() or Path.cwd()) / "build" / "sweeps").resolve() / sweep_id
    config.absolute_data_dir()  # kernels run in the notebooks' folder, workers wherever Ray put them
    # A cluster's workers do not inherit this process's environment: its EVA_* settings travel with each task.
    env = {key: value for key, value in os.environ.items() if key.startswith("EVA_")}
    if env.get("EVA_RESULTS_DIR"):
        env["EVA_RESULTS_DIR"] = str(Path(env["EVA_RESULTS_DIR"]).resolve())
    threads = str(max(1, int(cpus_per_run)))
    env.update(EVA_MODE=mode, EVA_PROGRESS="0", EVA_SWEEP=sweep_id, OMP_NUM_THREADS=threads, MKL_NUM_THREADS=threads)

    started_here = not ray.is_initialized()
    try:
        where = parallel.connect(ray, address) if started_here else "the running Ray session"
    except Exception as err:  # ConnectionError, an authentication error, ...
        print(f"eva sweep: could not start or join Ray: {type(err).__name__}: {err}", file=sys.stderr)
        return 2
    finished, recorded, t0 = [], [], time.perf_counter()
    try:
        cpus, gpus = ray.cluster_resources().get("CPU", 0), ray.cluster_resources().get("GPU", 0)
        if gpus_per_run is None:
            gpus_per_run = 1 if mode == "full" and gpus >= 1 else 0
        if cpus_per_run > cpus or gpus_per_run > gpus:  # Ray would queue such a task forever
            print(f"eva sweep: a run asks for {cpus_per_run:g} CPUs and {gpus_per_run:g} GPUs; the cluster has "
                  f"{cpus:g} and {gpus:g}", file=sys.stderr)
            return 2
        at_once = int(min(cpus // cpus_per_run, gpus // gpus_per_run if gpus_per_run else float("inf")))
        print(f"sweep {sweep_id}: {len(jobs)} {mode} runs on {where} ({cpus:g} CPUs, {gpus:g} GPUs; "
              f"{cpus_per_run:g} CPU + {gpus_per_run:g} GPU per run: {at_once} at once)\n"
              f"executed notebooks: {config.shown_path(out)}", flush=True)
        out.mkdir(parents=True)
        ray.cloudpickle.register_pickle_by_value(sys.modules[__name__])  # see execute()
        task = ray.remote(execute).options(num_cpus=cpus_per_run, num_gpus=gpus_per_run, max_retries=0)
        pending = {}  # each run's task -> its job
        for job in jobs:
            staged = {**env, "EVA_LEDGER": str(out / f"{job.name}.jsonl"),  # its own ledger lines and checkpoints:
                      "EVA_CHECKPOINT_DIR": str(out / f"{job.name}-checkpoints")}  # runs share no file
            parameters = {**job.params, "SEED": job.seed}
            pending[task.remote(str(job.notebook.resolve()), str(out / f"{job.name}.ipynb"), parameters, staged)] = job
        try:
            while pending:
                [ref], _ = ray.wait(list(pending), num_returns=1)
                job, outcome = pending.pop(ref), _outcome(ray, ref)
                with _interrupt_held():  # the run's lines and its bookkeeping, whole
                    if outcome["ok"]:
                        lines = [{**e, "sweep": sweep_id, "sweep_params": job.params} for e in outcome["entries"]]
                        results.append_ledger(results.ledger_path(mode), lines)  # under the ledger's file lock
                        recorded += lines
                    finished.append((job, outcome))
                status = (f"ok  {job}  ({outcome['seconds']:.0f} s, {len(outcome['entries'])} ledger line(s))"
                          if outcome["ok"] else _failure(job, outcome, out))
                print(f"[{len(finished)}/{len(jobs)}] {status}", flush=True)
        except KeyboardInterrupt:
            with _interrupt_held(then_raise=False):  # a second Ctrl-C must not cut the clean-up short
                for ref in pending:
                    ray.cancel(ref, force=True)
                print(f"\ninterrupted: cancelled {len(pending)} unfinished run(s); the {len(finished)} finished "
                      "run(s) are recorded", flush=True)
    finally:
        if started_here:
            ray.shutdown()
    failed = [(job, o) for job, o in finished if not o["ok"]]
    print(f"\nsweep {sweep_id}: {len(finished) - len(failed)} of {len(jobs)} runs succeeded, {len(failed)} failed, "
          f"in {time.perf_counter() - t0:.0f} s")
    for job, outcome in failed:
        print(_failure(job, outcome, out))
    if recorded:
        print(sweep_table(recorded))
        (out / "summary.md").write_text(sweep_table(recorded, markdown=True) + "\n")
        print(f"ledger: {config.shown_path(results.ledger_path(mode))} ({len(recorded)} line(s) with \"sweep\": "
              f"\"{sweep_id}\"); again: eva results --sweep {sweep_id}{' --smoke' if mode == 'smoke' else ''}")
    return 130 if len(finished) < len(jobs) else 1 if failed else 0  # runs left unfinished: interrupted


def _outcome(ray, ref) -> dict:
    """What ``execute`` answered, or the Ray error of a worker that died (killed, out of memory) or a lost node."""
    try:
        return ray.get(ref)
    except ray.exceptions.RayError as err:
        text = str(err).strip().splitlines()
        return {"ok": False, "seconds": None, "entries": [],
                "error": {"cell": None, "ename": type(err).__name__, "evalue": text[0] if text else ""}}


def show(sweep_id: str, markdown: bool = False, smoke: bool = False) -> int:
    """``eva results --sweep ID``: the summary of a sweep, from the ledger."""
    path = results.ledger_path("smoke" if smoke else "full")
    entries = [e for e in results.read_ledger(path) if e.get("sweep") == sweep_id]
    if not entries:
        print(f"no run of sweep {sweep_id} in {config.shown_path(path)}"
              + ("" if smoke else " (for a smoke sweep, add --smoke)"), file=sys.stderr)
        return 1
    print(sweep_table(entries, markdown))
    return 0


def add_arguments(parser) -> None:
    """The ``eva sweep`` command line."""
    parser.add_argument("notebooks", nargs="+")
    parser.add_argument("--seeds", default="1", help="1-10, 1,3,5 or 4 (default: 1)")
    parser.add_argument("-p", "--parameter", nargs=2, action="append", default=[], metavar=("NAME", "VALUES"),
                        help="a parameter and its comma-separated values: -p LR 0.01,0.05")
    how = parser.add_mutually_exclusive_group()
    how.add_argument("--smoke", dest="mode", action="store_const", const="smoke", help="tiny subset, 1 epoch (default)")
    how.add_argument("--full", dest="mode", action="store_const", const="full", help="the real runs")
    parser.add_argument("--cpus-per-run", type=float, default=1, help="cores (and threads) per run (default 1)")
    parser.add_argument("--gpus-per-run", type=float, help="GPU share per run, e.g. 0.25: four runs per GPU "
                        "(default: 1 in a full sweep when the cluster has GPUs, else 0)")
    parser.add_argument("--address", help="join this Ray cluster (default $RAY_ADDRESS; without: start Ray here)")
    parser.add_argument("--output-dir", type=Path, help="folder of the sweep folders (default build/sweeps)")


def main(args) -> int:
    try:
        seeds = parse_seeds(args.seeds)
    except ValueError as err:
        raise SystemExit(f"eva sweep: {err}") from None
    grid = {name: parse_values(values) for name, values in args.parameter}
    return run_sweep(args.notebooks, seeds, grid, args.mode or "smoke", args.cpus_per_run, args.gpus_per_run,
                     args.address, args.output_dir)
