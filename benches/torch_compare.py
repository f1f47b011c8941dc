#!/usr/bin/env python3
"""PyTorch's side of `cargo run --release --example bench`: the same GEMM sizes
and the same training steps (LeNet-5 and VGG-small at batch 64, SGD with
momentum 0.9, lr 0.01, mean cross-entropy), timed the same way (two warm-up
calls, then the median of repeated calls, each waiting for the device), printed
in the same table or as the same JSON rows (`--json`).

Run both in one go so the ratio is measured side by side:

    cargo run --release --example bench -- --json > ours.jsonl
    python3 benches/torch_compare.py --json > torch.jsonl

PyTorch is never a dependency of the crate; this script only measures it.
TF32 is switched off so CUDA GEMMs are true fp32, like ours.
"""

import argparse
import json
import statistics
import time

import torch
import torch.nn as nn


def median_seconds(fn, budget, sync):
    fn()
    fn()
    sync()
    samples = []
    start = time.perf_counter()
    while len(samples) < 3 or (time.perf_counter() - start < budget and len(samples) < 1000):
        t = time.perf_counter()
        fn()
        sync()
        samples.append(time.perf_counter() - t)
    return statistics.median(samples)


def sgd_step(model, batch, item, classes, dev="cpu", amp=None):
    """The benchmarks' training step for `model`, as our bench's: SGD (lr 0.01,
    momentum 0.9) on its fixed input pattern, mean cross-entropy, gradients
    zeroed in place; `amp` (a dtype) runs forward and loss under
    `torch.autocast`. Returns (step, optimizer)."""
    opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    n = batch * item[0] * item[1] * item[2]
    x = (torch.arange(n, dtype=torch.float32) * 7 % 13 / 13.0).reshape(batch, *item).to(dev)
    y = (torch.arange(batch) % classes).to(dev)
    loss_fn = nn.CrossEntropyLoss()

    def step():
        opt.zero_grad(set_to_none=False)
        with torch.autocast(dev, dtype=amp or torch.float32, enabled=amp is not None):
            loss = loss_fn(model(x), y)
        loss.backward()
        opt.step()

    return step, opt


def lenet5():
    return nn.Sequential(
        nn.Conv2d(1, 6, 5, padding=2), nn.ReLU(), nn.MaxPool2d(2),
        nn.Conv2d(6, 16, 5), nn.ReLU(), nn.MaxPool2d(2),
        nn.Flatten(),
        nn.Linear(16 * 5 * 5, 120), nn.ReLU(),
        nn.Linear(120, 84), nn.ReLU(),
        nn.Linear(84, 10),
    )


def vgg_small():
    layers, c_in = [], 3
    for c in (32, 64, 128):
        for a, b in ((c_in, c), (c, c)):
            layers += [nn.Conv2d(a, b, 3, padding=1, bias=False), nn.BatchNorm2d(b), nn.ReLU()]
        layers.append(nn.MaxPool2d(2))
        c_in = c
    return nn.Sequential(*layers, nn.Flatten(), nn.Linear(128 * 4 * 4, 10))


class Residual(nn.Module):
    """y = body(x) + shortcut(x), as wgpu_cnn::nn::Residual."""

    def __init__(self, body, shortcut):
        super().__init__()
        self.body, self.shortcut = body, shortcut

    def forward(self, x):
        return self.body(x) + (self.shortcut(x) if self.shortcut is not None else x)


