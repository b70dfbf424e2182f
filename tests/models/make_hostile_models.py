#!/usr/bin/python3
"""Build TorchScript models that try to leave tensor math (issue 25, point 5)
for the featviz C++ tests, which must see every one of them refused.

    /usr/bin/python3 tests/models/make_hostile_models.py --out DIR

Each reads a file with torch.from_file, the way an uploader could read the
server's tokens file or TLS key and hand the bytes back among the class
scores. The file is DIR/hostile_secret.bin (8 bytes), which the tests write
themselves before loading; nothing here reads or writes it. Writes into DIR,
each with a .card.json (1x8x8 input):

  hostile_outputs.pt    forward appends the file's 8 bytes to its 2 logits
                        (10 classes): the exfiltration of the issue.
  hostile_buffer.pt     forward calls a method, refresh(), that fills the
                        registered buffer `stash` from the file; forward then
                        appends the buffer to its logits (10 classes).
  hostile_helper.pt     forward calls read(), a method (not forward) of its
                        submodule `reader`, which reads the file (10 classes).
  hostile_export.pt     forward is clean (2 classes); a @torch.jit.export
                        method `leak` that forward never calls reads the file
                        inside an `if` inside a loop.
  hostile_fork.pt       forward forks torch.from_file (torch.jit.fork): the
                        read sits in the fork's subgraph (10 classes).
  hostile_setstate.pt   the submodule `cache` has __getstate__/__setstate__;
                        __setstate__ (which torch.jit.load runs while
                        unpickling) reads DIR/hostile_absent.bin, a file that
                        does not exist: a load that ran it would fail with
                        from_file's "No such file", not with the policy's
                        refusal (2 classes).
  hostile_namespace.pt  forward calls torch.ops._test.leaky_relu, an operator
                        registered in LibTorch outside the allowed namespaces.
  hostile_class.pt      forward makes a torch.classes.profiling._ScriptProfile,
                        a TorchBind class outside the allowed ones.

and the counterpart, which must load:

  setstate_quantized.pt a clean classifier (1x8x8 -> 3) whose linear layers
                        are dynamically quantized (torch.ao.quantization):
                        their packed-weight modules have a __setstate__ that
                        only computes (quantized::linear_prepack), and they
                        hold TorchBind objects (quantized packed params).

The script checks what it claims: torch.jit.load of hostile_setstate.pt fails
on from_file of the missing file (so loading does run __setstate__).
"""
import argparse
import json
import os
from typing import Tuple

import torch
import torch.nn as nn

SECRET = "hostile_secret.bin"
ABSENT = "hostile_absent.bin"


