#!/usr/bin/env bash
# Run every test on a fresh machine: environment, export check, tests/, every notebook under nbval (smoke
# profile), and a strict book build (warnings are errors). Exits non-zero on the first failure.
source "$(dirname "${BASH_SOURCE[0]}")/env.sh"
start=$SECONDS

echo "==> 1/4 nbdev-export must leave structloss/ unchanged"
snapshot="$(mktemp -d)"
cp -r structloss "$snapshot/"
nbdev-export
if ! diff -r -x __pycache__ "$snapshot/structloss" structloss; then
  echo "FAILED: the notebooks and structloss/ were out of sync; nbdev-export has now rewritten structloss/: review and commit it."
  exit 1
fi

echo "==> 2/4 tests/ (pytest)"
set +e
python -m pytest tests -q -p no:cacheprovider
rc=$?
set -e
if [ $rc -eq 5 ]; then echo "FAILED: pytest collected no tests in tests/"; exit 1; fi
[ $rc -eq 0 ] || { echo "FAILED: tests/ (pytest exit code $rc)"; exit $rc; }

echo "==> 3/4 every notebook under nbval, smoke profile"
python tools/notebooks.py nbval _build/nbval
set +e
STRUCTLOSS_PROFILE=smoke python -m pytest _build/nbval --nbval-lax --nbval-current-env --nbval-cell-timeout=900 -q -p no:cacheprovider
rc=$?
set -e
if [ $rc -eq 5 ]; then echo "FAILED: nbval collected no notebook cells"; exit 1; fi
[ $rc -eq 0 ] || { echo "FAILED: notebooks under nbval (pytest exit code $rc)"; exit $rc; }

echo "==> 4/4 the book, warnings as errors (stored outputs, no execution)"
BOOK_EXECUTE=0 BOOK_STRICT=1 bash tools/book.sh

echo "==> all checks passed in $((SECONDS - start)) s"
