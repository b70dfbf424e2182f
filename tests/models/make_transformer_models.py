#!/usr/bin/python3
"""Build the small token-based TorchScript test models (ViT, MLP-Mixer) and a
multi-band (RGB + NIR) CNN for the featviz C++ tests.

    /usr/bin/python3 tests/models/make_transformer_models.py --out DIR

Writes into DIR, each with a .card.json (3x32x32 input unless said):
  vit_scripted.pt       tiny Vision Transformer, torch.jit.script: patch_embed
                        (Conv2d 3->64, 8x8 patches: a 4x4 grid), a learnable
                        class token and position embeddings (17 tokens), two
                        pre-norm blocks `blocks.N` (norm1, attn =
                        nn.MultiheadAttention(64, 4, batch_first=True) called
                        with need_weights=False, norm2, mlp = Linear-GELU-
                        Linear 64->128->64), norm, head (5 classes) on the
                        class token. Card "tokens": {"prefix": 1, "grid": [4, 4]}.
  vit_traced.pt         the same architecture with need_weights=True (attn
                        returns (out, weights); out is used), torch.jit.trace.
  vit_encoder_layer.pt  post-norm blocks from nn.TransformerEncoderLayer(64, 4,
                        128, gelu, batch_first) inside nn.TransformerEncoder
                        (`encoder.layers.N`), scripted; its card has NO
                        "tokens" key: the grid must be inferred (17 = 1 + 4x4).
  mixer.pt              tiny MLP-Mixer, scripted: 16 patch tokens (no class
                        token), dim 64, two blocks each with token_mix (norm,
                        mlp over the tokens of the [B, D, T] transpose) and
                        channel_mix (norm, mlp over features), mean pool, head
                        (5 classes). Card "tokens": {"prefix": 0, "grid": [4, 4]}.
  multiband.pt          4-band (red, green, blue, nir) 32x32 CNN: conv1, conv2,
                        fc (6 classes), scripted. Card "input.channels": 4 and
                        "bands": {"names": [...], "composite": [0, 1, 2]}.

Weights are random but deterministic (torch.manual_seed(0)); nothing is trained
or downloaded. Each model is loaded back and run on a [2, C, H, W] batch.
"""
import argparse
import json
import os
import warnings

import torch
import torch.nn as nn
import torch.nn.functional as F

from make_test_models import write_card  # beside this file: one card writer

DIM = 64
HEADS = 4
HIDDEN = 128
SIDE = 32
PATCH = 8
GRID = SIDE // PATCH  # 4


class Block(nn.Module):
    """Pre-norm transformer block: x + attn(norm1(x)), then x + mlp(norm2(x))."""

    def __init__(self, need_weights: bool):
        super().__init__()
        self.need_weights = need_weights
        self.norm1 = nn.LayerNorm(DIM)
        self.attn = nn.MultiheadAttention(DIM, HEADS, batch_first=True)
        self.norm2 = nn.LayerNorm(DIM)
        self.mlp = nn.Sequential(nn.Linear(DIM, HIDDEN), nn.GELU(), nn.Linear(HIDDEN, DIM))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.norm1(x)
        out, _ = self.attn(h, h, h, need_weights=self.need_weights)
        x = x + out
        return x + self.mlp(self.norm2(x))


