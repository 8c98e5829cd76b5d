#!/usr/bin/env bash
# Print the path of a local copy of MathJax 3 (its es5/ folder), fetching it once with npm when missing.
# The book serves MathJax from its own _static/ (conf: mathjax_path), so pages typeset without network.
# Cached in ${XDG_CACHE_HOME:-~/.cache}/structloss/; set MATHJAX_ES5=/path/to/mathjax/es5 to use another copy.
set -euo pipefail
version="${MATHJAX_VERSION:-3.2.2}"
if [ -n "${MATHJAX_ES5:-}" ]; then
  test -f "$MATHJAX_ES5/tex-chtml.js" || { echo "MATHJAX_ES5=$MATHJAX_ES5 has no tex-chtml.js" >&2; exit 1; }
  echo "$MATHJAX_ES5"; exit 0
fi
cache="${XDG_CACHE_HOME:-$HOME/.cache}/structloss/mathjax-$version"
if [ ! -f "$cache/es5/tex-chtml.js" ]; then
  command -v npm >/dev/null || { echo "MathJax $version is not cached in $cache and npm is missing:" \
    "install Node.js/npm (apt-get install npm) or set MATHJAX_ES5 to a MathJax 3 es5/ folder" >&2; exit 1; }
  tmp="$(mktemp -d)"
  echo "fetching mathjax@$version with npm into $cache" >&2
  npm install --prefer-offline --no-save --no-audit --no-fund --loglevel=error --prefix "$tmp" "mathjax@$version" >&2 \
    || { echo "npm could not fetch mathjax@$version (no network and no npm cache?);" \
         "set MATHJAX_ES5 to a MathJax 3 es5/ folder" >&2; exit 1; }
  mkdir -p "$cache"
  rm -rf "$cache/es5"
  cp -r "$tmp/node_modules/mathjax/es5" "$cache/es5"
  cp "$tmp/node_modules/mathjax/LICENSE" "$cache/es5/LICENSE"
  rm -rf "$tmp"
fi
echo "$cache/es5"
