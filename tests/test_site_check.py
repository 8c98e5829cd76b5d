"""The browser check (tools/site_check.py) can fail: a copy of a built page with an injected MathJax
error and a broken image is reported for both, while the untouched copy passes.

Needs the built site (_build/html, from `bash tools/book.sh`) and Chromium. Without them the test is
skipped, unless STRUCTLOSS_REQUIRE_BROWSER=1 (the browser stage of tools/test.sh sets it after
building the site and installing Chromium), where their absence is a failure."""
import os, shutil, sys
from pathlib import Path
import pytest

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tools"))
import site_check  # noqa: E402
from site_post import dedupe_inline_scripts  # noqa: E402

HTML = ROOT / "_build" / "html"
PAGE = "nbs/01_geometry.html"         # a chapter with display and inline math, code and outputs
REQUIRED = os.environ.get("STRUCTLOSS_REQUIRE_BROWSER") == "1"


def _need(ok: bool, why: str):
    if ok: return
    if REQUIRED: pytest.fail(why)
    pytest.skip(why)


@pytest.fixture(scope="module")
def site(tmp_path_factory):
    _need((HTML / PAGE).exists(), f"no built site at {HTML} (run bash tools/book.sh)")
    _need(site_check.find_browser() is not None, "no Chromium (apt-get install chromium)")
    root = tmp_path_factory.mktemp("site")
    shutil.copytree(HTML / "_static", root / "_static")
    if (HTML / "_images").exists():                    # the page's own figures
        shutil.copytree(HTML / "_images", root / "_images")
    shutil.copy(HTML / "searchindex.js", root)
    (root / "nbs").mkdir()
    clean = (HTML / PAGE).read_text(encoding="utf-8")
    (root / "nbs" / "clean.html").write_text(clean, encoding="utf-8")
    marker = '<section id="pairwise-distances">'
    assert marker in clean, "the page changed: pick another marker to inject before"
    injected = ('<div class="math notranslate nohighlight">'
                '\\[\\begin{split} a = b \\tag{1} \\\\ c = d\\end{split}\\]</div>\n'
                '<img alt="missing" src="../_images/no-such-figure.png">\n')
    broken = clean.replace(marker, injected + marker, 1)
    (root / "nbs" / "broken.html").write_text(broken, encoding="utf-8")
    return root


def test_untouched_copy_passes(site):
    report = site_check.check_site(site, pages=["nbs/clean.html"], verbose=False)
    # links to the rest of the book leave the copy: only those may be reported
    problems = [p for p in report["nbs/clean.html"] if not p.startswith("broken link")]
    assert problems == []


def test_injected_mathjax_error_and_broken_image_are_reported(site):
    found = site_check.check_site(site, pages=["nbs/broken.html"], verbose=False)
    report = found["nbs/broken.html"]
    assert any(p.startswith("MathJax error") and "split" in p for p in report), report
    assert any(p.startswith("image does not load") and "no-such-figure.png" in p
               for p in report), report
    assert any(p.startswith("HTTP 404") and "no-such-figure.png" in p for p in report), report


def test_main_exit_status(site, capsys):
    assert site_check.main([str(site), "--page", "nbs/broken.html"]) == 1
    assert "FAILED nbs/broken.html" in capsys.readouterr().out


def test_missing_site_is_a_clear_error(tmp_path):
    with pytest.raises(ValueError, match="html_dir"):
        site_check.check_site(tmp_path)


def test_dedupe_inline_scripts():
    a, src = "<script>const A = 1</script>\n", "<script src='x.js'></script>\n"
    assert dedupe_inline_scripts("<head>\n" + a + src + a) == "<head>\n" + a + src
    assert dedupe_inline_scripts("<script>a</script>\n<script>b</script>\n").count("<script>") == 2
