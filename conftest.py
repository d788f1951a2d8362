"""Everything pytest runs is a smoke run: tiny data subsets, 1 epoch, CPU, no progress bars.

The notebooks executed by nbval run in kernels that inherit this environment.
"""
import os

from eva_utils.config import absolute_data_dir

os.environ["EVA_MODE"] = "smoke"
os.environ["EVA_PROGRESS"] = "0"
os.environ.setdefault("MPLBACKEND", "Agg")
absolute_data_dir()  # notebook kernels run inside notebooks/


import pytest  # noqa: E402


@pytest.fixture(autouse=True)
def _no_current_run_between_tests():
    """``eva.start`` makes its run current (``fit`` checkpoints under it): no test inherits another test's run."""
    from eva_utils import results

    results._current = None
    yield
    results._current = None
