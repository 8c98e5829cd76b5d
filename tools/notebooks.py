"""Notebook plumbing for structloss: the three known hazards of nbdev notebooks, solved once, here.

1. `nbdev-clean` keeps outputs but blanks execution counts, and nbval then fails every such cell with
   "Unrun reference cell has outputs". -> `nbval` writes copies without outputs: nbval only checks that every
   cell runs without error (smoke mode), and the stored outputs stay those of the `cpu` profile.
2. nbval ignores nbdev `#|` directives. -> `nbval` turns `#| eval: false` into nbval's `# NBVAL_SKIP`.
3. MyST-NB (Jupyter Book) prints `#|` lines verbatim and does not hide `#| hide` cells. -> `book` writes copies
   whose directives become MyST-NB cell tags (`remove-cell`, `remove-input`, `remove-output`; `#| headline`
   becomes `headline`, a result the browser check keeps within the column) and whose `#|` lines are stripped.
   `nbdev-clean` also strips the output metadata that names MyST-NB `glue` values; `book` restores it.

The book command executes into the build, not the sources: `build-execute DEST` runs every chapter whose code
(or the profile) changed since its last run and writes the executed copy to DEST (a cache keyed by a hash of
the code cells and the profile); `execute` stores outputs in nbs/ (the contributor step).

Usage: python tools/notebooks.py nbval DEST | book DEST [--from DIR] | execute [NOTEBOOK ...]
                                 | build-execute DEST [--rerun]
"""
from __future__ import annotations
import hashlib, json, os, re, shutil, sys, time
from pathlib import Path
import nbformat

ROOT = Path(__file__).resolve().parent.parent
NBS = ROOT / "nbs"
_DIRECTIVE = re.compile(r"^\s*#\|\s*(.*?)\s*$")

# The first code cell of every chapter (after `#| default_exp`): on Colab it installs structloss from its
# repository and runs the `cpu` profile on the CPU (the `colab` profile when the reader selected it
# first); anywhere else it does nothing. Hidden in the book.
COLAB_INSTALL = "structloss[colab] @ git+https://github.com/structloss/structloss"
COLAB_CELL = """#| hide
# On Colab: install structloss; run the book's `cpu` profile on the CPU, as printed.
# The papers' protocol on the GPU: `%env STRUCTLOSS_PROFILE=colab` before this cell.
import os, subprocess, sys
if "google.colab" in sys.modules and not os.environ.get("STRUCTLOSS_INSTALLED"):
    pkg = "{COLAB_INSTALL}"
    subprocess.run([sys.executable, "-m", "pip", "install", "-q", pkg], check=True)
    os.environ["STRUCTLOSS_INSTALLED"] = "1"
    if os.environ.setdefault("STRUCTLOSS_PROFILE", "cpu") == "cpu":
        os.environ.setdefault("STRUCTLOSS_DEVICE", "cpu")""".replace("{COLAB_INSTALL}", COLAB_INSTALL)


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


_GLUE_MIME = "application/papermill.record/"
_GLUE_CALL = re.compile(r"""\bglue\(\s*["']([^"'{}]+)["']""")


def restore_glue(cell) -> int:
    """Give MyST-NB back the names of a cell's `glue` outputs when `nbdev-clean` has stripped them.

    `glue(name, value)` stores `value` as an output whose metadata `{"scrapbook": {"name": ...}}` names it, and
    `nbdev-clean` drops output metadata unless `[tool.nbdev] allowed_out_metadata_keys = ["scrapbook"]` is set:
    the book then cannot find the value of {glue:text}`name`. The names are recovered from the cell's literal
    `glue("name", ...)` calls, in order; returns how many outputs were renamed (0 when the counts differ,
    and the strict book build reports the missing key)."""
    lost = [o for o in cell.get("outputs", []) if o.get("output_type") == "display_data"
            and any(k.startswith(_GLUE_MIME) for k in o.get("data", {}))
            and "scrapbook" not in o.get("metadata", {})]
    names = _GLUE_CALL.findall(cell.source)
    if not lost or len(names) != len(lost): return 0
    for out, name in zip(lost, names):
        out.setdefault("metadata", {})["scrapbook"] = {"name": name, "mime_prefix": _GLUE_MIME}
    return len(lost)


