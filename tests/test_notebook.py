"""experiments/lzn_demo.ipynb: committed without outputs, and runs top to bottom on CPU with a short training run."""

import os
import pathlib

import nbclient
import nbformat
import pytest

NOTEBOOK = pathlib.Path(__file__).resolve().parents[1] / "experiments" / "lzn_demo.ipynb"
DEMO_STEPS = 4  # enough for every cell to run; the pictures need the notebook's default of a few hundred


def read_notebook():
    return nbformat.read(NOTEBOOK, as_version=4)


def figure_cells(notebook):
    return [cell for cell in notebook.cells if "figure" in cell.metadata.get("tags", [])]


def test_committed_notebook_has_no_outputs():
    notebook = read_notebook()
    nbformat.validate(notebook)
    dirty = [i for i, cell in enumerate(notebook.cells)
             if cell.cell_type == "code" and (cell.outputs or cell.execution_count is not None)]  # fmt: skip
    assert not dirty, f"cells {dirty} of {NOTEBOOK.name} hold outputs: clear them before committing"


def test_notebook_has_a_parameter_cell_read_from_the_environment():
    notebook = read_notebook()
    tagged = [cell for cell in notebook.cells if "parameters" in cell.metadata.get("tags", [])]
    assert len(tagged) == 1
    assert "LZN_DEMO_STEPS" in tagged[0].source and "LZN_DEMO_WORKDIR" in tagged[0].source
    assert len(figure_cells(notebook)) >= 5


@pytest.mark.slow
def test_notebook_runs_top_to_bottom_and_draws_every_figure(monkeypatch, tmp_path):
    monkeypatch.setenv("LZN_DEMO_STEPS", str(DEMO_STEPS))
    monkeypatch.delenv("LZN_DEMO_WORKDIR", raising=False)
    monkeypatch.setenv("JAX_PLATFORMS", "cpu")
    monkeypatch.setenv("TMPDIR", str(tmp_path))  # the notebook trains into a tempfile.mkdtemp() work directory
    notebook = read_notebook()
    client = nbclient.NotebookClient(notebook, timeout=600, kernel_name="python3",
                                     resources={"metadata": {"path": str(NOTEBOOK.parent)}})  # fmt: skip
    client.execute()  # raises CellExecutionError, with the cell and its traceback, if any cell fails

    errors = [out for cell in notebook.cells for out in cell.get("outputs", []) if out.output_type == "error"]
    assert not errors
    for cell in figure_cells(notebook):
        images = [out for out in cell.outputs if "image/png" in out.get("data", {})]
        assert images, f"this figure cell drew nothing:\n{cell.source[:300]}"
    trained = [d for d in os.listdir(tmp_path) if d.startswith("lzn_demo_")]
    assert len(trained) == 1
    assert sorted(os.listdir(tmp_path / trained[0] / "checkpoints")) == [str(DEMO_STEPS)]
