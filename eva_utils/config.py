"""Run configuration: which mode, where the data lives, which device, which seed.

Every notebook of the course runs in one of two modes:

* ``full``  - the real course run (the default for a student). Only full runs are results.
* ``smoke`` - a tiny, fixed subset of the data and a single epoch, on the CPU, offline.
  It checks that the notebook *runs*; its numbers are never presented as results.
  The test suite sets ``EVA_MODE=smoke`` for every notebook it executes.

Everything a smoke run does differently lives in the package, never in a lesson cell:
``data`` cuts each split to a small class-balanced subset, ``fit`` trains 1 epoch without
checkpoints, ``get_device`` picks the CPU, ``transfer`` never downloads, and ``eva.start``
shrinks the few parameters listed in ``SMOKE_PARAMETERS`` (nets too big for a CPU check).

The mode comes from the ``EVA_MODE`` environment variable unless a notebook passes
it explicitly. Data is read from ``EVA_DATA_DIR`` (default ``./data``).
"""
from __future__ import annotations

import contextlib
import datetime as dt
import os
import random
from pathlib import Path

import numpy as np
import torch

MODES = ("full", "smoke")

#: Parameters a smoke run of a notebook replaces (``eva.start`` sets them in the notebook, after its parameters cell,
#: as ``eva run -p NAME VALUE`` would): the nets of these notebooks are too big to check on a CPU at full size.
SMOKE_PARAMETERS = {
    "12_cifar100_ablation": {"WIDTH": 4},  # BaseNet at 4-8-16-32 channels: 1/256 of the arithmetic
    "13_transfer_learning": {"IMAGE_SIZE": 64},  # ResNet-18 on 64-pixel images: 1/12 of the arithmetic
    # the 6.6M-parameter net at full size: one seed, batches of 64, a 6-batch range test, one peak in the check
    "14_custom_resnet": {"SEEDS": (1,), "BATCH_SIZE": 64, "LR_TEST_ITERS": 6, "COMPARE_FACTORS": (1,)},
    # an 8-channel net, batches of 64, one epoch per row, 2 final runs
    "15_fast_cifar10": {"WIDTH": 8, "BATCH_SIZE": 64, "EPOCHS": 1, "SPEED_EPOCHS": 1, "RUNS": 2},
}
_seed: int | None = None  # the last seed_everything() seed: names the automatic checkpoints


def mode(requested: str | None = None) -> str:
    """Return the run mode: ``requested`` if given, else ``$EVA_MODE``, else ``"full"``."""
    value = (requested or os.environ.get("EVA_MODE") or "full").strip().lower()
    if value not in MODES:
        raise ValueError(f"Unknown run mode {value!r}: use one of {MODES} (set EVA_MODE or pass mode=...)")
    return value


def is_smoke(requested: str | None = None) -> bool:
    return mode(requested) == "smoke"


def epochs(full: int) -> int:
    """The epochs a training run really does: ``full`` in a full run, 1 in a smoke run."""
    return 1 if is_smoke() else full


def needs_gpu() -> bool:
    """Whether the running notebook declared that it needs a GPU (``eva.start(..., needs_gpu=True)``)."""
    return os.environ.get("EVA_NEEDS_GPU") == "1"


def progress_bars() -> bool:
    """Progress bars, unless ``EVA_PROGRESS=0`` (``eva run`` sets it: bars are noise in a saved notebook)."""
    return os.environ.get("EVA_PROGRESS", "1") != "0"


def now() -> str:
    """The current UTC time, ISO 8601 to the second: the ledger's timestamps."""
    return dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")


def duration(seconds: float) -> str:
    """A wall time as the Result block, the README table and ``eva.compare`` show it: ``27 min 09 s`` or ``8.6 s``."""
    m, s = divmod(int(round(seconds)), 60)
    return f"{m} min {s:02d} s" if m else f"{seconds:.1f} s"


def shown_path(path) -> str:
    """A path as printed in a notebook's outputs: relative to the repository, ``$EVA_DATA_DIR`` or ``~``.

    Committed outputs must not carry one machine's absolute paths.
    """
    path = Path(path)
    bases = [(project_root(), ""), (data_dir().resolve() if os.environ.get("EVA_DATA_DIR") else None, "$EVA_DATA_DIR/"),
             (Path.home(), "~/")]
    for base, prefix in bases:
        if base is None:
            continue
        try:
            inside = path.resolve().relative_to(base.resolve())
        except ValueError:
            continue
        return prefix + str(inside) if inside.parts else prefix.rstrip("/") or "."  # the base itself: "$EVA_DATA_DIR"
    return str(path)


