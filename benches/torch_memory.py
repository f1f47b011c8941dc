#!/usr/bin/env python3
"""PyTorch's side of the device-memory rows of `cargo run --release --example bench`:
the tensor-level peak of one SGD-momentum training step (lr 0.01, momentum 0.9,
mean cross-entropy, gradients zeroed in place as our trainer keeps them), measured
with `torch.distributed._tools.mem_tracker.MemTracker` around one step on the CPU,
after a first step has created the momentum buffers.

    python3 benches/torch_memory.py --models resnet18,resnet50,vgg16 --input 3x224x224 --batch 8 --json
    python3 benches/torch_memory.py ... --amp float16   # autocast, against --precision mixed

One JSON object per model: model, input, batch, torch_peak_bytes (and the
tracker's breakdown by kind at the peak). Pair it with

    cargo run --release --example bench -- --gpu-only --no-gemm --models resnet18,resnet50,vgg16 \\
        --input 3x224x224 --batch 8 --steps 2 --json

whose rows carry peak_device_bytes and peak_live_bytes. PyTorch's caching
allocator adds its own rounding and cuDNN workspaces on a real GPU; this is
the floor it cannot go under. PyTorch is never a dependency of the crate.
"""

import argparse
import json
import os
import sys

import torch
from torch.distributed._tools.mem_tracker import MemTracker

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from torch_compare import lenet5, resnet20, sgd_step, vgg_small  # noqa: E402

OURS = {"lenet5": lenet5, "vgg_small": vgg_small, "resnet20": resnet20}
DEFAULT_INPUT = {"lenet5": (1, 28, 28), "vgg_small": (3, 32, 32), "resnet20": (3, 32, 32)}


def build(name, classes):
    if name in OURS:
        return OURS[name]()
    import torchvision.models as tvm

    return getattr(tvm, name)(num_classes=classes)


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--models", default="resnet18,resnet50,vgg16")
    p.add_argument("--input", default=None, help="CxHxW (default: each model's own; 3x224x224 for the zoo)")
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--classes", type=int, default=None)
    p.add_argument("--json", action="store_true")
    p.add_argument("--amp", choices=["float16", "bfloat16"], default=None, help="forward and loss under torch.autocast with this dtype (ours: --precision mixed)")
    args = p.parse_args()
    amp = getattr(torch, args.amp) if args.amp else None
    for name in args.models.split(","):
        item = tuple(int(d) for d in args.input.split("x")) if args.input else DEFAULT_INPUT.get(name, (3, 224, 224))
        classes = args.classes or (10 if name in OURS else 1000)
        torch.manual_seed(0)
        model = build(name, classes).train()
        step, opt = sgd_step(model, args.batch, item, classes, amp=amp)
        step()  # creates the gradients and the momentum buffers
        mt = MemTracker()
        mt.track_external(model, opt)
        with mt:
            step()
        peak = mt.get_tracker_snapshot("peak")
        dev = next(iter(peak))
        total = peak[dev]["Total"]
        kinds = {str(k).split(".")[-1]: v for k, v in peak[dev].items() if k != "Total"}
        row = {"model": name, "input": list(item), "batch": args.batch, "amp": args.amp, "torch_peak_bytes": total, "by_kind": kinds}
        if args.json:
            print(json.dumps(row))
        else:
            print(f"{name:<12} b{args.batch} {item}: torch peak {total / 1e9:.3f} GB  {kinds}")


if __name__ == "__main__":
    main()