def resnet20():
    """The same network as wgpu_cnn::nn::models::resnet20."""
    layers, c_in = [nn.Conv2d(3, 16, 3, padding=1, bias=False), nn.BatchNorm2d(16), nn.ReLU()], 16
    for stage, c in enumerate((16, 32, 64)):
        for block in range(3):
            stride = 2 if stage > 0 and block == 0 else 1
            body = nn.Sequential(nn.Conv2d(c_in, c, 3, stride=stride, padding=1, bias=False), nn.BatchNorm2d(c), nn.ReLU(),
                                 nn.Conv2d(c, c, 3, padding=1, bias=False), nn.BatchNorm2d(c))
            short = None
            if stride != 1 or c_in != c:
                short = nn.Sequential(nn.Conv2d(c_in, c, 1, stride=stride, bias=False), nn.BatchNorm2d(c))
            layers += [Residual(body, short), nn.ReLU()]
            c_in = c
    return nn.Sequential(*layers, nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(64, 10))


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--json", action="store_true", help="one JSON object per row")
    p.add_argument("--seconds", type=float, default=1.0, help="time budget per measurement")
    p.add_argument("--sizes", type=str, default=None, help="square GEMM sizes, e.g. 128,512,4096")
    p.add_argument("--device", choices=["auto", "cpu", "cuda"], default="auto")
    p.add_argument("--no-gemm", action="store_true")
    p.add_argument("--no-train", action="store_true")
    args = p.parse_args()

    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False
    devices = ["cpu"]
    if args.device in ("auto", "cuda") and torch.cuda.is_available():
        devices.append("cuda")
    if args.device == "cpu":
        devices = ["cpu"]
    if args.device == "cuda":
        devices = [d for d in devices if d == "cuda"]
    cuda = "cuda" in devices
    sizes = [int(s) for s in args.sizes.split(",")] if args.sizes else ([128, 256, 512, 1024, 2048, 4096] if cuda else [128, 256, 512])

    def sync_for(dev):
        return torch.cuda.synchronize if dev == "cuda" else (lambda: None)

    if not args.json:
        name = torch.cuda.get_device_name() if cuda else "none"
        print(f"torch {torch.__version__}, {torch.get_num_threads()} CPU threads, CUDA device: {name}, TF32 off")
        print(f"{'op':<6} {'shape':<16} {'device':<14} {'time':>11} {'GFLOP/s':>10}")
    for n in [] if args.no_gemm else sizes:
        flops = 2.0 * n * n * n
        for dev in devices:
            if dev == "cpu" and n > 2048:
                continue
            g = torch.Generator(device="cpu").manual_seed(n)
            a, b = (torch.rand(n, n, generator=g).to(dev) - 0.5 for _ in range(2))
            c = torch.empty(n, n, device=dev)
            t = median_seconds(lambda: torch.mm(a, b, out=c), args.seconds, sync_for(dev))
            if args.json:
                print(json.dumps({"op": "gemm", "impl": "torch", "shape": [n, n, n], "device": dev, "seconds": t, "gflops": flops / t / 1e9}))
            else:
                print(f"{'gemm':<6} {f'{n}x{n}x{n}':<16} {'torch-' + dev:<14} {t * 1e3:>9.3f}ms {flops / t / 1e9:>10.1f}")

    if args.no_train:
        return
    if not args.json:
        print(f"\n{'train step (b64)':<18} {'device':<14} {'first step':>12} {'step':>11} {'images/s':>10}")
    for name, build, item in (("lenet5", lenet5, (1, 28, 28)), ("vgg_small", vgg_small, (3, 32, 32)), ("resnet20", resnet20, (3, 32, 32))):
        for dev in devices:
            torch.manual_seed(0)
            model = build().to(dev).train()
            step, _ = sgd_step(model, 64, item, 10, dev)
            sync = sync_for(dev)
            t0 = time.perf_counter()
            step()
            sync()
            first = time.perf_counter() - t0
            t = median_seconds(step, args.seconds, sync)
            if args.json:
                print(json.dumps({"op": "train_step", "impl": "torch", "model": name, "batch": 64, "device": dev,
                                  "first_step_s": first, "step_s": t, "images_per_s": 64 / t}))
            else:
                print(f"{name:<18} {'torch-' + dev:<14} {first * 1e3:>10.1f}ms {t * 1e3:>9.2f}ms {64 / t:>10.0f}")


if __name__ == "__main__":
    main()
