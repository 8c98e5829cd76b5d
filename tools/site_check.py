"""Open every page of the built site in headless Chromium, as a reader would, and fail on what a
Sphinx build cannot see: MathJax runs in the browser.

Checks, per page: a MathJax error node (e.g. `\\tag` inside `split`); an equation left untypeset
(raw TeX on the page, e.g. MathJax did not load); a display equation whose glyphs a reader cannot
reach (clipped at the left, or cut off at the right of the column without a scrollbar); a console
error or uncaught exception; a resource that fails to load (image, script, font: HTTP >= 400, or a
blocked external request); an image that does not render; an internal link or `#anchor` that does
not resolve; an embedded animation that does not play; a headline result (a code cell tagged
`headline`: `#| headline` in nbs/) whose code or output is wider than the content column. Other
wide cells, and equations that fit only by scrolling, are notes (--notes).

Chromium is driven through the DevTools protocol over a pipe (`--remote-debugging-pipe`): no extra
Python package. Screenshots of each page (its top, and its first display equation) go to
`--screenshots DIR`.

Usage: python tools/site_check.py [HTML_DIR] [--screenshots DIR] [--page REL ...] [--notes]
Exit status 1 when any page has a problem.
"""
from __future__ import annotations
import base64, functools, http.server, json, os, re, shutil, subprocess, sys, tempfile
import threading, time
from pathlib import Path
from urllib.parse import unquote, urlsplit

ROOT = Path(__file__).resolve().parent.parent
BROWSERS = ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable")
WIDTH, HEIGHT = 1280, 900

