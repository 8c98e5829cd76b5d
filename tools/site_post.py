"""Post-process the built site (run by tools/book.sh after jupyter-book build).

sphinx-thebe 0.3.1 adds its inline configuration script (`const THEBE_JS_URL = ...`) once per Sphinx
environment pass, and Jupyter Book 1 makes two, so every page declared the constant twice and the browser
threw a SyntaxError on each page load. This drops repeated identical inline <script> lines from each page.

Usage: python tools/site_post.py HTML_DIR
"""
from __future__ import annotations
import re, sys
from pathlib import Path

_INLINE = re.compile(r"^\s*<script>.*</script>\s*$")


def dedupe_inline_scripts(html: str) -> str:
    "The page with every repeated, identical one-line inline <script> removed (the first is kept)."
    seen, out = set(), []
    for line in html.splitlines(keepends=True):
        if _INLINE.match(line):
            if line.strip() in seen: continue
            seen.add(line.strip())
        out.append(line)
    return "".join(out)


if __name__ == "__main__":
    if len(sys.argv) != 2: sys.exit(__doc__)
    changed = 0
    for page in Path(sys.argv[1]).rglob("*.html"):
        text = page.read_text(encoding="utf-8")
        if (new := dedupe_inline_scripts(text)) != text:
            page.write_text(new, encoding="utf-8"); changed += 1
    print(f"site_post: removed repeated inline scripts from {changed} pages")
