"""CIFAR-10 epoch time of notebook 14's CustomResNet (6,573,130 parameters): where does the time go?

    python benchmarks/resnet_epoch.py [--device cpu|cuda] [--batch-size B] [--batches N] [--repeats R]

Three ways to feed the same float32 training step (see _common.py for how it is measured):

* albumentations DataLoader — ``eva.augment.cifar_train()`` (pad 4 + random crop, flip, 8×8 cutout)
  per image on the CPU + ``eva.loaders`` (2 workers on a GPU, none on the CPU);
* on-device (fastdata) — the 50,000 images on the device as uint8, crop/flip/cutout per batch there;
* compute only — 4 batches made once and reused: the floor.

On a CPU the net costs seconds per batch, so the defaults are small (batch 32, 2 batches, 3 repeats)
and the epoch time is extrapolated to 50,000 images.
"""
import torch

from _common import ROOT, eva, measure, options, table, three_variants
from eva_utils.models import from_notebook


def main():
    args = options(__doc__.splitlines()[0], batch_size=512, cpu_batch_size=32, batches=30, cpu_batches=2,
                   cpu_repeats=3)
    eva.seed_everything(0)
    train = eva.cifar10(train=True, transform=eva.augment.cifar_train(), smoke=False)
    test = eva.cifar10(train=False, transform=eva.augment.cifar_test(), smoke=False)
    variants, epoch_batches = three_variants(train, test, args, preset="cifar10", premade=4)
    model = from_notebook(ROOT / "notebooks" / "14_custom_resnet.ipynb", "CustomResNet")().to(args.device)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9, nesterov=True)
    measure(variants, model, optimizer, args.device, args.batches, args.repeats, args.warmup)
    print(table(f"CIFAR-10 epoch, CustomResNet ({eva.count_params(model):,} params), float32", variants, epoch_batches,
                args))


if __name__ == "__main__":
    main()