# Runs in the page once it has loaded: every problem the DOM shows, plus the page's links and ids.
_PAGE_JS = r"""
(async () => {
  const wait = (ms) => new Promise(r => setTimeout(r, ms));
  if (window.MathJax && MathJax.startup && MathJax.startup.promise) {
    try { await MathJax.startup.promise; } catch (e) { console.error("MathJax startup: " + e); }
  }
  await Promise.all([...document.images].map(img => img.complete ? null :
    new Promise(r => { img.addEventListener("load", r); img.addEventListener("error", r);
                       setTimeout(r, 5000); })));
  try { await document.fonts.ready; } catch (e) {}
  await wait(50);
  const problems = [];
  const short = (s) => (s || "").replace(/\s+/g, " ").trim().slice(0, 90);
  const items = (window.MathJax && MathJax.startup && MathJax.startup.document) ?
    Array.from(MathJax.startup.document.math || []) : [];
  const texOf = (container) => {
    const item = items.find(it => it.typesetRoot === container);
    return item ? item.math : (container ? container.textContent : "");
  };
  for (const c of document.querySelectorAll("mjx-container")) {
    const err = c.querySelector("mjx-merror, [data-mjx-error]");
    if (!err) continue;
    const what = err.getAttribute("data-mjx-error") || short(err.textContent);
    problems.push(`MathJax error "${what}" in: ` + short(texOf(c)));
  }
  const skip = "pre, code, script, style, textarea, mjx-container, mjx-assistive-mml, .highlight";
  for (const el of document.querySelectorAll(".math")) {
    if (el.closest(skip) || el.querySelector("mjx-container")) continue;
    problems.push(`equation not typeset: ${short(el.textContent)}`);
  }
  const walker = document.createTreeWalker(document.body, NodeFilter.SHOW_TEXT);
  for (let n = walker.nextNode(); n; n = walker.nextNode()) {
    const p = n.parentElement;
    if (!p || p.closest(skip) || p.closest(".math")) continue;
    if (/\\\(|\\\[|\\begin\{|\$\$/.test(n.textContent))
      problems.push(`raw TeX on the page: ${short(n.textContent)}`);
  }
  const article = document.querySelector("article.bd-article") ||
                  document.querySelector("[role=main]") || document.body;
  const col = article.getBoundingClientRect();
  const wideEquations = [];
  for (const c of document.querySelectorAll('mjx-container[display="true"]')) {
    // Where the glyphs are (mjx-c: one per character), against what a reader can scroll to.
    const box = c.getBoundingClientRect();
    let left = Infinity, right = -Infinity;
    for (const g of c.querySelectorAll("mjx-c")) {
      const r = g.getBoundingClientRect();
      if (r.width === 0) continue;
      left = Math.min(left, r.left); right = Math.max(right, r.right);
    }
    const scrolls = ["auto", "scroll"].includes(getComputedStyle(c).overflowX) ||
                    ["auto", "scroll"].includes(getComputedStyle(c.parentElement).overflowX);
    const edge = Math.max(box.left, col.left);
    if (left < edge - 1)
      problems.push(`equation clipped at the left by ${Math.round(edge - left)} px: ` +
                    short(texOf(c)));
    else if (right > col.right + 1 && !scrolls)
      problems.push(`equation cut off at the right by ${Math.round(right - col.right)} px: ` +
                    short(texOf(c)));
    else if (c.scrollWidth > c.clientWidth + 1) wideEquations.push(short(texOf(c)));
  }
  for (const img of document.images) {
    if (!img.complete || img.naturalWidth === 0)
      problems.push(`image does not load: ${img.getAttribute("src")}`);
  }
  // Code cells wider than the column: a problem for headline results (cells tagged `headline`),
  // a note elsewhere.
  const notes = [];
  for (const cell of document.querySelectorAll("div.cell")) {
    const headline = cell.classList.contains("tag_headline");
    const parts = ".cell_input pre, .cell_output pre, .cell_output table, .cell_output img";
    for (const el of cell.querySelectorAll(parts)) {
      if (el.closest(".animation")) continue;
      const wide = Math.max(el.scrollWidth, el.getBoundingClientRect().width);
      if (wide > col.width + 2) {
        const what = el.closest(".cell_input") ? "code" : "output";
        const size = `${Math.round(wide)} > ${Math.round(col.width)} px`;
        const msg = `${headline ? "headline " : ""}${what} wider than the column (${size}): ` +
                    short(el.textContent || el.getAttribute("src"));
        (headline ? problems : notes).push(msg);
        break;
      }
    }
  }
  for (const w of wideEquations) notes.push(`equation scrolls sideways: ${w}`);
  // An embedded animation (matplotlib's to_jshtml player) must play: press Play, the frame changes.
  for (const anim of document.querySelectorAll(".animation")) {
    const slider = anim.querySelector("input[type=range]"), img = anim.querySelector("img");
    const play = [...anim.querySelectorAll("button")].find(b => b.title === "Play");
    if (!slider || !img || !play) {
      problems.push("animation without its player (slider, image, Play)"); continue;
    }
    const before = [slider.value, img.src];
    play.click();
    await wait(1500);
    const pause = [...anim.querySelectorAll("button")].find(b => b.title === "Pause");
    if (pause) pause.click();
    if (slider.value === before[0] || img.src === before[1] || img.naturalWidth === 0)
      problems.push("animation does not play (Play pressed, the frame did not change)");
  }
  const links = [...document.querySelectorAll("a[href]")].map(a => a.href);
  const ids = [...document.querySelectorAll("[id], a[name]")]
    .map(e => e.id || e.getAttribute("name"));
  const firstEq = document.querySelector('mjx-container[display="true"]');
  let eqY = null;
  if (firstEq) eqY = firstEq.getBoundingClientRect().top + window.scrollY;
  return JSON.stringify({problems, notes, links, ids, eqY});
})()
"""


class _Quiet(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *args): pass


def serve(directory: Path) -> tuple[http.server.ThreadingHTTPServer, str]:
    "Serve `directory` on a free localhost port in a daemon thread; returns (server, base URL)."
    handler = functools.partial(_Quiet, directory=str(directory))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server, f"http://127.0.0.1:{server.server_address[1]}/"


def find_browser() -> str | None:
    "The Chromium executable ($CHROMIUM, else the first of BROWSERS on PATH), or None."
    if os.environ.get("CHROMIUM"): return os.environ["CHROMIUM"]
    return next((p for b in BROWSERS if (p := shutil.which(b))), None)


