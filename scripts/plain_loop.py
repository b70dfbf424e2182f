#!/usr/bin/env python3
"""The baseline of the GPU figures (docs/gpu.md): the optimisation featviz
runs, written as a plain PyTorch loop on the same device.

One batch of B images, each maximising one class logit (image i: class
i % classes): FFT parameterisation with a 1/f spectrum, decorrelated colour
for RGB, sigmoid; featviz's default transforms (pad, jitter, scale, rotate,
jitter) as one affine matrix per step drawn on the device and one
grid_sample; the card's normalisation; Adam (lr 0.05). No host
synchronisation inside the loop; the clock stops after a final
torch.cuda.synchronize().

  python3 scripts/plain_loop.py --model models/mnist_classifier.pt \
      --batch 16 --steps 256 [--device cuda:0] [--no-transforms] [--json]

--batches 1,16,64,256 runs several batch sizes one after another in the same
process (one line or JSON object each), as scripts/bench-vs-plain does.
--threads N sets torch's intra-op thread count (default: torch's choice).
--channel LAYER maximises a channel's mean instead (image i: channel
i % channels of LAYER), read as Lucent reads it: a forward hook on the
layer of the eager module, the whole network run each step. Hooks need the
eager module, so this works for models whose class this repository builds
(classic_cnn and resnet18_128, from tests/models/make_bench_models.py, their
weights loaded from the TorchScript file).
"""
import argparse
import json
import math
import os
import time

import torch

COLOUR_SQRT = [[0.26, 0.09, 0.02], [0.27, 0.00, -0.05], [0.27, -0.09, 0.03]]


def card_for(model_path):
    stem = os.path.splitext(model_path)[0]
    with open(stem + ".card.json") as f:
        return json.load(f)