_NUMPY_SCALAR = re.compile(r"^np\.(?:float|int|uint)\d*\((.*)\)$")


def plain_glue_numbers(cell) -> int:
    """Glued NumPy scalars as plain numbers: with NumPy 2 the text of `glue("x", np.float64(0.5))` is
    `np.float64(0.5)`, which {glue:text}`x:.2f` cannot format (MyST-NB warns, the strict build fails).
    Returns how many values were rewritten."""
    key, n = _GLUE_MIME + "text/plain", 0
    for out in cell.get("outputs", []):
        text = out.get("data", {}).get(key)
        if isinstance(text, list): text = "".join(text)
        if isinstance(text, str) and (m := _NUMPY_SCALAR.match(text.strip())):
            out["data"][key] = m.group(1); n += 1
    return n


def _for_book(cell, directives, body) -> None:
    restore_glue(cell)
    plain_glue_numbers(cell)
    tags = set(cell.metadata.get("tags", []))
    if "hide" in directives or "default_exp" in directives or _false(directives, "include"): tags.add("remove-cell")
    if _false(directives, "echo"): tags.add("remove-input")
    if _false(directives, "output"): tags.add("remove-output")
    if "headline" in directives: tags.add("headline")          # a headline result: tools/site_check.py
                                                                # fails it when wider than the column
    cell.source = body
    if tags: cell.metadata["tags"] = sorted(tags)


def prepare_nbval(dest: Path, nbs: Path = NBS) -> list[Path]:
    "Copies for nbval: outputs and execution counts cleared, `#| eval: false` cells marked `# NBVAL_SKIP`."
    return _rewrite_copies(dest, nbs, _for_nbval)


def prepare_book(dest: Path, nbs: Path = NBS) -> list[Path]:
    "Copies for Jupyter Book: directives become cell tags, `#|` lines are stripped, outputs are kept."
    return _rewrite_copies(dest, nbs, _for_book)


def _run(nb, cwd: Path, timeout: int, label: str, slow_s: float = 30.0) -> float:
    "Execute `nb` in memory with working directory `cwd`; print every cell slower than `slow_s`. Returns seconds."
    from nbclient import NotebookClient
    code = [c for c in nb.cells if c.cell_type == "code"]
    started = {}
    def start(cell, cell_index, **_): started[cell_index] = time.perf_counter()
    def done(cell, cell_index, **_):
        took = time.perf_counter() - started.get(cell_index, time.perf_counter())
        if took >= slow_s:
            k = next((i for i, c in enumerate(code, 1) if c is cell), "?")
            print(f"    {label}: code cell {k}/{len(code)} took {took:.0f} s", flush=True)
    t0 = time.perf_counter()
    NotebookClient(nb, timeout=timeout, kernel_name="python3", on_cell_execute=start,
                   on_cell_executed=done, resources={"metadata": {"path": str(cwd)}}).execute()
    return time.perf_counter() - t0