class Browser:
    "Headless Chromium driven by the DevTools protocol over `--remote-debugging-pipe` (JSON + NUL)."

    def __init__(self, executable: str):
        self.profile = tempfile.mkdtemp(prefix="site_check_")
        to_chrome_r, self._to_chrome = os.pipe()
        self._from_chrome, from_chrome_w = os.pipe()
        def plumbing():                                   # Chromium reads fd 3, writes fd 4
            os.dup2(to_chrome_r, 3); os.dup2(from_chrome_w, 4)
        args = [executable, "--headless=new", "--no-sandbox", "--disable-gpu",
                "--disable-dev-shm-usage", "--remote-debugging-pipe", "--no-first-run",
                "--no-default-browser-check", "--disable-extensions", "--hide-scrollbars",
                "--mute-audio", f"--window-size={WIDTH},{HEIGHT}",
                f"--user-data-dir={self.profile}", "about:blank"]
        self.proc = subprocess.Popen(args, preexec_fn=plumbing, close_fds=False,
                                     stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        os.close(to_chrome_r); os.close(from_chrome_w)
        self._next, self._replies, self.events = 0, {}, []
        self._cond = threading.Condition()
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self):
        buf = b""
        while chunk := os.read(self._from_chrome, 1 << 16):
            buf += chunk
            *messages, buf = buf.split(b"\0")
            for raw in messages:
                msg = json.loads(raw)
                with self._cond:
                    if "id" in msg: self._replies[msg["id"]] = msg
                    else: self.events.append(msg)
                    self._cond.notify_all()
        with self._cond:
            self._closed = True; self._cond.notify_all()

    def send(self, method: str, params: dict | None = None, session: str | None = None,
             timeout: float = 60):
        with self._cond:
            self._next += 1; mid = self._next
        msg = {"id": mid, "method": method, "params": params or {}}
        if session: msg["sessionId"] = session
        os.write(self._to_chrome, json.dumps(msg).encode() + b"\0")
        deadline = time.monotonic() + timeout
        with self._cond:
            while mid not in self._replies:
                if getattr(self, "_closed", False): raise RuntimeError("Chromium exited")
                left = deadline - time.monotonic()
                if not self._cond.wait(max(0.0, left)) and time.monotonic() > deadline:
                    raise TimeoutError(f"no reply to {method} within {timeout} s")
            reply = self._replies.pop(mid)
        if "error" in reply: raise RuntimeError(f"{method}: {reply['error']}")
        return reply.get("result", {})

    def wait_event(self, method: str, session: str, since: int, timeout: float = 30) -> bool:
        deadline = time.monotonic() + timeout
        with self._cond:
            while True:
                if any(e.get("method") == method and e.get("sessionId") == session
                       for e in self.events[since:]):
                    return True
                left = deadline - time.monotonic()
                if left <= 0: return False
                self._cond.wait(left)

    def close(self):
        try: self.send("Browser.close", timeout=5)
        except Exception: pass
        try: self.proc.wait(5)
        except subprocess.TimeoutExpired: self.proc.kill()
        shutil.rmtree(self.profile, ignore_errors=True)


def _event_problems(events: list[dict], base: str) -> list[str]:
    "Console errors, uncaught exceptions and failed requests among a page's DevTools events."
    out = []
    for e in events:
        m, p = e.get("method"), e.get("params", {})
        if m == "Runtime.consoleAPICalled" and p.get("type") in ("error", "assert"):
            text = " ".join(str(a.get("value", a.get("description", "")))
                            for a in p.get("args", []))
            out.append(f"console error: {text[:200]}")
        elif m == "Runtime.exceptionThrown":
            d = p.get("exceptionDetails", {})
            what = d.get("exception", {}).get("description", d.get("text", ""))
            out.append(f"uncaught exception: {what[:200]}")
        elif m == "Log.entryAdded" and p.get("entry", {}).get("level") == "error" \
                and "favicon.ico" not in p["entry"].get("url", ""):
            entry = p["entry"]
            url = entry.get("url", "")[len(base):]
            out.append(f"console error: {entry.get('text', '')[:160]} {url}".rstrip())
        elif m == "Log.entryAdded" or (m == "Network.responseReceived"
                                       and "favicon.ico" in p["response"]["url"]):
            continue                # the browser's own favicon probe is no resource of the page
        elif m == "Network.responseReceived" and p.get("response", {}).get("status", 200) >= 400:
            r = p["response"]
            url = r["url"][len(base):] if r["url"].startswith(base) else r["url"]
            out.append(f"HTTP {r['status']} for {url}")
        elif m == "Network.loadingFailed" and not p.get("canceled"):
            out.append(f"request failed: {p.get('errorText', '')}")
    return list(dict.fromkeys(out))


