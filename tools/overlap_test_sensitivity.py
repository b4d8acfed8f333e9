#!/usr/bin/env python3
"""How far apart two runs of the chain in tests/autograd/test_cuda.cpp ("CUDA kernels queued back
to back ...") end when their roundings differ, in plain double-precision Python.

The test compares the GPU's chain with the CPU's elementwise, within 1e-12 of max |y|. The two
backends sum in different orders, so each step's results differ by about 1e-16 relative. Here
one run is exact and the other has every element of y moved by a random relative `noise`
(either sign) after each of a step's four operations (the GPU runs them as about nine kernels;
an operation's rounding is what differs between the backends); the script prints the final
difference over max |y|. A chain that amplified such differences would need a looser bound.
"""
import math
import random

ROWS, COLS, STEPS = 64, 48, 50  # the test's shape and steps


def layer_norm(row):  # weight 1, bias 1, eps 1e-5 (the test's)
    mean = sum(row) / COLS
    var = sum((a - mean) ** 2 for a in row) / COLS
    return [(a - mean) / math.sqrt(var + 1e-5) + 1 for a in row]


def softmax(row):
    top = max(row)
    e = [math.exp(a - top) for a in row]
    total = sum(e)
    return [a / total for a in e]


def chain(x, noise, rng):
    def jitter(y):
        return [[a * (1 + noise * rng.uniform(-1, 1)) for a in row] for row in y]

    y = x
    for _ in range(STEPS):
        y = jitter([[a + 1 for a in row] for row in y])
        y = jitter([[a + COLS * p for a, p in zip(row, softmax(row))] for row in y])
        y = jitter([[a + b for a, b in zip(row, layer_norm(row))] for row in y])
        mean = sum(map(sum, y)) / (ROWS * COLS)
        y = jitter([[a + a / mean for a in row] for row in y])
    return y


def main():
    rng = random.Random(1)
    x = [[rng.uniform(-1, 1) for _ in range(COLS)] for _ in range(ROWS)]
    for noise in (1e-16, 1e-13):
        exact = chain(x, 0.0, rng)
        noisy = chain(x, noise, rng)
        diff = max(abs(p - q) for re, rn in zip(exact, noisy) for p, q in zip(re, rn))
        largest = max(abs(p) for row in exact for p in row)
        print(f"noise {noise:g} per element per operation: final difference {diff / largest:.3g} of max |y|")


if __name__ == "__main__":
    main()
