#!/usr/bin/env python3
# How much the chain of tests/autograd/test_cuda.cpp "CUDA kernels queued back to back ..." amplifies
# a difference in its input, in plain double-precision Python (16 rows of 48): the test compares
# the GPU and CPU chains elementwise at 1e-12 of max |y|, which needs the chain not to amplify
# summation-order differences (about 1e-16). Prints the relative change of y per relative
# change of x (0.02 when last run).
import math
import random

random.seed(1)
R,C=16,48
x=[[random.uniform(-1,1) for _ in range(C)] for _ in range(R)]
def ln(row):
    m=sum(row)/C; v=sum((a-m)**2 for a in row)/C; r=1/math.sqrt(v+1e-5)
    return [(a-m)*r+1 for a in row]
def sm(row):
    mx=max(row); e=[math.exp(a-mx) for a in row]; s=sum(e); return [a/s for a in e]
def chain(x, pert=0.0, steps=50):
    y=[[a*(1+pert) for a in row] for row in x]
    for t in range(steps):
        y=[[a+1 for a in row] for row in y]
        y=[[a+C*p for a,p in zip(row,sm(row))] for row in y]
        y=[[a+b for a,b in zip(row,ln(row))] for row in y]
        m=sum(sum(r) for r in y)/(R*C)
        y=[[a+a/m for a in row] for row in y]
    return y
a=chain(x); b=chain(x,1e-13)
d=max(abs(p-q) for ra,rb in zip(a,b) for p,q in zip(ra,rb)); mx=max(abs(p) for r in a for p in r)
print("max diff", d, "max", mx, "rel", d/mx, "amplification", d/mx/1e-13)
