"""BYOL written as in Lightly's documentation, pruned by gradual magnitude pruning (both encoders share the masks).

    python examples/lightly_byol.py --data data/fmnist1k/train --epochs 10

The schedule runs in optimizer steps or fractions of training (``start="10%"``, ``end="75%"``); ``solo-sparse
plugins`` lists every plugin's keys. The checkpoint Lightning writes carries the masks and the plugin state
(``checkpoint["solo_sparse"]``): ``solo_sparse.tools.evaluate.load_backbone(path)`` loads its backbone as a
torchvision ResNet-18 with the masks applied, ``scripts/build_zoo.py --checkpoint`` packs it into the zoo, and
``Trainer.fit(..., ckpt_path=path)`` resumes it exactly.
"""
import copy

import pytorch_lightning as pl
import torch
import torchvision
from _data import dataloader, parse_args
from lightly.loss import NegativeCosineSimilarity
from lightly.models.modules import BYOLPredictionHead, BYOLProjectionHead
from lightly.models.utils import deactivate_requires_grad, update_momentum
from lightly.transforms.byol_transform import BYOLTransform, BYOLView1Transform, BYOLView2Transform
from lightly.utils.scheduler import cosine_schedule
from torch import nn

from solo_sparse.lightning import Sparsify


class BYOL(pl.LightningModule):
    def __init__(self):
        super().__init__()
        resnet = torchvision.models.resnet18()
        self.backbone = nn.Sequential(*list(resnet.children())[:-1])
        self.projection_head = BYOLProjectionHead(512, 1024, 256)
        self.prediction_head = BYOLPredictionHead(256, 1024, 256)

        self.backbone_momentum = copy.deepcopy(self.backbone)
        self.projection_head_momentum = copy.deepcopy(self.projection_head)

        deactivate_requires_grad(self.backbone_momentum)
        deactivate_requires_grad(self.projection_head_momentum)

        self.criterion = NegativeCosineSimilarity()

    def forward(self, x):
        y = self.backbone(x).flatten(start_dim=1)
        z = self.projection_head(y)
        p = self.prediction_head(z)
        return p

    def forward_momentum(self, x):
        y = self.backbone_momentum(x).flatten(start_dim=1)
        z = self.projection_head_momentum(y)
        z = z.detach()
        return z

    def training_step(self, batch, batch_idx):
        momentum = cosine_schedule(self.current_epoch, 10, 0.996, 1)
        update_momentum(self.backbone, self.backbone_momentum, m=momentum)
        update_momentum(self.projection_head, self.projection_head_momentum, m=momentum)
        (x0, x1) = batch[0]
        p0 = self.forward(x0)
        z0 = self.forward_momentum(x0)
        p1 = self.forward(x1)
        z1 = self.forward_momentum(x1)
        loss = 0.5 * (self.criterion(p0, z1) + self.criterion(p1, z0))
        return loss

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.06)


if __name__ == "__main__":
    args = parse_args(__doc__)
    model = BYOL()
    transform = BYOLTransform(view_1_transform=BYOLView1Transform(input_size=args.input_size),
                              view_2_transform=BYOLView2Transform(input_size=args.input_size))
    trainer = pl.Trainer(max_epochs=args.epochs, max_steps=args.max_steps, accelerator="auto", devices=1,
                         callbacks=[Sparsify("gmp", final_density=0.1, start="10%", end="75%")])  # <- the line
    trainer.fit(model=model, train_dataloaders=dataloader(args, transform))
