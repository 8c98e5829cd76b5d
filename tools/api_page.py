"""Write the book's API reference (MyST markdown) from the package's docstrings and inline argument comments.

Usage: python tools/api_page.py OUT.md
"""
from __future__ import annotations
import importlib, inspect, re, sys
from pathlib import Path
from fastcore.docments import docments

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tools"))
from notebooks import chapters, split_directives  # noqa: E402
import nbformat  # noqa: E402


def modules_in_reading_order() -> list[tuple[str, str]]:
    "(module, notebook stem) for every notebook that exports a module, in the book's order."
    found = []
    for path in chapters():
        for cell in nbformat.read(path, as_version=4).cells:
            if cell.cell_type == "code":
                directives, _ = split_directives(cell.source)
                if "default_exp" in directives:
                    found.append((directives["default_exp"], path.stem)); break
    return found


class _Source:
    "A default value shown as source code: a class or function by its name, not its `<class ...>` repr."
    def __init__(self, value): self.text = getattr(value, "__qualname__", None) or repr(value)
    def __repr__(self): return self.text


def _signature(obj) -> str:
    try: sig = inspect.signature(obj)
    except (TypeError, ValueError): return ""
    def clean(p):
        p = p.replace(annotation=inspect.Parameter.empty)
        if p.default is not inspect.Parameter.empty and repr(p.default).startswith("<"):
            p = p.replace(default=_Source(p.default))     # valid Python, so the code block lexes
        return p
    params = [clean(p) for p in sig.parameters.values() if p.name != "self"]
    return str(sig.replace(parameters=params, return_annotation=inspect.Signature.empty))


_ROLE = re.compile(r"\{([\w:-]+)\}`([^`]*)`")


def _doc(text: str | None) -> str:
    "A docstring as MyST text: a MyST role written in it ({glue:text}`x`) is shown as code, not executed."
    return _ROLE.sub(lambda m: f"``{{{m.group(1)}}}`{m.group(2)}` ``", text or "")


def _arguments_table(obj) -> list[str]:
    target = obj.__init__ if inspect.isclass(obj) else obj
    try: docs = docments(target, full=True)
    except Exception: return []
    rows = []
    for name, info in docs.items():
        if name in ("self", "return"): continue
        default = info.get("default", inspect.Parameter.empty)
        default = "" if default is inspect.Parameter.empty else f"`{default!r}`"
        meaning = _doc(info.get("docment")).replace("|", "\\|")
        rows.append(f"| `{name}` | {default} | {meaning} |")
    if not rows or all(r.endswith("|  |") for r in rows): return []
    return ["| argument | default | meaning |", "| --- | --- | --- |", *rows, ""]


def render() -> str:
    out = ["# API reference", "",
           "Generated from the docstrings of the `structloss` package by `tools/api_page.py`; every name is also",
           "importable from the top level (`import structloss as sl; sl.SoftSilhouetteLoss`). Each module is the",
           "code exported by the chapter named beside it.", ""]
    for module_name, stem in modules_in_reading_order():
        module = importlib.import_module(f"structloss.{module_name}")
        out += [f"## `structloss.{module_name}`", "", f"Chapter: {{doc}}`nbs/{stem}`", ""]
        names = getattr(module, "__all__", [])
        constants = [n for n in names if not (inspect.isfunction(getattr(module, n)) or inspect.isclass(getattr(module, n)))]
        if constants:
            out += ["| constant | value |", "| --- | --- |", *[f"| `{n}` | `{getattr(module, n)!r}` |" for n in constants], ""]
        for name in names:
            if name in constants: continue
            obj = getattr(module, name)
            kind = "class" if inspect.isclass(obj) else "def"
            out += [f"### `{name}`", "", "```python", f"{kind} {name}{_signature(obj)}", "```", "",
                    _doc(inspect.getdoc(obj)), ""]
            out += _arguments_table(obj)
            if inspect.isclass(obj):
                for meth_name, meth in vars(obj).items():
                    if meth_name.startswith("_") or not inspect.isfunction(meth) or not meth.__doc__: continue
                    out += [f"- `{meth_name}{_signature(meth)}`: {_doc(inspect.getdoc(meth))}"]
                out += [""]
    return "\n".join(out) + "\n"


if __name__ == "__main__":
    if len(sys.argv) != 2: sys.exit(__doc__)
    Path(sys.argv[1]).write_text(render())
    print(f"wrote {sys.argv[1]}")
