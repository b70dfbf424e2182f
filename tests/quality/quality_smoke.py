#!/usr/bin/python3
"""featviz-quality end to end on the bundled classifier and real MNIST digits,
with few steps: one table row per parameterisation after the dataset's own,
each with numbers in every column, a contact sheet each, and precise errors.

  quality_smoke.py FEATVIZ_QUALITY MODEL.pt MNIST_DIR OUT_DIR
"""
import os
import re
import subprocess
import sys


def main():
    tool, model, mnist, out = sys.argv[1:5]
    os.makedirs(out, exist_ok=True)
    run = subprocess.run(
        [tool, model, "--dataset", mnist, "--held_out", "9000:10000", "--classes",
         "--steps", "24", "--repeats", "2", "--sheets", out],
        capture_output=True, text=True, timeout=600)
    assert run.returncode == 0, run.stderr
    rows = [line for line in run.stdout.splitlines() if line.startswith("| mnist_classifier")]
    assert [r.split("|")[3].strip() for r in rows] == ["dataset images", "pixel", "fft", "maco"], rows
    for row in rows[1:]:
        cells = [c.strip() for c in row.split("|")[1:-1]]
        assert cells[3] == "20", row  # ten classes, two pictures each
        median = float(cells[4].split()[0])
        assert median > 0.2, row  # 24 steps already drive the logits up
        assert float(cells[5]) >= 0 and float(cells[6]) >= 0, row
        name = f"mnist_classifier_classes_{cells[2]}.png"
        with open(os.path.join(out, name), "rb") as f:
            assert f.read(8) == b"\x89PNG\r\n\x1a\n", name

    bad = subprocess.run([tool, model, "--dataset", mnist, "--held_out", "5:3", "--classes"],
                         capture_output=True, text=True, timeout=120)
    assert bad.returncode == 1 and "--held_out" in bad.stderr and "'5:3'" in bad.stderr, bad.stderr
    bad = subprocess.run([tool, model, "--dataset", mnist, "--layer", "nope"],
                         capture_output=True, text=True, timeout=120)
    assert bad.returncode == 1 and "nope" in bad.stderr, bad.stderr
    print("ok:", len(rows), "rows")


if __name__ == "__main__":
    main()
