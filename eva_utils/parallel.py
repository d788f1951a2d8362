"""Several seeds of one training run at once: ``eva.map_seeds(train, seeds)``.

One run is not a result: a recipe that holds on the seed it was tuned on may miss on the next. The honest
report is N seeds, mean ± std. Training them one after another wastes a machine with several cores (a small
MNIST net keeps one core busy) or a GPU (it keeps a fraction of one busy), so ``map_seeds`` hands each seed to a
**Ray** task, as many at once as the machine has cores (``cpus_per_run`` each, a GPU fraction with
``gpus_per_run``), and returns ``{seed: result}`` in seed order::

    final = eva.map_seeds(lambda seed: train_step("final", seed=seed), range(1, 11))

Each task runs in its own worker process with ``cpus_per_run`` threads, so a CPU run is exactly the run it
would have been alone with that many threads (same seed, same numbers; another thread count sums in another
order and changes the last digits). Ledger lines written by the tasks go through the locked append of
``results``. Without Ray (``pip install "ray>=2.9"``), or in a smoke run, the seeds run one after another in
this process: the same results, only slower. How to start or join Ray is here too, shared with ``eva sweep``.
"""
from __future__ import annotations

import logging
import os
from pathlib import Path

from . import config


def connect(ray, address: str | None) -> str:
    """Join the cluster at ``address``, else start Ray here with this machine's cores and GPUs."""
    # "error": in a Jupyter kernel Ray's warnings (token auth on by default, ipywidgets missing) would land in a
    # lesson's outputs; the runs' own failures still come back as exceptions.
    quiet = dict(log_to_driver=False, logging_level="error")
    if address:
        ray.init(address=address, **quiet)
        return f"the Ray cluster at {address}"
    ray.init(address="local", include_dashboard=False, **quiet)  # "local": never some other cluster found in /tmp
    return "Ray on this machine"


def import_ray():
    """``import ray``, or None without it. Imported in a Jupyter kernel, Ray logs a hint about ipywidgets (its
    rich display), which would land in a lesson's outputs: that one logger is raised to warnings first."""
    logging.getLogger("ray.widgets.util").setLevel(logging.WARNING)
    try:
        import ray
    except ImportError:
        return None
    return ray


def token_auth() -> None:
    """``ray start --head`` guards its cluster with the token it saved in ~/.ray/auth_token, but Ray sends a token to
    an explicit address only in token mode, which must be set before Ray is imported (else it retries forever)."""
    if "RAY_AUTH_MODE" not in os.environ and (os.environ.get("RAY_AUTH_TOKEN") or os.environ.get("RAY_AUTH_TOKEN_PATH")
                                              or (Path.home() / ".ray" / "auth_token").is_file()):
        os.environ["RAY_AUTH_MODE"] = "token"  # works with a cluster without authentication too


def _one(fn, seed, threads, env):
    import torch

    os.environ.update(env)  # a cluster's workers do not inherit this process's environment
    torch.set_num_threads(threads)
    return fn(seed)


def map_seeds(fn, seeds, cpus_per_run: int = 1, gpus_per_run: float = 0.0, address: str | None = None) -> dict:
    """``{seed: fn(seed)}`` for every seed, several at once on Ray when it is installed (see the module doc)."""
    seeds = list(seeds)
    address = address or os.environ.get("RAY_ADDRESS")
    address = None if address == "local" else address
    if address:
        token_auth()
    ray = import_ray()
    if ray is None or config.is_smoke() or len(seeds) < 2:
        if ray is None and not config.is_smoke():
            print(f"(Ray is not installed: the {len(seeds)} seeds run one after another)")
        return {seed: fn(seed) for seed in seeds}
    started = not ray.is_initialized()
    if started:
        connect(ray, address)
    env = {key: value for key, value in os.environ.items() if key.startswith("EVA_")}
    try:
        task = ray.remote(num_cpus=cpus_per_run, num_gpus=gpus_per_run, max_retries=0)(_one)
        refs = [task.remote(fn, seed, cpus_per_run, env) for seed in seeds]
        return dict(zip(seeds, ray.get(refs)))
    finally:
        if started:
            ray.shutdown()
