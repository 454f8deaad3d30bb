"""SimCLR written as in Lightly's documentation, with a branch-dependent plugin: SDCLR's self-damaging branch.

    python examples/lightly_simclr.py --data data/fmnist1k/train --epochs 10

SDCLR on a shared encoder forwards view 0 through the dense weights and view 1 through the same weights pruned on
the fly: the callback must know which view each backbone call is. Lightly's SimCLR calls the backbone once per view,
in view order, so ``crop_order="calls"`` says so (checked at every step). A module that forwards the views
differently wraps each forward in ``with crop(self, i):`` (``from solo_sparse.lightning import crop``) and passes
``crop_order="context"``; without either, such plugins (and the gating plugins) are refused before the first step.
"""
import pytorch_lightning as pl
import torch
import torchvision
from _data import dataloader, parse_args
from lightly.loss import NTXentLoss
from lightly.models.modules import SimCLRProjectionHead
from lightly.transforms.simclr_transform import SimCLRTransform
from torch import nn

from solo_sparse.lightning import Sparsify


class SimCLR(pl.LightningModule):
    def __init__(self):
        super().__init__()
        resnet = torchvision.models.resnet18()
        self.backbone = nn.Sequential(*list(resnet.children())[:-1])
        self.projection_head = SimCLRProjectionHead(512, 2048, 2048)
        self.criterion = NTXentLoss()

    def forward(self, x):
        x = self.backbone(x).flatten(start_dim=1)
        z = self.projection_head(x)
        return z

    def training_step(self, batch, batch_index):
        (x0, x1) = batch[0]
        z0 = self.forward(x0)
        z1 = self.forward(x1)
        loss = self.criterion(z0, z1)
        return loss

    def configure_optimizers(self):
        optim = torch.optim.SGD(self.parameters(), lr=0.06)
        return optim


if __name__ == "__main__":
    args = parse_args(__doc__)
    model = SimCLR()
    transform = SimCLRTransform(input_size=args.input_size)
    trainer = pl.Trainer(max_epochs=args.epochs, max_steps=args.max_steps, accelerator="auto", devices=1,
                         callbacks=[Sparsify("sdclr", density=0.1, crop_order="calls")])   # <- the solo-sparse line
    trainer.fit(model=model, train_dataloaders=dataloader(args, transform))