def fft_freqs(n, half):
    if half:
        return torch.arange(n // 2 + 1) / n
    f = torch.fft.fftfreq(n)
    return f


def default_transforms(side):
    px = lambda frac: max(1, round(side * frac))
    return dict(pad=px(12 / 224), jitter1=px(8 / 224), jitter2=px(4 / 224),
                scales=[1 + i / 50 for i in range(-5, 6)],
                angles=[float(a) for a in range(-10, 11)])


def affine(t, h, w, gen, device):
    """One [1, 2, 3] matrix, drawn on the device (as featviz's schedule)."""
    opt = dict(device=device, dtype=torch.float64)

    def mat(a, b, c, d, tx, ty):
        z = torch.zeros((), **opt)
        o = torch.ones((), **opt)
        return torch.stack([a, b, tx, c, d, ty, z, z, o]).view(3, 3)

    one, zero = torch.ones((), **opt), torch.zeros((), **opt)
    m = torch.eye(3, **opt)
    n = t["pad"]
    m = m @ mat(one * (w + 2 * n) / w, zero, zero, one * (h + 2 * n) / h, zero, zero)
    for d in (t["jitter1"],):
        dx = torch.randint(d + 1, (), generator=gen, device=device).double() - d // 2
        dy = torch.randint(d + 1, (), generator=gen, device=device).double() - d // 2
        m = m @ mat(one, zero, zero, one, dx * 2 / w, dy * 2 / h)
    scales = torch.tensor(t["scales"], **opt)
    f = scales[torch.randint(len(t["scales"]), (), generator=gen, device=device)]
    m = m @ mat(1 / f, zero, zero, 1 / f, zero, zero)
    angles = torch.tensor(t["angles"], **opt)
    a = angles[torch.randint(len(t["angles"]), (), generator=gen, device=device)] * math.pi / 180
    c, s = torch.cos(a), torch.sin(a)
    m = m @ mat(c, -s * h / w, s * w / h, c, zero, zero)
    d = t["jitter2"]
    dx = torch.randint(d + 1, (), generator=gen, device=device).double() - d // 2
    dy = torch.randint(d + 1, (), generator=gen, device=device).double() - d // 2
    m = m @ mat(one, zero, zero, one, dx * 2 / w, dy * 2 / h)
    return m[:2].float().unsqueeze(0)


def eager_twin(path, scripted):
    """The eager module of a TorchScript file this repository builds, with
    the file's weights (forward hooks need eager modules)."""
    import importlib.util
    name = os.path.splitext(os.path.basename(path))[0]
    if name == "resnet18_128":
        import torchvision
        eager = torchvision.models.resnet18(weights=None)
        eager.load_state_dict(scripted.state_dict())
        return eager
    if name != "classic_cnn":
        raise SystemExit(f"--channel needs the eager class of {name}; "
                         "known: classic_cnn, resnet18_128")
    here = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    spec = importlib.util.spec_from_file_location(
        "make_bench_models", os.path.join(here, "tests/models/make_bench_models.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    eager = module.ClassicCnn()
    eager.load_state_dict(scripted.state_dict())
    return eager


def run(args):
    device = torch.device(args.device)
    card = card_for(args.model)
    c, h, w = (card["input"][k] for k in ("channels", "height", "width"))
    model = torch.jit.load(args.model, map_location=device).eval()
    hooked = {}
    if args.channel:
        model = eager_twin(args.model, model).to(device).eval()
        layer = dict(model.named_modules())[args.channel]
        layer.register_forward_hook(lambda _m, _i, out: hooked.__setitem__("a", out))
    for p in model.parameters():
        p.requires_grad_(False)
    mean = torch.tensor(card["input"].get("mean", [0.0] * c), device=device).view(1, c, 1, 1)
    std = torch.tensor(card["input"].get("std", [1.0] * c), device=device).view(1, c, 1, 1)
    with torch.no_grad():
        classes = model(torch.zeros(1, c, h, w, device=device)).shape[1]
    b = args.batch
    gen = torch.Generator(device=device)
    gen.manual_seed(args.seed)
    fy = fft_freqs(h, False).view(-1, 1)
    fx = fft_freqs(w, True).view(1, -1)
    scale = (fy * fy + fx * fx).sqrt().clamp_min(1.0 / max(h, w)).pow(-1.0).to(device)
    colour = None
    if c == 3:
        colour = torch.tensor(COLOUR_SQRT)
        colour = (colour / colour.norm(dim=0).max()).to(device)
    var = (torch.randn(b, c, h, w // 2 + 1, 2, generator=gen, device=device) * 0.01).requires_grad_()
    opt = torch.optim.Adam([var], lr=0.05)
    t = None if args.no_transforms else default_transforms(min(h, w))
    target = torch.arange(b, device=device) % classes
    if args.channel:
        with torch.no_grad():
            model(torch.zeros(1, c, h, w, device=device))
        channel_target = torch.arange(b, device=device) % hooked["a"].shape[1]

    def image():
        pre = torch.fft.irfft2(torch.view_as_complex(var) * scale, s=(h, w), norm="ortho") / 4.0
        if colour is not None:
            pre = torch.einsum("ij,bjhw->bihw", colour, pre)
        return torch.sigmoid(pre)

    def step():
        x = image()
        if t is not None:
            theta = affine(t, h, w, gen, device).expand(b, 2, 3)
            grid = torch.nn.functional.affine_grid(theta, [b, c, h, w], align_corners=False)
            x = torch.nn.functional.grid_sample(x, grid, mode="bilinear",
                                                padding_mode="reflection", align_corners=False)
        logits = model((x - mean) / std)
        if args.channel:
            a = hooked["a"]
            loss = -a[torch.arange(b, device=device), channel_target].flatten(1).mean(1).sum()
        else:
            loss = -logits.gather(1, target.view(-1, 1)).sum()
        opt.zero_grad(set_to_none=False)
        loss.backward()
        opt.step()
        return loss

    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    for _ in range(args.warmup):
        step()
    sync()
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    start = time.perf_counter()
    for _ in range(args.steps):
        loss = step()
    sync()
    seconds = time.perf_counter() - start
    with torch.no_grad():
        final = model((image() - mean) / std).softmax(1).gather(1, target.view(-1, 1)).mean().item()
    report = {
        "loop": "plain-pytorch", "torch": torch.__version__, "device": str(device),
        "model": os.path.basename(args.model), "batch": b, "steps": args.steps,
        "transforms": t is not None, "threads": torch.get_num_threads(),
        "objective": f"channel({args.channel}, i)" if args.channel else "logit(i)",
        "seconds": seconds, "steps_per_second": args.steps / seconds,
        "image_steps_per_second": b * args.steps / seconds,
        "mean_target_probability": final,
        "peak_memory_bytes": torch.cuda.max_memory_allocated(device) if device.type == "cuda" else None,
    }
    return report


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", required=True)
    parser.add_argument("--batch", type=int, default=1)
    parser.add_argument("--batches", default="",
                        help="comma-separated batch sizes, run in turn (overrides --batch)")
    parser.add_argument("--no-transforms", action="store_true")
    parser.add_argument("--threads", type=int, default=0)
    parser.add_argument("--steps", type=int, default=256)
    parser.add_argument("--warmup", type=int, default=8)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--device", default="cuda:0" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--json", action="store_true")
    parser.add_argument("--channel", default="",
                        help="maximise channel i %% C of this layer (forward hook) instead")
    args = parser.parse_args()
    if args.threads > 0:
        torch.set_num_threads(args.threads)
    batches = [int(x) for x in args.batches.split(",")] if args.batches else [args.batch]
    for b in batches:
        args.batch = b
        report = run(args)
        if args.json:
            print(json.dumps(report), flush=True)
        else:
            print(f"plain PyTorch loop, {report['model']} on {report['device']}, batch {report['batch']}"
                  f"{'' if report['transforms'] else ', no transforms'}, {report['objective']}: "
                  f"{report['steps_per_second']:.1f} steps/s, "
                  f"{report['image_steps_per_second']:.1f} images*steps/s, "
                  f"mean target probability {report['mean_target_probability']:.3f}", flush=True)


if __name__ == "__main__":
    main()
