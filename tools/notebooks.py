"""Notebook plumbing for structloss: the three known hazards of nbdev notebooks, solved once, here.

1. `nbdev-clean` keeps outputs but blanks execution counts, and nbval then fails every such cell with
   "Unrun reference cell has outputs". -> `nbval` writes copies without outputs: nbval only checks that every
   cell runs without error (smoke mode), and the stored outputs stay those of the `cpu` profile.
2. nbval ignores nbdev `#|` directives. -> `nbval` turns `#| eval: false` into nbval's `# NBVAL_SKIP`.
3. MyST-NB (Jupyter Book) prints `#|` lines verbatim and does not hide `#| hide` cells. -> `book` writes copies
   whose directives become MyST-NB cell tags (`remove-cell`, `remove-input`, `remove-output`) and whose `#|`
   lines are stripped.

Usage: python tools/notebooks.py nbval DEST | book DEST | execute [NOTEBOOK ...]
"""
from __future__ import annotations
import os, re, shutil, sys, time
from pathlib import Path
import nbformat

ROOT = Path(__file__).resolve().parent.parent
NBS = ROOT / "nbs"
_DIRECTIVE = re.compile(r"^\s*#\|\s*(.*?)\s*$")


def chapters(nbs: Path = NBS) -> list[Path]:
    "The book's notebooks in reading order (file names start with their number; `index` first)."
    found = sorted(p for p in nbs.glob("*.ipynb") if not p.name.startswith((".", "_")))
    return sorted(found, key=lambda p: (p.stem != "index", p.name))


def split_directives(source: str) -> tuple[dict[str, str], str]:
    "nbdev/Quarto `#|` directives at the top of a cell, as {name: value}, and the source without them."
    lines, directives = source.splitlines(), {}
    while lines and (m := _DIRECTIVE.match(lines[0])):
        text = m.group(1)
        name, sep, value = text.partition(":")                      # Quarto style: `eval: false`
        if not sep or " " in name.strip(): name, _, value = text.partition(" ")   # nbdev style: `default_exp core`
        directives[name.strip()] = value.strip()
        lines.pop(0)
    return directives, "\n".join(lines).lstrip("\n")


def _false(directives: dict[str, str], name: str) -> bool:
    return directives.get(name, "").lower() == "false"


def _rewrite_copies(dest: Path, nbs: Path, rewrite_cell) -> list[Path]:
    "Write every chapter of `nbs` to `dest`, each code cell passed through `rewrite_cell(cell, directives, body)`."
    dest.mkdir(parents=True, exist_ok=True)
    written = []
    for path in chapters(nbs):
        nb = nbformat.read(path, as_version=4)
        for cell in nb.cells:
            if cell.cell_type == "code": rewrite_cell(cell, *split_directives(cell.source))
        nb.cells = [c for c in nb.cells if c.cell_type != "code" or c.source.strip() or c.outputs]
        nbformat.write(nb, dest / path.name)
        written.append(dest / path.name)
    return written


def _for_nbval(cell, directives, body) -> None:
    cell.outputs, cell.execution_count = [], None
    if _false(directives, "eval"): cell.source = "# NBVAL_SKIP\n" + cell.source


def _for_book(cell, directives, body) -> None:
    tags = set(cell.metadata.get("tags", []))
    if "hide" in directives or "default_exp" in directives or _false(directives, "include"): tags.add("remove-cell")
    if _false(directives, "echo"): tags.add("remove-input")
    if _false(directives, "output"): tags.add("remove-output")
    cell.source = body
    if tags: cell.metadata["tags"] = sorted(tags)


def prepare_nbval(dest: Path, nbs: Path = NBS) -> list[Path]:
    "Copies for nbval: outputs and execution counts cleared, `#| eval: false` cells marked `# NBVAL_SKIP`."
    return _rewrite_copies(dest, nbs, _for_nbval)


def prepare_book(dest: Path, nbs: Path = NBS) -> list[Path]:
    "Copies for Jupyter Book: directives become cell tags, `#|` lines are stripped, outputs are kept."
    return _rewrite_copies(dest, nbs, _for_book)


def execute(paths: list[Path], timeout: int = 1800) -> None:
    "Run notebooks in place (in the profile given by $STRUCTLOSS_PROFILE, `cpu` by default) to store their outputs."
    from nbclient import NotebookClient
    os.environ.setdefault("STRUCTLOSS_PROFILE", "cpu")
    os.environ.pop("MPLBACKEND", None)       # kernels must use the inline backend, or figures are not stored
    for path in paths:
        t0 = time.perf_counter()
        nb = nbformat.read(path, as_version=4)
        NotebookClient(nb, timeout=timeout, kernel_name="python3",
                       resources={"metadata": {"path": str(path.parent)}}).execute()
        nbformat.write(nb, path)
        print(f"executed {path.relative_to(ROOT)} in {time.perf_counter() - t0:.0f} s "
              f"(profile {os.environ['STRUCTLOSS_PROFILE']})", flush=True)


if __name__ == "__main__":
    if len(sys.argv) < 2 or sys.argv[1] not in ("nbval", "book", "execute"):
        sys.exit(__doc__)
    command, args = sys.argv[1], sys.argv[2:]
    if command == "execute":
        execute([Path(a).resolve() for a in args] or chapters())
    else:
        if len(args) != 1: sys.exit(f"usage: python tools/notebooks.py {command} DEST")
        dest = Path(args[0]).resolve()
        shutil.rmtree(dest, ignore_errors=True)
        out = (prepare_nbval if command == "nbval" else prepare_book)(dest)
        print(f"{command}: wrote {len(out)} notebooks to {dest}")
