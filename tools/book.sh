#!/usr/bin/env bash
# Build the book on a fresh machine: environment, export, execute (cpu profile), render to _build/html.
#   bash tools/book.sh              everything
#   BOOK_EXECUTE=0 bash tools/book.sh   render the outputs already stored in the notebooks
#   BOOK_STRICT=1 bash tools/book.sh    turn Sphinx warnings into errors (the test command does this)
source "$(dirname "${BASH_SOURCE[0]}")/env.sh"
echo "==> nbdev-export"
nbdev-export
if [ "${BOOK_EXECUTE:-1}" = "1" ]; then
  echo "==> executing notebooks (profile ${STRUCTLOSS_PROFILE:=cpu})"
  export STRUCTLOSS_PROFILE
  python tools/notebooks.py execute
  nbdev-clean
fi
echo "==> preparing the book sources in _build/book_src"
rm -rf _build/book_src _build/html _build/.doctrees _build/jupyter_execute
mkdir -p _build/book_src
cp _config.yml _toc.yml references.bib _build/book_src/
python tools/notebooks.py book _build/book_src/nbs
python tools/api_page.py _build/book_src/api.md
echo "==> jupyter-book build"
flags=()
[ "${BOOK_STRICT:-0}" = "1" ] && flags+=(--warningiserror --nitpick --keep-going)
jupyter-book build _build/book_src --path-output . --builder html "${flags[@]}"
test -f _build/html/index.html || { echo "no _build/html/index.html"; exit 1; }
echo "==> book written to $ROOT/_build/html (open _build/html/index.html)"
