#!/usr/bin/python3
"""Which GEMM row blocks OpenBLAS computes the same at every position
(docs/performance.md): a row at each position of an R-row zero block against
position 0, forward (x W^T) and input gradient (g W); then, across block
sizes, each row of an R-row block against the same row multiplied alone
(R = 1): "same" or "differs", forward and gradient.

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

# Across block sizes: a row in an R-row block against the row alone.
X = torch.randn(8, K)
G = torch.randn(8, M)
alone_f = [torch.mm(X[i:i + 1], W.t())[0] for i in range(8)]
alone_b = [torch.mm(G[i:i + 1], W)[0] for i in range(8)]
for R in (2, 4, 8):
    f = torch.mm(X[:R], W.t())
    b = torch.mm(G[:R], W)
    same_f = all(torch.equal(f[i], alone_f[i]) for i in range(R))
    same_b = all(torch.equal(b[i], alone_b[i]) for i in range(R))
    print(f"K={K} M={M} R={R} against R=1: fwd {'same' if same_f else 'differs'}, "
          f"bwd {'same' if same_b else 'differs'}", flush=True)
