"""Every number in a chapter's prose comes from a cell: it appears in the chapter's code or stored outputs
(MyST-NB glue values included), or it is listed below with the reason it needs no cell (a paper's setup
quoted, a constant of IEEE-754, an exercise's parameter). A number typed into prose that no cell computed
fails this test, with its chapter, so that it is glued from a cell or the sentence is rewritten."""
import json, re
from pathlib import Path
import pytest

NBS = Path(__file__).resolve().parent.parent / "nbs"
NUMBER = re.compile(r"(?<![\w.\-/])(\d{1,3}(?:,\d{3})+|\d+)(\.\d+)?(?:[eE][-+]?\d+)?")
# What is not a claim about a result: maths, glue and citation roles, code, links, HTML, and references
# to equations, tables, figures, sections, chapters, claims, years and names such as CIFAR-100 or 2-D.
NOT_PROSE = [r"\$\$.*?\$\$", r"\$[^$\n]*\$", r"\{[a-z:]+\}`[^`]*`", r"```.*?```", r"`[^`]*`", r"\]\([^)]*\)",
             r"<[^>]+>", r"https?://\S+", r"\b(?:eqs?|Eqs?)\.\s*[\d.,'′\-–a-z ]*(?:and\s*\d+)?",
             r"\b(?:[Tt]ables?|[Ff]igures?|[Ff]ig\.|[Ss]ections?|§|[Cc]hapters?|Part|arXiv|[Aa]lgorithm|"
             r"[Ee]xercises?|[Cc]laims?)\s*[\d.,\-– ]+(?:and\s*\d+)?",
             r"\b(?:19|20)\d\d[a-z]?\b", r"\bC\d+[a-z]?\b", r"\b\d+(?:st|nd|rd|th)\b", r"\b[A-Za-z]+-\d+\b",
             r"\b\d+-[A-Za-z]+\b", r"\b\d+[dD]\b"]
ALLOWED = {  # (chapter, number as written): why no cell needs to compute it
    ("01_geometry", "17"): "an example of class ids", ("01_geometry", "99"): "an example of class ids",
    ("11_pairs", "31"): "bits of a float32 besides its sign (IEEE-754)",
    ("13_proxies", "65,504"): "float16's largest finite value (IEEE-754)",
    ("14_magnet", "40"): "the Latent Boost paper's component counts (its Section 5.2), quoted",
    ("17_greediness", "100"): "the Variance & Greediness paper's epochs, quoted",
    ("20_data", "15"): "the validation fraction of the split, a configuration",
    ("20_data", "0.65"): "an exercise's split", ("20_data", "20,000"): "an exercise's data set size",
    ("21_samplers", "32"): "an example batch size", ("21_samplers", "100,000"):
        "pytorch-metric-learning's default length_before_new_iter, quoted",
    ("21_samplers", "117"): "an exercise's class size",
    ("23_train", "20"): "the Latent Boost paper's early-stopping patience, quoted",
    ("24_experiments", "85"): "the training fraction of the split, a configuration",
    ("24_experiments", "80"): "the non-test fraction of the split, a configuration",
    ("25_robustness", "32"): "the image size of the published corrupted sets (CIFAR-10-C), quoted",
    ("30_silhouette_paper", "0.0001"): "the Silhouette paper's weight decay, quoted",
    ("32_latent_boost_paper", "45"): "the Latent Boost paper's component counts, quoted",
}


def _texts(path: Path):
    "The chapter's markdown cells, and everything its code cells hold: sources, outputs, glue values."
    prose, cells = [], []
    for c in json.loads(path.read_text())["cells"]:
        source = "".join(c["source"])
        if c["cell_type"] == "markdown": prose.append(source); continue
        cells.append(source)
        for o in c.get("outputs", []):
            cells.append("".join(o.get("text", "")))
            for mime, v in o.get("data", {}).items():
                if mime.startswith("text") or "papermill" in mime: cells.append("".join(v))
    return prose, "\n".join(cells).replace(",", "")


def uncomputed_numbers(path: Path) -> list[str]:
    "Numbers (>= 10, or with a decimal point) in the prose of `path` that none of its cells holds."
    prose, cells = _texts(path)
    found = []
    for text in prose:
        for pattern in NOT_PROSE: text = re.sub(pattern, " ", text, flags=re.S)
        for m in NUMBER.finditer(text):
            n = m.group(0).replace(",", "")
            if "." not in n and float(n) < 10: continue              # "two classes", "3 seeds": words
            if re.search(rf"(?<![\d.]){re.escape(n)}(?!\d)", cells): continue
            if "." in n and re.search(re.escape(n.rstrip("0").rstrip(".")), cells): continue
            if (path.stem, m.group(0)) not in ALLOWED: found.append(m.group(0))
    return found


@pytest.mark.parametrize("path", sorted(NBS.glob("*.ipynb")), ids=lambda p: p.stem)
def test_prose_numbers_come_from_cells(path):
    assert not uncomputed_numbers(path), (f"{path.name}: numbers in prose that no cell computed: "
                                          f"{uncomputed_numbers(path)}; glue them from a cell or rewrite")


def test_the_check_can_fail(tmp_path):
    cells = [{"cell_type": "code", "source": ["x = 0.731\n", "glue('acc', x)"], "metadata": {},
              "outputs": [{"output_type": "stream", "name": "stdout", "text": ["accuracy 0.731\n"]}]},
             {"cell_type": "markdown", "metadata": {},
              "source": ["The accuracy is {glue:text}`acc:.3f` (0.731) over 5 seeds, against 0.812 in eq. 12 ",
                         "and Table 3 of the 2019 paper on CIFAR-100 with 1,024 samples."]}]
    path = tmp_path / "99_demo.ipynb"
    path.write_text(json.dumps({"cells": cells}))
    assert uncomputed_numbers(path) == ["0.812", "1,024"]
