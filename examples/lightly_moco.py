"""MoCo v2 written as in Lightly's documentation, pruned by SyncCP: the only solo-sparse line is the callback.

    python examples/lightly_moco.py --data data/fmnist1k/train --epochs 10

Lightly's MoCo updates its momentum encoder itself (``update_momentum`` at the start of ``training_step``); the
callback re-applies the momentum masks before the momentum forward and after every batch, so both encoders stay as
sparse as SyncCP says (online 0.1, momentum 0.1 + its density gap). The query sees view 0 and the key view 1 (an
asymmetric step): fine for weight sparsity, which does not depend on the view; a gating plugin would need
``crop_order="context"`` and ``with crop(self, i):`` around each forward (see lightly_simclr.py).
"""
import copy

import pytorch_lightning as pl
import torch
import torchvision
from _data import dataloader, parse_args
from lightly.loss import NTXentLoss
from lightly.models.modules import MoCoProjectionHead
from lightly.models.utils import deactivate_requires_grad, update_momentum
from lightly.transforms.moco_transform import MoCoV2Transform
from lightly.utils.scheduler import cosine_schedule
from torch import nn

from solo_sparse.lightning import Sparsify


class MoCo(pl.LightningModule):
    def __init__(self):
        super().__init__()
        resnet = torchvision.models.resnet18()
        self.backbone = nn.Sequential(*list(resnet.children())[:-1])
        self.projection_head = MoCoProjectionHead(512, 512, 128)

        self.backbone_momentum = copy.deepcopy(self.backbone)
        self.projection_head_momentum = copy.deepcopy(self.projection_head)

        deactivate_requires_grad(self.backbone_momentum)
        deactivate_requires_grad(self.projection_head_momentum)

        self.criterion = NTXentLoss(memory_bank_size=(4096, 128))

    def forward(self, x):
        query = self.backbone(x).flatten(start_dim=1)
        query = self.projection_head(query)
        return query

    def forward_momentum(self, x):
        key = self.backbone_momentum(x).flatten(start_dim=1)
        key = self.projection_head_momentum(key).detach()
        return key

    def training_step(self, batch, batch_idx):
        momentum = cosine_schedule(self.current_epoch, 10, 0.996, 1)
        update_momentum(self.backbone, self.backbone_momentum, m=momentum)
        update_momentum(self.projection_head, self.projection_head_momentum, m=momentum)
        x_query, x_key = batch[0]
        query = self.forward(x_query)
        key = self.forward_momentum(x_key)
        loss = self.criterion(query, key)
        return loss

    def configure_optimizers(self):
        optim = torch.optim.SGD(self.parameters(), lr=0.06)
        return optim


if __name__ == "__main__":
    args = parse_args(__doc__)
    model = MoCo()
    transform = MoCoV2Transform(input_size=args.input_size)
    trainer = pl.Trainer(max_epochs=args.epochs, max_steps=args.max_steps, accelerator="auto", devices=1,
                         callbacks=[Sparsify("synccp", final_density=0.1)])          # <- the solo-sparse line
    trainer.fit(model=model, train_dataloaders=dataloader(args, transform))
