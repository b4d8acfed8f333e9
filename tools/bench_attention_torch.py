#!/usr/bin/env python3
"""NaLa attention in PyTorch, the peer `nala bench attention` is compared with.

The same formula as NALAFORMER.md section 1 (and nala's attention_composed), timed in eager
mode, under torch.compile, and PyTorch's scaled_dot_product_attention on the same shapes:
median ms of forward and forward+backward, and peak extra memory of forward+backward.

    python3 tools/bench_attention_torch.py --device cuda          # B=8, H=4, d=32/64, N=1024..65536
    python3 tools/bench_attention_torch.py --device cpu --threads 2
"""
import argparse
import math
import time

import torch


def rotary_tables(gh, gw, d, dtype, device):
    quarter = d // 4
    t = torch.arange(quarter, dtype=torch.float64)
    exponent = t / (quarter - 1) if quarter > 1 else torch.zeros(1, dtype=torch.float64)
    freq = (10000.0 ** -exponent).repeat_interleave(2)  # d/2 angles
    h = torch.arange(gh, dtype=torch.float64)[:, None].expand(gh, gw).reshape(-1, 1)
    w = torch.arange(gw, dtype=torch.float64)[None, :].expand(gh, gw).reshape(-1, 1)
    ang = torch.cat([h * freq, w * freq], dim=1)
    return ang.sin().to(dtype).to(device), ang.cos().to(dtype).to(device)


def rotary(x, sin, cos):
    reps = x.shape[-1] // sin.shape[-1]
    xp = x.unflatten(-1, (-1, 2))
    rot = torch.stack([-xp[..., 1], xp[..., 0]], dim=-1).flatten(-2)
    return x * cos.repeat(1, reps) + rot * sin.repeat(1, reps)


def nala(q, k, v, sin, cos):
    k = k ** 3
    n = q.norm(dim=-1, keepdim=True)
    p = 3 * (0.5 + torch.tanh(n))
    safe = torch.where(n == 0, torch.ones_like(n), n)
    a, b = torch.relu(q) / safe, torch.relu(-q) / safe
    phi_q = torch.cat([a ** p, b ** p], dim=-1)
    phi_k = torch.cat([torch.relu(k), torch.relu(-k)], dim=-1)
    kbar = phi_k.mean(dim=2, keepdim=True)
    z = 1 / ((phi_q * kbar).sum(-1, keepdim=True) + 1e-6)
    s = rotary(phi_k, sin, cos).transpose(-1, -2) @ v / q.shape[2]
    return z * (rotary(phi_q, sin, cos) @ s)


def sdpa(q, k, v, sin, cos):
    return torch.nn.functional.scaled_dot_product_attention(rotary(q, sin, cos), rotary(k, sin, cos), v)


def median_ms(f, device, repeats):
    sync = torch.cuda.synchronize if device == "cuda" else (lambda: None)
    f()
    sync()
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        f()
        sync()
        times.append(time.perf_counter() - t0)
    return sorted(times)[len(times) // 2] * 1e3


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--threads", type=int, default=0)
    ap.add_argument("--batch", type=int, default=0)
    ap.add_argument("--sides", default="")
    ap.add_argument("--dims", default="32,64")
    ap.add_argument("--kinds", default="eager,compile,sdpa", help="which of eager, compile, sdpa")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    dev = args.device
    B = args.batch or (8 if dev == "cuda" else 2)
    H = 4
    sides = [int(s) for s in args.sides.split(",")] if args.sides else ([32, 64, 128, 256] if dev == "cuda" else [32, 64, 128])
    compiled = torch.compile(nala) if dev == "cuda" else None
    print(f"torch {torch.__version__} on {dev}, B = {B}, H = {H} (ms; peak MiB beyond inputs)")
    print(f"{'kind':>10}{'d':>4}{'N':>8}{'fwd ms':>11}{'fwd+bwd ms':>12}{'peak MiB':>11}")
    for d in [int(x) for x in args.dims.split(",")]:
        for side in sides:
            N = side * side
            sin, cos = rotary_tables(side, side, d, torch.float32, dev)
            q, k, v, g = (torch.randn(B, H, N, d, device=dev, requires_grad=i < 3) for i in range(4))
            has_sdpa = hasattr(torch.nn.functional, "scaled_dot_product_attention")  # torch >= 2.0
            variants = [("eager", nala), ("compile", compiled), ("sdpa", sdpa if has_sdpa else None)]
            for name, fn in variants:
                if name not in args.kinds.split(",") or fn is None or (name == "sdpa" and dev == "cpu" and N > 16384):
                    continue

                def run(backward):
                    out = fn(q, k, v, sin, cos)
                    if backward:
                        (out * g).sum().backward()
                        q.grad = k.grad = v.grad = None

                try:
                    with torch.no_grad():
                        fwd = median_ms(lambda: run(False), dev, args.repeats)
                    both = median_ms(lambda: run(True), dev, args.repeats)
                    peak = 0.0
                    if dev == "cuda":
                        torch.cuda.synchronize()
                        before = torch.cuda.memory_allocated()
                        torch.cuda.reset_peak_memory_stats()
                        run(True)
                        torch.cuda.synchronize()
                        peak = (torch.cuda.max_memory_allocated() - before) / 2**20
                    print(f"{name:>10}{d:>4}{N:>8}{fwd:>11.3f}{both:>12.3f}{peak:>11.1f}", flush=True)
                except RuntimeError as e:  # CUDA out of memory (torch.OutOfMemoryError is one)
                    if "out of memory" not in str(e):
                        raise
                    print(f"{name:>10}{d:>4}{N:>8}{'OOM':>11}", flush=True)
                    torch.cuda.empty_cache()


if __name__ == "__main__":
    main()