class ViT(nn.Module):  # 3x32x32 -> 5
    def __init__(self, need_weights: bool = False, classes: int = 5):
        super().__init__()
        self.patch_embed = nn.Conv2d(3, DIM, PATCH, stride=PATCH)
        self.cls_token = nn.Parameter(0.02 * torch.randn(1, 1, DIM))
        self.pos_embed = nn.Parameter(0.02 * torch.randn(1, 1 + GRID * GRID, DIM))
        self.blocks = nn.ModuleList([Block(need_weights) for _ in range(2)])
        self.norm = nn.LayerNorm(DIM)
        self.head = nn.Linear(DIM, classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.patch_embed(x).flatten(2).transpose(1, 2)  # [B, 16, D]
        cls = self.cls_token.expand(x.shape[0], -1, -1)
        x = torch.cat([cls, x], dim=1) + self.pos_embed  # [B, 17, D]
        for block in self.blocks:
            x = block(x)
        return self.head(self.norm(x)[:, 0])


class EncoderLayerViT(nn.Module):  # 3x32x32 -> 5, post-norm torch.nn blocks
    def __init__(self, classes: int = 5):
        super().__init__()
        self.patch_embed = nn.Conv2d(3, DIM, PATCH, stride=PATCH)
        self.cls_token = nn.Parameter(0.02 * torch.randn(1, 1, DIM))
        self.pos_embed = nn.Parameter(0.02 * torch.randn(1, 1 + GRID * GRID, DIM))
        layer = nn.TransformerEncoderLayer(DIM, HEADS, HIDDEN, activation="gelu",
                                           batch_first=True, norm_first=False)
        self.encoder = nn.TransformerEncoder(layer, 2)  # encoder.layers.N
        self.head = nn.Linear(DIM, classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.patch_embed(x).flatten(2).transpose(1, 2)
        cls = self.cls_token.expand(x.shape[0], -1, -1)
        x = torch.cat([cls, x], dim=1) + self.pos_embed
        return self.head(self.encoder(x)[:, 0])


class TokenMix(nn.Module):
    """x + MLP over the tokens: norm, transpose to [B, D, T], mlp, back."""

    def __init__(self, tokens: int, hidden: int):
        super().__init__()
        self.norm = nn.LayerNorm(DIM)
        self.mlp = nn.Sequential(nn.Linear(tokens, hidden), nn.GELU(), nn.Linear(hidden, tokens))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.mlp(self.norm(x).transpose(1, 2)).transpose(1, 2)


class ChannelMix(nn.Module):
    """x + MLP over the features of each token."""

    def __init__(self, hidden: int):
        super().__init__()
        self.norm = nn.LayerNorm(DIM)
        self.mlp = nn.Sequential(nn.Linear(DIM, hidden), nn.GELU(), nn.Linear(hidden, DIM))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.mlp(self.norm(x))


class MixerBlock(nn.Module):
    def __init__(self):
        super().__init__()
        self.token_mix = TokenMix(GRID * GRID, 32)
        self.channel_mix = ChannelMix(HIDDEN)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.channel_mix(self.token_mix(x))


class Mixer(nn.Module):  # 3x32x32 -> 5
    def __init__(self, classes: int = 5):
        super().__init__()
        self.patch_embed = nn.Conv2d(3, DIM, PATCH, stride=PATCH)
        self.blocks = nn.Sequential(MixerBlock(), MixerBlock())
        self.norm = nn.LayerNorm(DIM)
        self.head = nn.Linear(DIM, classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.patch_embed(x).flatten(2).transpose(1, 2)  # [B, 16, D]
        x = self.norm(self.blocks(x))
        return self.head(x.mean(dim=1))


class MultiBand(nn.Module):  # 4x32x32 (red, green, blue, nir) -> 6
    def __init__(self):
        super().__init__()
        self.conv1 = nn.Conv2d(4, 16, 3, padding=1)
        self.conv2 = nn.Conv2d(16, 32, 3, padding=1)
        self.fc = nn.Linear(32 * 8 * 8, 6)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.max_pool2d(F.relu(self.conv1(x)), 2)  # 16x16
        x = F.max_pool2d(F.relu(self.conv2(x)), 2)  # 8x8
        return self.fc(torch.flatten(x, 1))


def save(module, out, name, shape, classes):
    path = os.path.join(out, name + ".pt")
    module.save(path)
    m = torch.jit.load(path)  # verify: loads back, runs, has the right output shape
    y = m(torch.zeros(2, *shape))
    assert isinstance(y, torch.Tensor) and list(y.shape) == [2, classes], (name, y)
    print(f"wrote {path}  input {list(shape)} -> {list(y.shape)}  "
          f"modules {[n for n, _ in m.named_modules() if n]}")


def build_token_models(out):
    """The ViTs and the MLP-mixer (their random draws in this order)."""
    shape = (3, SIDE, SIDE)
    vit_tokens = {"tokens": {"prefix": 1, "grid": [GRID, GRID]}}
    classes5 = list("abcde")

    save(torch.jit.script(ViT(need_weights=False).eval()), out, "vit_scripted", shape, 5)
    write_card(out, "vit_scripted", 3, SIDE, classes5, vit_tokens)

    # Traced with autograd on, so the trace records MultiheadAttention's
    # differentiable path; under no_grad (as trace's own check runs) the
    # module takes its fused inference fast path instead, hence no check_trace.
    traced = ViT(need_weights=True).eval()
    example = torch.rand(1, *shape)
    with torch.enable_grad():
        module = torch.jit.trace(traced, example, check_trace=False)
    with torch.no_grad():
        assert torch.allclose(module(example), traced(example), atol=1e-5)
    save(module, out, "vit_traced", shape, 5)
    write_card(out, "vit_traced", 3, SIDE, classes5, vit_tokens)

    # Under no_grad this layer takes torch's fused fast path
    # (_transformer_encoder_layer_fwd): self_attn, linear1 and linear2 are not
    # called as modules then; with autograd on they are.
    warnings.filterwarnings("ignore", message="'batch_first' was found in ScriptModule constants")
    save(torch.jit.script(EncoderLayerViT().eval()), out, "vit_encoder_layer", shape, 5)
    write_card(out, "vit_encoder_layer", 3, SIDE, classes5)  # no "tokens": inferred

    save(torch.jit.script(Mixer().eval()), out, "mixer", shape, 5)
    write_card(out, "mixer", 3, SIDE, classes5, {"tokens": {"prefix": 0, "grid": [GRID, GRID]}})


def build(out, only=None):
    """Writes every model of this file into `out` (also called by
    make_test_models.py, the tests' fixture); `only`: just the one named."""
    os.makedirs(out, exist_ok=True)
    torch.manual_seed(0)
    if only is None:
        build_token_models(out)
    save(torch.jit.script(MultiBand().eval()), out, "multiband", (4, SIDE, SIDE), 6)
    write_card(out, "multiband", 4, SIDE, list("uvwxyz"),
               {"bands": {"names": ["red", "green", "blue", "nir"], "composite": [0, 1, 2]}})


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--out", required=True, help="output directory (created)")
    ap.add_argument("--only", choices=["multiband"], help="write just this model")
    args = ap.parse_args()
    build(args.out, args.only)


if __name__ == "__main__":
    torch.set_num_threads(1)
    main()
