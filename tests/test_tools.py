"The notebook plumbing in tools/: directives parsed as nbdev does, and the three hazards handled."
import sys
from pathlib import Path
import nbformat, pytest

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tools"))
from notebooks import prepare_book, prepare_nbval, split_directives  # noqa: E402

@pytest.mark.parametrize("source, directives, body", [
    ("#| default_exp core\nimport torch", {"default_exp": "core"}, "import torch"),
    ("#| hide\n#| eval: false\n\nx = 1", {"hide": "", "eval": "false"}, "x = 1"),
    ("#|export\nx = 1", {"export": ""}, "x = 1"),
    ("x = 1\n#| hide", {}, "x = 1\n#| hide"),               # only leading lines are directives
])
def test_split_directives(source, directives, body):
    assert split_directives(source) == (directives, body)

@pytest.fixture
def notebook_dir(tmp_path):
    cells = [nbformat.v4.new_code_cell("#| default_exp demo"),
             nbformat.v4.new_code_cell("#| hide\nassert True"),
             nbformat.v4.new_code_cell("#| eval: false\nraise SystemExit"),
             nbformat.v4.new_code_cell("#| echo: false\nprint(1)"),
             nbformat.v4.new_code_cell("#| export\ndef f(): return 1"),
             nbformat.v4.new_markdown_cell("# Title")]
    cells[3].outputs = [nbformat.v4.new_output("stream", text="1\n")]   # execution_count None, as nbdev-clean leaves it
    (tmp_path / "nbs").mkdir()
    nbformat.write(nbformat.v4.new_notebook(cells=cells), tmp_path / "nbs" / "05_demo.ipynb")
    return tmp_path

def test_nbval_copies_have_no_outputs_and_skip_eval_false(notebook_dir):
    out = prepare_nbval(notebook_dir / "nbval", nbs=notebook_dir / "nbs")
    cells = nbformat.read(out[0], as_version=4).cells
    assert all(not c.outputs for c in cells if c.cell_type == "code")
    assert cells[2].source.startswith("# NBVAL_SKIP\n")
    assert not cells[1].source.startswith("# NBVAL_SKIP")                 # hidden tests still run

def test_book_copies_turn_directives_into_tags(notebook_dir):
    out = prepare_book(notebook_dir / "book", nbs=notebook_dir / "nbs")
    cells = nbformat.read(out[0], as_version=4).cells
    assert all("#|" not in c.source for c in cells)
    assert len(cells) == 5                                               # the empty default_exp cell is dropped
    tags = {c.source: c.metadata.get("tags", []) for c in cells}
    assert tags["assert True"] == ["remove-cell"] and tags["print(1)"] == ["remove-input"]
    assert tags["def f(): return 1"] == [] and tags["raise SystemExit"] == []
    assert cells[2].outputs                                              # stored outputs are kept

def test_book_copies_restore_glue_names_stripped_by_nbdev_clean(tmp_path):
    from notebooks import restore_glue
    cell = nbformat.v4.new_code_cell('x = glue("acc", 0.5)\nglue(\'who\', "SupCon")')
    rec = "application/papermill.record/text/plain"
    cell.outputs = [nbformat.v4.new_output("display_data", data={rec: "0.5"}),
                    nbformat.v4.new_output("display_data", data={rec: "'SupCon'"})]   # metadata {}: cleaned
    assert restore_glue(cell) == 2
    assert [o.metadata["scrapbook"]["name"] for o in cell.outputs] == ["acc", "who"]
    assert restore_glue(cell) == 0                                       # already named: nothing to do
    cell2 = nbformat.v4.new_code_cell("for k in ks: glue(f'acc_{k}', 1)")   # names not literal: left alone
    cell2.outputs = [nbformat.v4.new_output("display_data", data={rec: "1"})]
    assert restore_glue(cell2) == 0 and "scrapbook" not in cell2.outputs[0].metadata

