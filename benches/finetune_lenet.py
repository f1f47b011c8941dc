#!/usr/bin/env python3
"""The fine-tuning benchmark of issue 28, PyTorch's side, and its fixture.

1. Pretrains LeNet-5 (the zoo's layout, so the state_dict names match ours)
   in PyTorch on MNIST digits 0-5 (data/mnist), and saves it as safetensors.
2. Writes an image folder: ten training images each of digits 6-9 (MNIST
   train) and a validation split of 200 test images each.
3. Runs the recipe in PyTorch: the pretrained network with a fresh 4-class head,
   the backbone frozen, Adam; and the same network trained from scratch.
   Prints both validation accuracies (and the commands that run ours).

    python3 benches/finetune_lenet.py --out /tmp/finetune [--seed 0]
"""
import argparse
from pathlib import Path

import numpy as np
import torch
from torch import nn
from PIL import Image
from safetensors.torch import save_file

from torch_mnist_epoch import idx  # the IDX reader, beside this script

ROOT = Path(__file__).resolve().parent.parent


def lenet5(classes):
    return nn.Sequential(
        nn.Conv2d(1, 6, 5, padding=2), nn.ReLU(), nn.MaxPool2d(2),
        nn.Conv2d(6, 16, 5), nn.ReLU(), nn.MaxPool2d(2), nn.Flatten(),
        nn.Linear(16 * 5 * 5, 120), nn.ReLU(), nn.Linear(120, 84), nn.ReLU(), nn.Linear(84, classes))


def train(model, x, y, epochs, batch, lr, params, seed, unfreeze_after=None):
    """Adam over `params`; a parameter with requires_grad False is skipped (no
    state) until `unfreeze_after` epochs, when every parameter trains (its
    Adam state starts then, as ours does)."""
    opt = torch.optim.Adam(params, lr=lr)
    g = torch.Generator().manual_seed(seed)
    for epoch in range(epochs):
        if epoch == unfreeze_after:
            for p in model.parameters():
                p.requires_grad = True
        model.train()
        for b in torch.randperm(len(x), generator=g).split(batch):
            opt.zero_grad()
            nn.functional.cross_entropy(model(x[b]), y[b]).backward()
            opt.step()


def accuracy(model, x, y):
    model.eval()
    with torch.no_grad():
        return (model(x).argmax(1) == y).float().mean().item()


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", default="/tmp/finetune")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--epochs", type=int, default=30)
    args = ap.parse_args()
    out = Path(args.out)
    torch.manual_seed(args.seed)
    torch.set_num_threads(2)
    mnist = ROOT / "data/mnist"
    xtr, ytr = idx(mnist / "train-images-idx3-ubyte.gz"), idx(mnist / "train-labels-idx1-ubyte.gz")
    xte, yte = idx(mnist / "t10k-images-idx3-ubyte.gz"), idx(mnist / "t10k-labels-idx1-ubyte.gz")
    t = lambda a: torch.tensor(a, dtype=torch.float32).unsqueeze(1) / 255.0

    # 1. Pretraining on digits 0-5.
    keep = ytr < 6
    base = lenet5(6)
    train(base, t(xtr[keep]), torch.tensor(ytr[keep], dtype=torch.long), 2, 64, 1e-3, base.parameters(), args.seed)
    pre_acc = accuracy(base, t(xte[yte < 6]), torch.tensor(yte[yte < 6], dtype=torch.long))
    out.mkdir(parents=True, exist_ok=True)
    save_file({k: v.contiguous() for k, v in base.state_dict().items()}, str(out / "lenet5_digits0-5.safetensors"))
    print(f"pretrained on digits 0-5: test accuracy {100 * pre_acc:.2f}%")

    # 2. The folder: ten training images each of 6-9, 200 validation images each.
    rng = np.random.default_rng(args.seed)
    folder = out / "digits6-9"
    xs, ys, vx, vy = [], [], [], []
    for d in range(6, 10):
        for split, (imgs, labels, n, ax, ay) in {"train": (xtr, ytr, 10, xs, ys), "val": (xte, yte, 200, vx, vy)}.items():
            pick = rng.choice(np.flatnonzero(labels == d), n, replace=False)
            (folder / split / str(d)).mkdir(parents=True, exist_ok=True)
            for i in pick:
                Image.fromarray(imgs[i], "L").save(folder / split / str(d) / f"{i}.png")
                ax.append(imgs[i])
                ay.append(d - 6)
    x, y = t(np.stack(xs)), torch.tensor(ys)
    vx, vy = t(np.stack(vx)), torch.tensor(vy)

    # 3. The recipes: a frozen backbone (the head alone trains), the same
    # unfrozen after a third of the epochs (fastai's fine_tune), and from scratch.
    state = {k: v for k, v in base.state_dict().items() if not k.startswith("11.")}
    results = {}
    for recipe, unfreeze in [("frozen backbone", None), (f"frozen backbone, unfrozen after {max(1, args.epochs // 3)}", max(1, args.epochs // 3)), ("from scratch", "scratch")]:
        torch.manual_seed(args.seed)
        m = lenet5(4)
        if unfreeze != "scratch":
            m.load_state_dict(state, strict=False)
            for name, p in m.named_parameters():
                p.requires_grad = name.startswith("11.")
        train(m, x, y, args.epochs, 8, 1e-3, m.parameters(), args.seed, unfreeze if isinstance(unfreeze, int) else None)
        results[recipe] = accuracy(m, vx, vy)
        print(f"PyTorch, {recipe}: val accuracy {100 * results[recipe]:.2f}%")
    common = f"--data {folder} --model lenet5 --mean 0 --std 1 --epochs {args.epochs} --batch-size 8 --optimizer adam --lr 1e-3 --seed {args.seed} --device cpu"
    weights = f"--weights {out / 'lenet5_digits0-5.safetensors'}"
    print("ours:")
    print(f"  cargo run --release --example train_images -- {common} {weights} --freeze-backbone")
    print(f"  cargo run --release --example train_images -- {common} {weights} --freeze-backbone --unfreeze-after {max(1, args.epochs // 3)}")
    print(f"  cargo run --release --example train_images -- {common}")


if __name__ == "__main__":
    main()
