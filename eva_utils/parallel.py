"""Several seeds of one training run at once: ``eva.map_seeds(train, seeds)``.

One run is not a result: a recipe that holds on the seed it was tuned on may miss on the next. The honest
report is N seeds, mean ± std. Training them one after another wastes a machine with several cores (a small
MNIST net keeps one core busy) or a GPU (it keeps a fraction of one busy), so ``map_seeds`` hands each seed to a
**Ray** task, as many at once as the machine has cores (``cpus_per_run`` each, a GPU fraction with
``gpus_per_run``), and returns ``{seed: result}`` in seed order::

    final = eva.map_seeds(lambda seed: train_step("final", seed=seed), range(1, 11))

Each task runs in its own worker process with ``cpus_per_run`` threads, so a CPU run is exactly the run it
would have been alone (same seed, same numbers). Ledger lines written by the tasks go through the locked
append of ``results``. Without Ray (``pip install "ray>=2.9"``), or in a smoke run, the seeds run one after
another in this process: the same results, only slower.
"""
from __future__ import annotations

import os

from . import config


def _one(fn, seed, threads, env):
    import torch

    os.environ.update(env)  # a cluster's workers do not inherit this process's environment
    torch.set_num_threads(threads)
    return fn(seed)


def map_seeds(fn, seeds, cpus_per_run: int = 1, gpus_per_run: float = 0.0, address: str | None = None) -> dict:
    """``{seed: fn(seed)}`` for every seed, several at once on Ray when it is installed (see the module doc)."""
    from . import sweep  # how to start or join Ray: one place, shared with `eva sweep`

    seeds = list(seeds)
    address = address or os.environ.get("RAY_ADDRESS")
    address = None if address == "local" else address
    if address:
        sweep._token_auth()
    ray = sweep.import_ray()
    if ray is None or config.is_smoke() or len(seeds) < 2:
        if ray is None and not config.is_smoke():
            print(f"(Ray is not installed: the {len(seeds)} seeds run one after another)")
        return {seed: fn(seed) for seed in seeds}
    started = not ray.is_initialized()
    if started:
        sweep._connect(ray, address)
    env = {key: value for key, value in os.environ.items() if key.startswith("EVA_")}
    try:
        task = ray.remote(num_cpus=cpus_per_run, num_gpus=gpus_per_run, max_retries=0)(_one)
        refs = [task.remote(fn, seed, cpus_per_run, env) for seed in seeds]
        return dict(zip(seeds, ray.get(refs)))
    finally:
        if started:
            ray.shutdown()
