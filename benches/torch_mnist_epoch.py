"""PyTorch's side of the README's main job on the CPU path: LeNet-5 on the full
MNIST in data/mnist, one epoch, batch 64, SGD lr 0.01 momentum 0.9, pixels / 255,
shuffled; prints the training time of the epoch and the test accuracy, as
`cargo run --release --example train_mnist -- --device cpu` does.

    python3 benches/torch_mnist_epoch.py [--threads 2]
"""
import argparse
import gzip
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F


def idx(path):
    with gzip.open(path, "rb") as f:
        data = f.read()
    dims = data[3]
    shape = [int.from_bytes(data[4 + 4 * i:8 + 4 * i], "big") for i in range(dims)]
    return np.frombuffer(data, dtype=np.uint8, offset=4 + 4 * dims).reshape(shape)


class LeNet5(nn.Module):
    def __init__(self):
        super().__init__()
        self.c1 = nn.Conv2d(1, 6, 5, padding=2)
        self.c2 = nn.Conv2d(6, 16, 5)
        self.f1 = nn.Linear(400, 120)
        self.f2 = nn.Linear(120, 84)
        self.f3 = nn.Linear(84, 10)

    def forward(self, x):
        x = F.max_pool2d(F.relu(self.c1(x)), 2)
        x = F.max_pool2d(F.relu(self.c2(x)), 2)
        x = x.flatten(1)
        return self.f3(F.relu(self.f2(F.relu(self.f1(x)))))


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--data", default=str(Path(__file__).resolve().parent.parent / "data" / "mnist"))
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    d = Path(args.data)
    x = torch.from_numpy(idx(d / "train-images-idx3-ubyte.gz").astype(np.float32) / 255.0).unsqueeze(1)
    y = torch.from_numpy(idx(d / "train-labels-idx1-ubyte.gz").astype(np.int64))
    xt = torch.from_numpy(idx(d / "t10k-images-idx3-ubyte.gz").astype(np.float32) / 255.0).unsqueeze(1)
    yt = torch.from_numpy(idx(d / "t10k-labels-idx1-ubyte.gz").astype(np.int64))
    model = LeNet5()
    opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    perm = torch.randperm(len(x))
    t = time.perf_counter()
    for i in range(0, len(x), 64):
        b = perm[i:i + 64]
        loss = F.cross_entropy(model(x[b]), y[b])
        opt.zero_grad()
        loss.backward()
        opt.step()
    train_s = time.perf_counter() - t
    with torch.no_grad():
        acc = (model(xt).argmax(1) == yt).float().mean().item() * 100
    print(f"torch-cpu LeNet-5 epoch: {train_s:.2f} s ({len(x) / train_s:.0f} images/s), test accuracy {acc:.2f}%")


if __name__ == "__main__":
    main()