def _summarise(problems: list[str], keep: int = 4) -> list[str]:
    "At most `keep` problems of each kind (the text before the first colon), then a count."
    kinds: dict[str, list[str]] = {}
    for p in problems: kinds.setdefault(p.split(":")[0].split(" by ")[0], []).append(p)
    out = []
    for kind, found in kinds.items():
        out += found[:keep]
        if len(found) > keep: out.append(f"{kind}: ... and {len(found) - keep} more")
    return out


def pages_of(html_dir: Path) -> list[str]:
    "Every HTML page of the site (relative paths), landing page first; _static/ etc. skipped."
    found = sorted(p.relative_to(html_dir).as_posix() for p in html_dir.rglob("*.html")
                   if not any(part.startswith("_") for part in p.relative_to(html_dir).parts[:-1]))
    return sorted(found, key=lambda p: (p != "index.html", p))


def _target_ok(html_dir: Path, rel: str, anchor: str, ids: dict[str, set]) -> str | None:
    "None when the link resolves, else why not."
    path = html_dir / rel
    if rel == "" or rel.endswith("/"): path = path / "index.html"
    if not path.exists(): return "no such file"
    if not anchor: return None
    key = path.relative_to(html_dir).as_posix()
    known = ids.get(key)
    if known is None:
        known = set(re.findall(r'(?:id|name)="([^"]+)"', path.read_text(errors="replace")))
    return None if anchor in known else f"no anchor #{anchor}"


