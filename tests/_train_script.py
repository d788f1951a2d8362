"""Helper for test_train: one small seeded training run, optionally killed after an epoch or resumed.

Usage: python _train_script.py CHECKPOINT OUT.pt {plain|kill-after-2|resume}
"""
import os
import signal
import sys

import numpy as np
import torch
import torch.nn as nn

import eva_utils as eva
from eva_utils import augment, data

torch.set_num_threads(1)
checkpoint, out, how = sys.argv[1], sys.argv[2], sys.argv[3]
eva.seed_everything(7)
rng = np.random.default_rng(0)
labels = np.arange(192) % 4
images = (rng.random((192, 32, 32, 3)) * 60 + labels[:, None, None, None] * 45).astype(np.uint8)
train_set = data.ArrayDataset(images, labels, augment.cifar_train())  # random crop/flip/cutout: RNG matters
test_set = data.ArrayDataset(images[:64], labels[:64], augment.cifar_test())
train_loader, test_loader = data.loaders(train_set, test_set, 32, "cpu")
model = nn.Sequential(nn.Conv2d(3, 8, 3), nn.BatchNorm2d(8), nn.ReLU(), nn.Dropout(0.2),
                      nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8, 4))
optimizer = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
scheduler = torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=0.1, epochs=4, steps_per_epoch=len(train_loader))


def kill_after_2(epoch, history):
    if epoch == 2:
        os.kill(os.getpid(), signal.SIGKILL)  # as abrupt as a Colab disconnect


history = eva.fit(model, train_loader, test_loader, optimizer, 4, scheduler=scheduler, scheduler_step="batch",
                  device="cpu", checkpoint=None if how == "plain" else checkpoint, resume=how == "resume",
                  on_epoch_end=kill_after_2 if how == "kill-after-2" else None)
torch.save({"history": history.to_dict(), "model": model.state_dict()}, out)
