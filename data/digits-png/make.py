#!/usr/bin/env python3
"""Writes the small image-folder data set in this directory from the committed MNIST.

train/<digit>/NNNNN.png: the first 40 images of each digit in MNIST's training set;
val/<digit>/NNNNN.png: the first 10 of each digit in MNIST's test set. NNNNN is the
image's index in its MNIST file. 8-bit grayscale PNG, 28x28, written with the standard
library only, so the output is byte-for-byte reproducible:

    python3 data/digits-png/make.py
"""
import gzip, os, shutil, struct, zlib

HERE = os.path.dirname(os.path.abspath(__file__))
MNIST = os.path.join(HERE, "..", "mnist")


def idx(path):
    with gzip.open(path, "rb") as f:
        data = f.read()
    magic, n = struct.unpack(">II", data[:8])
    if magic == 2051:
        rows, cols = struct.unpack(">II", data[8:16])
        return [data[16 + i * rows * cols:16 + (i + 1) * rows * cols] for i in range(n)]
    return list(data[8:8 + n])


def png(path, pixels, w, h):
    def chunk(kind, body):
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body) & 0xFFFFFFFF)
    raw = b"".join(b"\x00" + pixels[y * w:(y + 1) * w] for y in range(h))
    with open(path, "wb") as f:
        f.write(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", w, h, 8, 0, 0, 0, 0)) + chunk(b"IDAT", zlib.compress(raw, 9)) + chunk(b"IEND", b""))


def split(name, images, labels, per_class):
    out = os.path.join(HERE, name)
    shutil.rmtree(out, ignore_errors=True)
    counts = [0] * 10
    for i, (img, label) in enumerate(zip(images, labels)):
        if counts[label] < per_class:
            os.makedirs(os.path.join(out, str(label)), exist_ok=True)
            png(os.path.join(out, str(label), f"{i:05d}.png"), img, 28, 28)
            counts[label] += 1
        if min(counts) == per_class:
            break


split("train", idx(os.path.join(MNIST, "train-images-idx3-ubyte.gz")), idx(os.path.join(MNIST, "train-labels-idx1-ubyte.gz")), 40)
split("val", idx(os.path.join(MNIST, "t10k-images-idx3-ubyte.gz")), idx(os.path.join(MNIST, "t10k-labels-idx1-ubyte.gz")), 10)
