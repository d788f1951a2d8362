"""MNIST epoch time of notebook 09's Code9 net (13,828 parameters, rotation ±7°): where does the time go?

    python benchmarks/mnist_epoch.py [--device cpu|cuda] [--batches N] [--repeats R]

Three ways to feed the same training step (see _common.py for how it is measured):

* albumentations DataLoader — ``eva.mnist(transform=eva.augment.mnist_train())`` + ``eva.loaders``:
  each image rotated by OpenCV on the CPU, one at a time, then collated (the course's default);
* on-device (fastdata) — all 60,000 digits on the device as uint8, a batch rotated at once with
  ``affine_grid``/``grid_sample`` (``eva_utils.fastdata``);
* compute only — 8 batches made once and reused: no data work at all, the floor.

The net is read from notebooks/09_augmentation.ipynb, not copied. Data: ``$EVA_DATA_DIR``.
"""
import torch

from _common import ROOT, eva, load_notebook_net, measure, options, table, three_variants


def main():
    args = options(__doc__.splitlines()[0], batch_size=128, cpu_batch_size=128, batches=100, cpu_batches=20)
    eva.seed_everything(0)
    Net = load_notebook_net(ROOT / "notebooks" / "09_augmentation.ipynb")
    train = eva.mnist(train=True, transform=eva.augment.mnist_train(rotate=7.0), smoke=False)
    test = eva.mnist(train=False, transform=eva.augment.mnist_test(), smoke=False)
    variants, epoch_batches = three_variants(train, test, args, preset="mnist", premade=8)
    model = Net().to(args.device)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    measure(variants, model, optimizer, args.device, args.batches, args.repeats, args.warmup)
    print(table(f"MNIST epoch, Code9 net ({eva.count_params(model):,} params), rotation ±7°", variants, epoch_batches,
                args))


if __name__ == "__main__":
    main()
