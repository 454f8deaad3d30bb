"""What the three examples share: their command line and an image folder of Fashion-MNIST (or any images).

``python scripts/prepare_fashion_mnist.py --out data/fmnist1k --train-per-class 100`` makes the default folder;
Lightly's own examples use CIFAR-10 through ``torchvision.datasets`` the same way.
"""
import argparse

import torch
import torchvision


def parse_args(description):
    ap = argparse.ArgumentParser(description=description)
    ap.add_argument("--data", default="data/fmnist1k/train", help="an image folder (class sub-folders)")
    ap.add_argument("--epochs", type=int, default=10)
    ap.add_argument("--batch-size", type=int, default=128)
    ap.add_argument("--input-size", type=int, default=32)
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--max-steps", type=int, default=-1, help="stop after this many steps (a smoke run)")
    return ap.parse_args()


def dataloader(args, transform):
    dataset = torchvision.datasets.ImageFolder(args.data, transform=transform)
    return torch.utils.data.DataLoader(dataset, batch_size=args.batch_size, shuffle=True, drop_last=True,
                                       num_workers=args.workers)