def check_site(html_dir: Path | str, pages: list[str] | None = None,
               screenshots: Path | str | None = None,
               browser: str | None = None, verbose: bool = True,
               notes: dict[str, list[str]] | None = None) -> dict[str, list[str]]:
    """Open `pages` (default: every page) of the site in `html_dir` in headless Chromium:
    `{page: [problem, ...]}`. `notes`, when given, receives `{page: [remark, ...]}`: wide cells
    that are not headline results, and equations that fit only by scrolling sideways."""
    html_dir = Path(html_dir).resolve()
    if not (html_dir / "index.html").exists() and pages is None:
        raise ValueError(f"html_dir={html_dir} has no index.html: build the site first "
                         f"(bash tools/book.sh)")
    executable = browser or find_browser()
    if executable is None:
        raise RuntimeError("no Chromium found: apt-get install chromium "
                           "(or set CHROMIUM=/path/to/chrome)")
    pages = pages or pages_of(html_dir)
    if screenshots: Path(screenshots).mkdir(parents=True, exist_ok=True)
    server, base = serve(html_dir)
    chrome = Browser(executable)
    report: dict[str, list[str]] = {}
    links: dict[str, list[str]] = {}
    ids: dict[str, set] = {}
    notes = {} if notes is None else notes
    try:
        target = chrome.send("Target.createTarget", {"url": "about:blank"})["targetId"]
        attached = chrome.send("Target.attachToTarget", {"targetId": target, "flatten": True})
        session = attached["sessionId"]
        for method in ("Page.enable", "Runtime.enable", "Log.enable", "Network.enable"):
            chrome.send(method, session=session)
        chrome.send("Emulation.setDeviceMetricsOverride", {"width": WIDTH, "height": HEIGHT,
                    "deviceScaleFactor": 1, "mobile": False}, session=session)
        for page in pages:
            t0 = time.monotonic()
            since = len(chrome.events)
            chrome.send("Page.navigate", {"url": base + page}, session=session)
            problems = []
            if not chrome.wait_event("Page.loadEventFired", session, since, timeout=60):
                problems.append("page did not finish loading within 60 s")
            evaluate = {"expression": _PAGE_JS, "awaitPromise": True, "returnByValue": True,
                        "timeout": 60000}
            for attempt in range(3):                 # a redirect page navigates on by itself
                try:
                    res = chrome.send("Runtime.evaluate", evaluate, session=session, timeout=90)
                    break
                except RuntimeError as e:
                    if "navigated" not in str(e) or attempt == 2: raise
                    mark = len(chrome.events)
                    chrome.wait_event("Page.loadEventFired", session, mark, timeout=30)
            if "exceptionDetails" in res:
                problems.append(f"checker script failed: {res['exceptionDetails'].get('text')}")
                found = {"problems": [], "links": [], "ids": [], "eqY": None}
            else:
                found = json.loads(res["result"]["value"])
            time.sleep(0.1)                                   # late console messages
            with chrome._cond:
                events = [e for e in chrome.events[since:] if e.get("sessionId") == session]
            problems += _summarise(found["problems"]) + _event_problems(events, base)
            links[page], ids[page] = found["links"], set(found["ids"])
            notes[page] = found.get("notes", [])
            if screenshots:
                stem = page[:-len(".html")].replace("/", "__")
                shots = [(f"{stem}.png", 0)]
                if found["eqY"] is not None:
                    shots.append((f"{stem}-math.png", max(0, found["eqY"] - 150)))
                for name, y in shots:
                    chrome.send("Runtime.evaluate", {"expression": f"window.scrollTo(0, {y})"},
                                session=session)
                    time.sleep(0.05)
                    png = chrome.send("Page.captureScreenshot", {"format": "png"},
                                      session=session)["data"]
                    (Path(screenshots) / name).write_bytes(base64.b64decode(png))
            report[page] = problems
            if verbose:
                state = "ok" if not problems else f"{len(problems)} problem(s)"
                if notes[page]: state += f", {len(notes[page])} note(s) (wide cells, equations)"
                print(f"  {page}: {state} ({time.monotonic() - t0:.1f} s)", flush=True)
    finally:
        chrome.close()
        server.shutdown()
    for page, hrefs in links.items():                         # internal links and anchors
        for href in dict.fromkeys(hrefs):
            if not href.startswith(base): continue
            parts = urlsplit(href)
            rel = unquote(parts.path[len(urlsplit(base).path):])
            why = _target_ok(html_dir, rel, unquote(parts.fragment), ids)
            if why: report[page].append(f"broken link {href[len(base):]}: {why}")
    return report


def main(argv: list[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    def option(name):
        if name not in args: return []
        i = args.index(name); values = []
        del args[i]
        while i < len(args) and not args[i].startswith("--"): values.append(args.pop(i))
        return values
    show_notes = "--notes" in args
    if show_notes: args.remove("--notes")
    shots, only = option("--screenshots"), option("--page")
    html_dir = Path(args[0] if args else ROOT / "_build" / "html")
    t0 = time.monotonic()
    print(f"==> opening the pages of {html_dir} in headless Chromium", flush=True)
    notes: dict[str, list[str]] = {}
    report = check_site(html_dir, pages=only or None, screenshots=shots[0] if shots else None,
                        notes=notes)
    for page, remarks in notes.items():
        if show_notes and remarks:
            print(f"notes on {page}:", *[f"    - {r}" for r in remarks], sep="\n")
    bad = {p: v for p, v in report.items() if v}
    for page, problems in bad.items():
        print(f"FAILED {page}:")
        for p in problems: print(f"    - {p}")
    n_problems = sum(map(len, bad.values()))
    print(f"{len(report)} pages, {n_problems} problems, {time.monotonic() - t0:.0f} s"
          + (f"; screenshots in {shots[0]}" if shots else ""))
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