def record_time(path: Path, seconds: float, profile: str) -> None:
    """Add a chapter's execution time to `runs/chapters/<profile>.json` (`$STRUCTLOSS_RUNS` moves
    `runs/`): the measured times chapter 41 reports for a run on Colab."""
    runs = Path(os.environ.get("STRUCTLOSS_RUNS") or ROOT / "runs")
    out = runs / "chapters" / f"{profile}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    times = json.loads(out.read_text()) if out.exists() else {}
    times[path.stem] = {"seconds": round(seconds, 1), "cpus": os.cpu_count(),
                        "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())}
    out.write_text(json.dumps(times, indent=1, sort_keys=True) + "\n")


def execute(paths: list[Path], timeout: int = 1800) -> None:
    "Run notebooks in place (in the profile given by $STRUCTLOSS_PROFILE, `cpu` by default) to store their outputs."
    os.environ.setdefault("STRUCTLOSS_PROFILE", "cpu")
    os.environ["STRUCTLOSS_BOOK"] = "1"      # stored outputs must match the prose: hidden checks assert it
    os.environ.pop("MPLBACKEND", None)       # kernels must use the inline backend, or figures are not stored
    for path in paths:
        nb = nbformat.read(path, as_version=4)
        took = _run(nb, path.parent, timeout, path.name)
        nbformat.write(nb, path)
        record_time(path, took, os.environ["STRUCTLOSS_PROFILE"])
        print(f"executed {path.relative_to(ROOT)} in {took:.0f} s "
              f"(profile {os.environ['STRUCTLOSS_PROFILE']})", flush=True)


def source_key(path: Path, profile: str) -> str:
    "Hash of a notebook's cells (type and source, not outputs) and the profile: the execution cache's key."
    nb = nbformat.read(path, as_version=4)
    cells = [[c.cell_type, c.source] for c in nb.cells]
    return hashlib.sha256(json.dumps([profile, cells]).encode()).hexdigest()


def build_execute(dest: Path, nbs: Path = NBS, rerun: bool = False, timeout: int = 1800) -> list[Path]:
    """Execute every chapter of `nbs` into `dest` (never into `nbs`), skipping those whose code and profile are
    unchanged since their last execution there. Prints each chapter's progress and time."""
    os.environ.setdefault("STRUCTLOSS_PROFILE", "cpu")
    os.environ.pop("MPLBACKEND", None)
    profile = os.environ["STRUCTLOSS_PROFILE"]
    dest.mkdir(parents=True, exist_ok=True)
    paths, total, ran = chapters(nbs), 0.0, 0
    for i, path in enumerate(paths, 1):
        out, stamp = dest / path.name, dest / (path.stem + ".key")
        key = source_key(path, profile)
        tag = f"[{i:2d}/{len(paths)}] {path.name}"
        if not rerun and out.exists() and stamp.exists() and stamp.read_text() == key:
            print(f"{tag}: unchanged, cached", flush=True); continue
        print(f"{tag}: executing (profile {profile}) ...", flush=True)
        nb = nbformat.read(path, as_version=4)
        stamp.unlink(missing_ok=True)
        took = _run(nb, path.parent, timeout, path.name)
        nbformat.write(nb, out)
        stamp.write_text(key)
        record_time(path, took, profile)
        total, ran = total + took, ran + 1
        print(f"{tag}: executed in {took:.0f} s", flush=True)
    print(f"executed {ran} of {len(paths)} chapters in {total:.0f} s; the others were unchanged", flush=True)
    return [dest / p.name for p in paths]


if __name__ == "__main__":
    if len(sys.argv) < 2 or sys.argv[1] not in ("nbval", "book", "execute", "build-execute"):
        sys.exit(__doc__)
    command, args = sys.argv[1], sys.argv[2:]
    if command == "execute":
        execute([Path(a).resolve() for a in args] or chapters())
    elif command == "build-execute":
        if not args: sys.exit("usage: python tools/notebooks.py build-execute DEST [--rerun]")
        build_execute(Path(args[0]).resolve(), rerun="--rerun" in args[1:])
    else:
        source = NBS
        if "--from" in args:
            i = args.index("--from"); source = Path(args[i + 1]).resolve(); del args[i:i + 2]
        if len(args) != 1: sys.exit(f"usage: python tools/notebooks.py {command} DEST [--from DIR]")
        dest = Path(args[0]).resolve()
        shutil.rmtree(dest, ignore_errors=True)
        out = (prepare_nbval if command == "nbval" else prepare_book)(dest, source)
        print(f"{command}: wrote {len(out)} notebooks to {dest}")
