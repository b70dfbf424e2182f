# %% [markdown]
# # featviz from a notebook
#
# A notebook in the "percent" format: Jupyter (with jupytext), VS Code and
# PyCharm open it as cells; `python notebook.py` runs it top to bottom (the
# tests do, against a real server). It needs an installed client (`pip
# install ./client/python`) and a server: `$FEATVIZ_SERVER`, else
# 127.0.0.1:8980. It runs in place in a checkout: this folder holds no copy
# of `featviz_client`, so the installed one is imported. Pictures go to
# `$FEATVIZ_NOTEBOOK_OUT` (default `featviz_notebook/`) as well as into the
# notebook.

# %%
import os
from pathlib import Path

from featviz_client import Client, grid

out = Path(os.environ.get("FEATVIZ_NOTEBOOK_OUT", "featviz_notebook"))
out.mkdir(parents=True, exist_ok=True)
fv = Client()  # $FEATVIZ_SERVER or 127.0.0.1:8980
[m.name for m in fv.list_models()]

# %% [markdown]
# ## One render per digit class
# `result` as the last line of a cell shows the labelled grid
# (`_repr_png_`); `result.show(path)` writes it too. The callback sees each
# progress event, with a preview of the images when `preview=True`.

# %%
objective = " + ".join(f"logit({c}, batch={c})" for c in range(10))
previews = []
result = fv.render("mnist_classifier", objective, batch=10, steps=128, seed=0,
                   preview=True, progress_every=32,
                   on_progress=lambda p: previews.append(p.preview()))
result.show(out / "classes.png")
result

# %%
# The last preview: the batch part-way through.
previews[-1].save(out / "preview.png")
previews[-1]

# %% [markdown]
# ## Arrays for plotting
# `images` is float32 [B, C, H, W]; `images_hwc` is [B, H, W, C] for
# matplotlib's `imshow`; `probs` is [B, classes].

# %%
print(result.images.shape, result.images_hwc.shape)
print("top class per image:", result.probs.argmax(1))

# %% [markdown]
# ## Which conv2 channels feed class 3, and what excites them
# `find_circuit` scores every channel on real digits of the class and queues
# the detectors' visualisations as jobs; `wait` collects them.

# %%
circuit = fv.find_circuit("mnist_classifier", "conv2", classes=[3], top_k=3, steps=128, seed=0)
row = circuit.classes[0]
detectors = [fv.wait(d.job_id) for d in row.detectors]
# The circuit's renders carry PNGs only; to_pil() decodes them.
sheet = grid([d.to_pil()[0] for d in detectors],
             labels=[f"conv2:{d.channel} {d.score:.2f}" for d in row.detectors])
sheet.save(out / "circuit_3.png")
sheet

# %%
top = fv.top_examples("mnist_classifier", "conv2", channels=[row.detectors[0].channel],
                      top_n=8, dataset=circuit.dataset)
unit = top.units[0]
print("dataset images that excite it most:", unit.indices, unit.values.round(2))

# %% [markdown]
# ## The server

# %%
stats = fv.server_stats()
print(f"{stats.jobs_succeeded} jobs succeeded, {stats.cache_hits} cache hits")
print(len(fv.list_jobs()), "jobs listed")
fv.close()
