"""Everything pytest runs is a smoke run: tiny data subsets, 1 epoch, CPU, no progress bars.

The notebooks executed by nbval run in kernels that inherit this environment.
"""
import os

from eva_utils.config import absolute_data_dir

os.environ["EVA_MODE"] = "smoke"
os.environ["EVA_PROGRESS"] = "0"
os.environ.setdefault("MPLBACKEND", "Agg")
absolute_data_dir()  # notebook kernels run inside notebooks/
