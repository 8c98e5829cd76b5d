#!/usr/bin/env bash
# Run every test on a fresh machine: environment, export check, tests/, every notebook under nbval
# (smoke profile, as on Colab: the installed package, outside the repository), a strict book build
# (warnings are errors), and every page of that build opened in headless Chromium (installed with
# apt-get when missing). Exits non-zero on the first failure.
source "$(dirname "${BASH_SOURCE[0]}")/env.sh"
start=$SECONDS

echo "==> 1/6 nbdev-export must leave structloss/ unchanged"
snapshot="$(mktemp -d)"
cp -r structloss "$snapshot/"
nbdev-export
if ! diff -r -x __pycache__ "$snapshot/structloss" structloss; then
  echo "FAILED: the notebooks and structloss/ were out of sync; nbdev-export has now rewritten structloss/: review and commit it."
  exit 1
fi

echo "==> 2/6 tests/ (pytest)"
set +e
python -m pytest tests -q -p no:cacheprovider --ignore=tests/test_site_check.py   # that one: stage 5
rc=$?
set -e
if [ $rc -eq 5 ]; then echo "FAILED: pytest collected no tests in tests/"; exit 1; fi
[ $rc -eq 0 ] || { echo "FAILED: tests/ (pytest exit code $rc)"; exit $rc; }

echo "==> 3/6 the bench from the command line: structloss bench --quick"
structloss bench --quick --threads 1 --out _build/bench-quick.json \
  || { echo "FAILED: structloss bench --quick"; exit 1; }

echo "==> 4/6 every notebook under nbval, smoke profile, as on Colab: structloss installed (not this checkout), the notebooks run outside the repository"
colab="$(mktemp -d)"
python -m pip install -q --no-deps --no-build-isolation --target "$colab/site" . \
  || { echo "FAILED: pip install of the package"; exit 1; }
python tools/notebooks.py nbval "$colab/content"
set +e
(cd "$colab/content" && PYTHONPATH="$colab/site" STRUCTLOSS_PROFILE=smoke python -m pytest . --nbval-lax \
  --nbval-current-env --nbval-cell-timeout=900 -q -p no:cacheprovider)
rc=$?
set -e
if [ $rc -eq 5 ]; then echo "FAILED: nbval collected no notebook cells"; exit 1; fi
[ $rc -eq 0 ] || { echo "FAILED: notebooks under nbval (pytest exit code $rc)"; exit $rc; }

echo "==> 5/6 the book, warnings as errors (stored outputs, no execution)"
BOOK_EXECUTE=0 BOOK_STRICT=1 bash tools/book.sh

echo "==> 6/6 the site as readers meet it: every page in headless Chromium (MathJax, console, images, links)"
if ! python -c "import sys; sys.path.insert(0, 'tools'); import site_check; sys.exit(site_check.find_browser() is None)"; then
  echo "==> installing Chromium (apt-get install chromium)"
  sudo=""; [ "$(id -u)" = "0" ] || sudo="sudo"
  $sudo apt-get update -qq && DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq chromium >/dev/null \
    || { echo "FAILED: could not install Chromium; install it (apt-get install chromium) or set CHROMIUM=/path/to/chrome"; exit 1; }
fi
STRUCTLOSS_REQUIRE_BROWSER=1 python -m pytest tests/test_site_check.py -q -p no:cacheprovider \
  || { echo "FAILED: the browser check's own test (tests/test_site_check.py)"; exit 1; }
python tools/site_check.py _build/html --screenshots _build/screenshots \
  || { echo "FAILED: pages of the site (see above); screenshots in _build/screenshots"; exit 1; }

echo "==> all checks passed in $((SECONDS - start)) s"
