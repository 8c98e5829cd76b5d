#!/usr/bin/env bash
# Build the book on a fresh machine: environment, export, execute (cpu profile), render to _build/html.
#   bash tools/book.sh                  execute the chapters whose source changed, render everything
#   BOOK_EXECUTE=0 bash tools/book.sh   render the outputs already stored in the notebooks (fast path)
#   BOOK_RERUN=1 bash tools/book.sh     re-execute every chapter, ignoring the execution cache
#   BOOK_STRICT=1 bash tools/book.sh    turn Sphinx warnings into errors (the test command does this)
# Execution writes into _build/executed/ (a cache keyed by each notebook's code and the profile), never into
# nbs/: storing outputs in the sources is a separate contributor step (python tools/notebooks.py execute ...).
source "$(dirname "${BASH_SOURCE[0]}")/env.sh"
echo "==> nbdev-export"
nbdev-export
src=nbs
if [ "${BOOK_EXECUTE:-1}" = "1" ]; then
  echo "==> executing chapters into _build/executed (profile ${STRUCTLOSS_PROFILE:=cpu}; unchanged chapters are cached)"
  export STRUCTLOSS_PROFILE
  rerun=()
  [ "${BOOK_RERUN:-0}" = "1" ] && rerun=(--rerun)
  python tools/notebooks.py build-execute _build/executed "${rerun[@]}"
  src=_build/executed
fi
echo "==> preparing the book sources in _build/book_src (from $src)"
rm -rf _build/book_src _build/html _build/.doctrees _build/jupyter_execute
mkdir -p _build/book_src
cp _config.yml _toc.yml references.bib _build/book_src/
cp -r tools/site_static _build/book_src/_static
python tools/notebooks.py book _build/book_src/nbs --from "$src"
python tools/api_page.py _build/book_src/api.md
echo "==> MathJax (served from the site, no CDN)"
mathjax_dir="$(bash tools/mathjax.sh)"
echo "==> jupyter-book build"
flags=()
[ "${BOOK_STRICT:-0}" = "1" ] && flags+=(--warningiserror --nitpick --keep-going)
jupyter-book build _build/book_src --path-output . --builder html "${flags[@]}"
test -f _build/html/index.html || { echo "no _build/html/index.html"; exit 1; }
mkdir -p _build/html/_static
rm -rf _build/html/_static/mathjax
cp -r "$mathjax_dir" _build/html/_static/mathjax
touch _build/html/.nojekyll
python tools/site_post.py _build/html
echo "==> book written to $ROOT/_build/html (open _build/html/index.html)"
