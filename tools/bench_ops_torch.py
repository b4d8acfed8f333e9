#!/usr/bin/env python3
"""The PyTorch eager peer of `nala bench ops`: the same memory-bound ops of xt-cifar at batch
256, forward+backward through sum(f(x)).backward(), median ms over repeats.

    python3 tools/bench_ops_torch.py --device cuda
"""
import argparse
import torch
import torch.nn.functional as F

from bench_attention_torch import median_ms  # same folder


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--repeats", type=int, default=5)
    args = ap.parse_args()
    dev = args.device
    opt = dict(device=dev, dtype=torch.float32)
    ln_w, ln_b = torch.ones(32, **opt, requires_grad=True), torch.zeros(32, **opt, requires_grad=True)
    dw3, db3 = torch.randn(112, 1, 3, 3, **opt, requires_grad=True), torch.zeros(112, **opt, requires_grad=True)
    dw5, db5 = torch.randn(32, 1, 5, 5, **opt, requires_grad=True), torch.zeros(32, **opt, requires_grad=True)
    labels = torch.full((65536,), 3, device=dev, dtype=torch.long)
    cases = [
        ("layer_norm (65536, 32)", (65536, 32), lambda x: F.layer_norm(x, (32,), ln_w, ln_b, 1e-6)),
        ("gelu (256, 256, 112)", (256, 256, 112), F.gelu),
        ("dwconv 3x3 (256,112,16,16)", (256, 112, 16, 16), lambda x: F.conv2d(x, dw3, db3, 1, 1, 1, 112)),
        ("dwconv 5x5 (256,32,16,16)", (256, 32, 16, 16), lambda x: F.conv2d(x, dw5, db5, 1, 2, 1, 32)),
        ("softmax+CE (65536, 10)", (65536, 10), lambda x: F.cross_entropy(x, labels, label_smoothing=0.1)),
    ]
    print(f"torch {torch.__version__} eager on {dev}, forward+backward")
    print(f"{'op':<30}{'ms':>10}")
    for name, shape, f in cases:
        x = torch.randn(*shape, **opt, requires_grad=True)

        def run():
            f(x).sum().backward()
            x.grad = None

        print(f"{name:<30}{median_ms(run, dev, args.repeats):>10.3f}", flush=True)


if __name__ == "__main__":
    main()