class Outputs(nn.Module):
    def __init__(self, secret: str):
        super().__init__()
        self.secret = secret
        self.fc = nn.Linear(64, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.fc(torch.flatten(x, 1))
        leak = torch.from_file(self.secret, False, 8, dtype=torch.uint8).float()
        return torch.cat([y, leak.unsqueeze(0).expand(y.size(0), 8)], 1)


class Buffer(nn.Module):
    def __init__(self, secret: str):
        super().__init__()
        self.secret = secret
        self.fc = nn.Linear(64, 2)
        self.register_buffer("stash", torch.zeros(8))

    def refresh(self):
        self.stash = torch.from_file(self.secret, False, 8, dtype=torch.uint8).float()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.refresh()
        y = self.fc(torch.flatten(x, 1))
        return torch.cat([y, self.stash.unsqueeze(0).expand(y.size(0), 8)], 1)


class Reader(nn.Module):
    def __init__(self, secret: str):
        super().__init__()
        self.secret = secret

    def read(self) -> torch.Tensor:
        return torch.from_file(self.secret, False, 8, dtype=torch.uint8).float()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x


class Helper(nn.Module):
    def __init__(self, secret: str):
        super().__init__()
        self.fc = nn.Linear(64, 2)
        self.reader = Reader(secret)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.fc(torch.flatten(x, 1))
        return torch.cat([y, self.reader.read().unsqueeze(0).expand(y.size(0), 8)], 1)


class Export(nn.Module):
    def __init__(self, secret: str):
        super().__init__()
        self.secret = secret
        self.fc = nn.Linear(64, 2)

    @torch.jit.export
    def leak(self, times: int) -> torch.Tensor:
        out = torch.zeros(8, dtype=torch.uint8)
        for _ in range(times):
            if times > 0:
                out = torch.from_file(self.secret, False, 8, dtype=torch.uint8)
        return out

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(torch.flatten(x, 1))


class Cache(nn.Module):
    def __init__(self, absent: str):
        super().__init__()
        self.absent = absent
        self.register_buffer("stash", torch.zeros(8))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.stash.sum()

    @torch.jit.export
    def __getstate__(self) -> Tuple[torch.Tensor, str, bool]:
        return (self.stash, self.absent, self.training)

    @torch.jit.export
    def __setstate__(self, state: Tuple[torch.Tensor, str, bool]) -> None:
        self.absent = state[1]
        self.stash = torch.from_file(self.absent, False, 8, dtype=torch.uint8).float()
        self.training = state[2]


class Fork(nn.Module):
    def __init__(self, secret: str):
        super().__init__()
        self.secret = secret
        self.fc = nn.Linear(64, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        future = torch.jit.fork(torch.from_file, self.secret, False, 8, dtype=torch.uint8)
        y = self.fc(torch.flatten(x, 1))
        leak = torch.jit.wait(future).float()
        return torch.cat([y, leak.unsqueeze(0).expand(y.size(0), 8)], 1)


class Setstate(nn.Module):
    def __init__(self, absent: str):
        super().__init__()
        self.cache = Cache(absent)
        self.fc = nn.Linear(64, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.cache(torch.flatten(x, 1)))


class Namespace(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(64, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.ops._test.leaky_relu(self.fc(torch.flatten(x, 1)), 0.1)


class ForeignClass(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(64, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        profile = torch.classes.profiling._ScriptProfile()
        profile.enable()
        return self.fc(torch.flatten(x, 1))


def write_card(out, name, classes):
    card = {
        "name": name, "version": "1",
        "description": f"{name}: a test model of featviz's operator allow-list.",
        "input": {"channels": 1, "height": 8, "width": 8, "range": [0.0, 1.0],
                  "mean": [0.0], "std": [1.0]},
        "output": "logits",
        "classes": [str(i) for i in range(classes)],
    }
    with open(os.path.join(out, name + ".card.json"), "w") as f:
        json.dump(card, f, indent=2)
        f.write("\n")


def save(module, out, name, classes):
    # Never loaded back here: loading is what may already run a hostile model.
    path = os.path.join(out, name + ".pt")
    torch.jit.script(module.eval()).save(path)
    write_card(out, name, classes)
    print(f"wrote {path}")


def build(out):
    """Writes every model of this file into `out` (also called by
    make_test_models.py, the tests' fixture)."""
    os.makedirs(out, exist_ok=True)
    torch.manual_seed(0)
    secret = os.path.join(os.path.abspath(out), SECRET)
    absent = os.path.join(os.path.abspath(out), ABSENT)
    if os.path.exists(absent):
        os.remove(absent)
    save(Outputs(secret), out, "hostile_outputs", 10)
    save(Buffer(secret), out, "hostile_buffer", 10)
    save(Helper(secret), out, "hostile_helper", 10)
    save(Export(secret), out, "hostile_export", 2)
    save(Fork(secret), out, "hostile_fork", 10)
    save(Setstate(absent), out, "hostile_setstate", 2)
    save(Namespace(), out, "hostile_namespace", 2)
    save(ForeignClass(), out, "hostile_class", 2)
    clean = nn.Sequential(nn.Flatten(), nn.Linear(64, 16), nn.ReLU(), nn.Linear(16, 3))
    quantized = torch.ao.quantization.quantize_dynamic(clean.eval(), {nn.Linear}, dtype=torch.qint8)
    save(quantized, out, "setstate_quantized", 3)
    # torch.jit.load itself runs __setstate__: it fails on the missing file.
    try:
        torch.jit.load(os.path.join(out, "hostile_setstate.pt"))
    except RuntimeError as e:
        assert ABSENT in str(e), e
    else:
        raise AssertionError("torch.jit.load did not run __setstate__")


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--out", required=True, help="output directory (created)")
    build(ap.parse_args().out)


if __name__ == "__main__":
    main()
