#!/usr/bin/python3
"""What batch-invariant linear layers cost (docs/performance.md, "The cheaper
batch-invariant linear layer"):

    /usr/bin/python3 scripts/linear_modes.py 1,16,64 6 [--rowwise]

images, repetitions. See the comment below for what is timed.
"""
# The classic CNN's forward + backward (input gradient, frozen weights) with
# its linear layers as plain addmm, as 8-row blocks (featviz's kBlocked, the
# same ATen ops as its TorchScript function), and row by row (kRowwise),
# interleaved step by step so all three see the same load.
import sys, time, torch, torch.nn.functional as F
sys.path.insert(0, __import__("os").path.join(__import__("os").path.dirname(__import__("os").path.abspath(__file__)), "..", "tests", "models"))
from make_bench_models import ClassicCnn
torch.manual_seed(0)
net = ClassicCnn().eval()
for p in net.parameters(): p.requires_grad_(False)

def blocked(x, w, b, r=8):
    k = x.size(-1); n = x.size(0); pad = (r - n % r) % r
    if pad: x = torch.cat([x, x.new_zeros(pad, k)])
    blocks = x.reshape(-1, r, k)
    y = torch.bmm(blocks, w.t().unsqueeze(0).expand(blocks.size(0), k, w.size(0))).reshape(-1, w.size(0))
    return (y[:n] if pad else y) + b

def rowwise(x, w, b):
    rows = x.reshape(-1, 1, x.size(-1))
    return torch.bmm(rows, w.t().unsqueeze(0).expand(rows.size(0), x.size(-1), w.size(0))).reshape(x.size(0), -1) + b

def forward(x, lin):
    x = F.relu(net.conv1(x)); x = F.relu(net.conv2(x)); x = F.max_pool2d(x, 2)
    x = torch.flatten(x, 1)
    x = F.relu(lin(x, net.fc1.weight, net.fc1.bias))
    return F.log_softmax(lin(x, net.fc2.weight, net.fc2.bias), 1)

plain = lambda x, w, b: torch.addmm(b, x, w.t())
modes = [("plain", plain), ("blocked8", blocked)] + ([("rowwise", rowwise)] if "--rowwise" in sys.argv else [])
for n in [int(s) for s in sys.argv[1].split(",")]:
    x = torch.rand(n, 1, 28, 28, requires_grad=True)
    t = {m: 0.0 for m, _ in modes}
    reps = int(sys.argv[2])
    for rep in range(reps + 1):
        order = modes if rep % 2 == 0 else modes[::-1]
        for name, lin in order:
            s = time.perf_counter()
            forward(x, lin).sum().backward(); x.grad = None
            if rep > 0: t[name] += time.perf_counter() - s
    base = t["plain"]
    print(f"n={n}: " + ", ".join(f"{m} {reps * n / t[m]:.1f} img/s ({t[m] / base:.2f}x plain)" for m, _ in modes), flush=True)