def test_build_execute_caches_by_source(tmp_path, capsys):
    from notebooks import build_execute
    nbs = tmp_path / "nbs"; nbs.mkdir()
    nb = nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell("print(6 * 7)")])
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    nbformat.write(nb, nbs / "01_a.ipynb")
    out = tmp_path / "executed"
    build_execute(out, nbs=nbs)
    assert "42" in nbformat.read(out / "01_a.ipynb", as_version=4).cells[0].outputs[0].text
    assert not nbformat.read(nbs / "01_a.ipynb", as_version=4).cells[0].outputs   # the source is untouched
    build_execute(out, nbs=nbs)
    assert "unchanged, cached" in capsys.readouterr().out
    nb.cells[0].source = "print(6 * 8)"; nbformat.write(nb, nbs / "01_a.ipynb")
    build_execute(out, nbs=nbs)
    assert "48" in nbformat.read(out / "01_a.ipynb", as_version=4).cells[0].outputs[0].text

def test_book_copies_turn_glued_numpy_scalars_into_numbers():
    from notebooks import plain_glue_numbers
    rec = "application/papermill.record/text/plain"
    cell = nbformat.v4.new_code_cell('glue("a", np.float64(87.84)); glue("b", "np.float64 stays")')
    cell.outputs = [nbformat.v4.new_output("display_data", data={rec: "np.float64(87.84)"}),
                    nbformat.v4.new_output("display_data", data={rec: "'np.float64 stays'"}),
                    nbformat.v4.new_output("display_data", data={rec: "np.int64(3)"})]
    assert plain_glue_numbers(cell) == 2
    assert [o.data[rec] for o in cell.outputs] == ["87.84", "'np.float64 stays'", "3"]


def _first_code_cells():
    from notebooks import chapters
    for path in chapters():
        cells = [c for c in nbformat.read(path, as_version=4).cells if c.cell_type == "code"]
        if not cells: continue                                    # prose-only pages (glossary, bibliography)
        if cells[0].source.startswith("#| default_exp"): cells = cells[1:]
        yield path.name, cells[0].source


def test_every_chapter_starts_with_the_colab_cell():
    from notebooks import COLAB_CELL
    wrong = [name for name, first in _first_code_cells() if first != COLAB_CELL]
    assert not wrong, f"chapters whose first code cell is not the Colab install cell: {wrong}"


def test_colab_cell_in_a_simulated_colab(monkeypatch):
    """As if on Colab (no network, a GPU): one pip install of the repository; the `cpu` profile on
    the CPU by default, the `colab` profile on the GPU when the reader chose it first."""
    import os, subprocess, types
    import torch
    from notebooks import COLAB_CELL, COLAB_INSTALL
    import structloss.core as core
    calls, env = [], ("STRUCTLOSS_INSTALLED", "STRUCTLOSS_PROFILE", "STRUCTLOSS_DEVICE")
    monkeypatch.setitem(sys.modules, "google.colab", types.ModuleType("google.colab"))
    monkeypatch.setattr(subprocess, "run", lambda cmd, check: calls.append(cmd))
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    for var in env: monkeypatch.delenv(var, raising=False)
    exec(COLAB_CELL, {})
    exec(COLAB_CELL, {})                                          # the cell run twice
    assert calls == [[sys.executable, "-m", "pip", "install", "-q", COLAB_INSTALL]]
    assert COLAB_INSTALL.startswith("structloss[colab] @ git+https://github.com/")
    assert core.get_profile() == "cpu" and core.get_device() == torch.device("cpu")
    # a fresh runtime where the reader ran `%env STRUCTLOSS_PROFILE=colab` first
    for var in env: monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("STRUCTLOSS_PROFILE", "colab")
    exec(COLAB_CELL, {})
    assert len(calls) == 2 and core.get_profile() == "colab"
    assert core.get_device() == torch.device("cuda")              # the GPU, no device override
    from structloss.experiments import get_experiment
    exp = get_experiment("ce_cifar10").resolve(core.get_profile())
    assert exp.train.get("amp", "auto") in ("auto", True) and "device" not in exp.train
    monkeypatch.delitem(sys.modules, "google.colab")
    for var in env: monkeypatch.delenv(var, raising=False)
    exec(COLAB_CELL, {})                                          # not on Colab: nothing happens
    assert len(calls) == 2 and not any(v in os.environ for v in env)
