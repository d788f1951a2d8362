"""eva_utils: the plumbing of the EVA course, so that each notebook shows only what it teaches.

    import eva_utils as eva
    run = eva.start("03_lighter_model", seed=1)           # mode, seed, device
    train_set = eva.mnist(train=True, transform=eva.augment.mnist_train(rotate=0))
    history = eva.fit(model, train_loader, test_loader, optimizer, 15)  # 1 epoch in a smoke run
    run.report(history, eva.Target(test_acc=99.0), model)  # Result block + ledger line
    eva.compare({"a": history_a, "b": history_b})          # several runs: one table (and plot_history(dict))
"""
import os
import warnings

# tqdm.auto (fit's bars, torch-lr-finder, grad-cam) warns "IProgress not found" into every notebook of a Jupyter
# without ipywidgets; its bars then fall back to text and nothing is lost.
warnings.filterwarnings("ignore", message="IProgress not found")
# albumentations looks for a newer version of itself over the network at import: offline that prints a warning
# into every notebook, and a course run has no use for it.
os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")

from . import augment, config, export, fastdata, speedrun, transfer, tricks
from .claims import facts
from .compare import compare, sweep_table
from .config import get_device, loader_settings, seed_everything
from .data import DataNotFoundError, cifar10, cifar100, loaders, mnist
from .lr_finder import find_lr
from .parallel import map_seeds
from .mistakes import misclassified, per_class_accuracy, show_gradcam, show_misclassified
from .plots import plot_history, show, show_samples
from .results import Run, Target, current_run, start
from .rf import receptive_field
from .summary import count_params, model_cost, model_summary
from .train import History, TrainingDiverged, evaluate, fit

__version__ = "0.1.0"
