#!/usr/bin/python3
"""Which GEMM row blocks OpenBLAS computes the same at every position
(docs/performance.md): a row at each position of an R-row zero block against
position 0, forward (x W^T) and input gradient (g W).

    OPENBLAS_NUM_THREADS=1 /usr/bin/python3 scripts/linear_invariance.py 9216 128
"""
import torch, sys
torch.manual_seed(0)
K, M = int(sys.argv[1]), int(sys.argv[2])
W = torch.randn(M, K) * 0.01
x = torch.randn(4, K)
def mm(xb): return torch.mm(xb, W.t())
for R in (1, 2, 4, 8, 16, 24, 32):
    refs = []
    for pos in range(R):
        b = x.new_zeros(R, K); b[pos] = x[0]
        refs.append(mm(b)[pos])
    pattern = "".join("=" if torch.equal(r, refs[0]) else "x" for r in refs)
    # also: the gradient direction (grad @ W) for [R, M] blocks
    g = torch.randn(M)
    grefs = []
    for pos in range(R):
        b = g.new_zeros(R, M); b[pos] = g
        grefs.append(torch.mm(b, W)[pos])
    gpat = "".join("=" if torch.equal(r, grefs[0]) else "x" for r in grefs)
    print(f"K={K} M={M} R={R:2d} fwd {pattern:32s} bwd {gpat}", flush=True)