def project_root(start: Path | None = None) -> Path | None:
    """The course repository containing ``start`` (or the working directory), if any."""
    here = (start or Path.cwd()).resolve()
    for folder in (here, *here.parents):
        if (folder / "pyproject.toml").exists() and (folder / "eva_utils").is_dir():
            return folder
    return None


def data_dir() -> Path:
    """Root folder of the datasets: ``$EVA_DATA_DIR``, else ``<repo>/data``, else ``./data`` (e.g. on Colab).

    ``eva run`` and the test suite turn a relative ``EVA_DATA_DIR`` into an absolute one
    before starting notebook kernels, which run inside ``notebooks/``.
    """
    if os.environ.get("EVA_DATA_DIR"):
        return Path(os.environ["EVA_DATA_DIR"]).expanduser()
    root = project_root()
    return (root / "data") if root else Path("data")


def absolute_data_dir() -> None:
    """Make ``$EVA_DATA_DIR`` absolute, so that child processes in other folders see the same data."""
    if os.environ.get("EVA_DATA_DIR"):
        os.environ["EVA_DATA_DIR"] = str(Path(os.environ["EVA_DATA_DIR"]).expanduser().resolve())


def get_device(requested: str | None = None) -> torch.device:
    """The best available device: CUDA, then Apple's MPS, then the CPU.

    Smoke runs always use the CPU so that they behave the same everywhere.
    ``$EVA_DEVICE`` (or ``requested``) forces a device, e.g. ``cpu``.
    """
    choice = requested or os.environ.get("EVA_DEVICE")
    if choice:
        return torch.device(choice)
    if is_smoke():
        return torch.device("cpu")
    if torch.cuda.is_available():
        return torch.device("cuda")
    mps = getattr(torch.backends, "mps", None)
    if mps is not None and mps.is_available():
        return torch.device("mps")
    return torch.device("cpu")


def device_name(device: torch.device) -> str:
    """A human-readable device name for logs and the ledger (e.g. ``cuda (Tesla T4)``)."""
    device = torch.device(device)
    if device.type == "cuda":
        return f"cuda ({torch.cuda.get_device_name(device)})"
    if device.type == "cpu":
        return f"cpu ({torch.get_num_threads()} threads)"
    return device.type


def synchronize(device) -> None:
    """Wait until ``device`` has finished its queued work (CUDA calls return at once); a no-op elsewhere.

    Read a clock only after this, or a GPU timing measures how fast the work was *queued*.
    """
    device = torch.device(device)
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def seed_everything(seed: int) -> int:
    """Seed Python, NumPy and PyTorch (CPU and every GPU) so a run can be repeated.

    cuDNN is left in its fast, non-deterministic mode: on a GPU two runs with the
    same seed agree to within a few hundredths of a percent, not bit for bit.
    """
    global _seed
    _seed = seed
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
    if torch.cuda.is_available():
        torch.cuda.manual_seed_all(seed)
    return seed


def current_seed() -> int | None:
    """The seed of the last ``seed_everything`` call (``None`` before any)."""
    return _seed


def loader_settings(device: torch.device) -> dict:
    """DataLoader settings that suit the device.

    On a GPU, two worker processes prepare batches while the GPU computes, and pinned
    memory makes host-to-GPU copies faster. On the CPU the workers would only steal
    cores from the computation, so the data is prepared in the main process.
    Workers are not persistent: they are re-created each epoch so they pick up the
    augmentation seed of that epoch (see ``data.ArrayDataset.reseed``).

    The *training* batch size is deliberately not chosen here: it changes the
    optimisation (the number of steps, the noise of each gradient), so a notebook
    keeps its ``BATCH_SIZE`` on every device and a CPU run and a Colab GPU run of it
    are the same experiment. Only the evaluation batch, which changes no number, grows
    with the device (``eval_batch_size``).
    """
    device = torch.device(device)
    on_gpu = device.type == "cuda"
    return {"num_workers": min(2, os.cpu_count() or 1) if on_gpu else 0, "pin_memory": on_gpu}


def eval_batch_size(device, train_batch_size: int) -> int:
    """Batch size for evaluation: at least the training batch, 1024 on a GPU, 256 elsewhere.

    Evaluation keeps no gradients and BN uses its running statistics, so the batch size
    changes only the speed: a GPU is kept busy by larger batches, a CPU gains nothing
    from them but memory use.
    """
    return max(train_batch_size, 1024 if torch.device(device).type == "cuda" else 256)


@contextlib.contextmanager
def exclusive(path: Path):
    """``path`` opened for appending under an exclusive file lock: one process at a time (ledger appends, the MNIST
    extraction of runs that start together)."""
    import fcntl

    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("a") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield f
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)
