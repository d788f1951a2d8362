"""Time to 94 % on CIFAR-10 of notebook 15's final recipe (``eva_utils.speedrun.FINAL``), on a CUDA GPU.

    python benchmarks/time_to_94.py [--runs 5] [--device cuda] [--epochs 10]
    python benchmarks/time_to_94.py --smoke        # a few batches of a tiny net on the smoke subset, any device

Each run: set-up (data to the GPU, whitening filters) + training, timed with the GPU synchronised;
testing after each epoch is not timed. A run's *time to 94 %* is set-up + training up to the first
epoch whose test accuracy reaches 94 %; the recipe's time is the mean run time when the mean final
accuracy of the runs reaches 94 % (DAWNBench style). A few untimed warm-up batches run first.
This is meant for a GPU: on a CPU one run would take about a day, so it refuses without --smoke.
"""
import argparse
import statistics
from dataclasses import replace

import torch

from _common import eva
from eva_utils import speedrun


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default=None)
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--epochs", type=int, default=None, help=f"default {speedrun.FINAL.epochs}")
    parser.add_argument("--seed", type=int, default=1, help="runs use seeds seed+1 ... seed+runs")
    parser.add_argument("--target", type=float, default=94.0)
    parser.add_argument("--smoke", action="store_true", help="a tiny check that it runs (numbers meaningless)")
    args = parser.parse_args()
    device = torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    if device.type != "cuda" and not args.smoke:
        raise SystemExit(f"time_to_94: no CUDA GPU (device {device}). The final recipe trains ~6.5M parameters "
                         "for 10 epochs of 50,000 images: hours to a day on a CPU. Run it on a GPU, or pass "
                         "--smoke for a tiny check that the code runs.")
    recipe = replace(speedrun.FINAL, epochs=args.epochs or speedrun.FINAL.epochs)
    train_set, test_set = eva.cifar10(train=True, smoke=args.smoke), eva.cifar10(train=False, smoke=args.smoke)
    max_batches = None
    if args.smoke:
        recipe, max_batches = speedrun.for_smoke(recipe), 2
        print("SMOKE: a narrow net, 2 batches per epoch, 200 images: these numbers are NOT results.")
    if device.type == "cuda":
        speedrun.warmup(recipe, train_set, test_set, device)
    runs = []
    for k in range(1, args.runs + 1):
        r = speedrun.train(recipe, train_set, test_set, device, seed=args.seed + k, target=args.target,
                           max_batches=max_batches, verbose=False)
        runs.append(r)
        reached = f"{r.time_to_target_s:8.2f}" if r.time_to_target_s is not None else f"{'-':>8}"
        print(f"run {k} (seed {args.seed + k}): final {r.final_acc:6.2f} %  set-up {r.setup_s:6.2f} s  "
              f"train {r.train_s:7.2f} s  first ≥ {args.target:g} % at {reached} s", flush=True)
    accs = [r.final_acc for r in runs]
    times = [r.setup_s + r.train_s for r in runs]
    mean_acc, mean_time = statistics.mean(accs), statistics.mean(times)
    std = statistics.stdev(accs) if len(accs) > 1 else 0.0
    print(f"\ntime to {args.target:g} % | final recipe, {recipe.epochs} epochs, batch {recipe.batch_size} | "
          f"{eva.config.device_name(device)} | torch {torch.__version__}")
    print(f"{'runs':<6} {'mean acc %':>10} {'std':>6} {'min':>7} {'max':>7} {'mean run s':>11} {'time to target':>15}")
    verdict = f"{mean_time:.2f} s" if mean_acc >= args.target else "not reached"
    print(f"{len(runs):<6} {mean_acc:10.2f} {std:6.2f} {min(accs):7.2f} {max(accs):7.2f} {mean_time:11.2f} "
          f"{verdict:>15}" + ("   (SMOKE)" if args.smoke else ""))


if __name__ == "__main__":
    main()
