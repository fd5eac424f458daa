r"""Executes experiments/lzn_demo.ipynb and writes its figures to docs/ (the README figure and docs/demo.md's).

    python -m lzn_jax.main --config=configs/digits_joint.py --workdir=workdirs/digits_joint
    python experiments/render_demo.py --workdir=workdirs/digits_joint

With --workdir the notebook loads that finished run; without it, it trains for LZN_DEMO_STEPS (default 300)
steps first. Writes docs/results/demo.json (the notebook's printed numbers, which docs/demo.md quotes),
docs/demo_<n>[a|b].png (the pictures of the n-th figure cell), docs/demo.png (the
README's strip: zones, samples, reconstructions, interpolation) and prints each cell's text output.
"""

from __future__ import annotations

import argparse
import base64
import io
import os
import pathlib
import sys

import nbclient
import nbformat
from PIL import Image

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import results  # noqa: E402  (experiments/results.py)

ROOT = pathlib.Path(__file__).resolve().parents[1]
NOTEBOOK = ROOT / "experiments" / "lzn_demo.ipynb"
README_FIGURES = (1, 2, 4, 5)  # figure cells for the README strip: zones, samples, reconstruction, interpolation


def execute(workdir: str | None) -> nbformat.NotebookNode:
    if workdir:
        os.environ["LZN_DEMO_WORKDIR"] = os.path.abspath(workdir)
    notebook = nbformat.read(NOTEBOOK, as_version=4)
    client = nbclient.NotebookClient(notebook, timeout=1800, kernel_name="python3",
                                     resources={"metadata": {"path": str(NOTEBOOK.parent)}})  # fmt: skip
    client.execute()
    return notebook


def figures(notebook) -> list[list[Image.Image]]:
    """The PNGs each figure-tagged cell drew, one list per cell."""
    out = []
    for cell in notebook.cells:
        if "figure" in cell.metadata.get("tags", []):
            pngs = [o["data"]["image/png"] for o in cell.outputs if "image/png" in o.get("data", {})]
            out.append([Image.open(io.BytesIO(base64.b64decode(png))).convert("RGB") for png in pngs])
    return out


def stack(images: list[Image.Image], width: int = 760) -> Image.Image:
    """Images scaled to one width, stacked top to bottom on white, in a 256-colour palette (a small PNG)."""
    scaled = [im.resize((width, round(im.height * width / im.width)), Image.LANCZOS) for im in images]
    strip = Image.new("RGB", (width, sum(im.height for im in scaled)), "white")
    top = 0
    for im in scaled:
        strip.paste(im, (0, top))
        top += im.height
    return strip.quantize(256, method=Image.Quantize.FASTOCTREE, dither=Image.Dither.NONE)


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--workdir", default="", help="a finished digits_joint run to load (default: train)")
    parser.add_argument("--out", default=str(ROOT / "docs"))
    args = parser.parse_args()
    notebook = execute(args.workdir)
    printed = "".join(output["text"] for cell in notebook.cells for output in cell.get("outputs", [])
                      if output.get("name") == "stdout")  # fmt: skip
    print(printed, end="")
    results.write("demo", {"workdir": args.workdir, "notebook_stdout": printed.splitlines()})  # docs/demo.md's numbers
    drawn = figures(notebook)
    os.makedirs(args.out, exist_ok=True)
    for n, images in enumerate(drawn):
        for j, image in enumerate(images):
            image.save(os.path.join(args.out, f"demo_{n}{'abc'[j] if len(images) > 1 else ''}.png"), optimize=True)
    stack([drawn[n][0] for n in README_FIGURES]).save(os.path.join(args.out, "demo.png"), optimize=True)
    print(f"wrote the figures of {len(drawn)} cells and demo.png to {args.out}")


if __name__ == "__main__":
    main()
