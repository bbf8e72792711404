"""What the browser scenarios share: the control channel to the Rust test that owns the
servers, Chromium windows driven by selenium, and a token endpoint that mints tokens the way a
backend would.

Nothing is downloaded: Chromium and chromedriver are Debian's (their paths come from the Rust
test), and selenium is told where the driver is, so Selenium Manager never runs. Every window
is closed in a `finally`, also when the test stops this script with SIGTERM.
"""

import json
import os
import signal
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from http.cookies import SimpleCookie
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, urlparse

import jwt
from selenium import webdriver
from selenium.common.exceptions import WebDriverException
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.common.action_chains import ActionChains
from selenium.webdriver.common.by import By
from selenium.webdriver.common.keys import Keys

# How long any single expectation may wait.
WAIT = 15.0

DESKTOP = (1280, 800)
PHONE = (390, 844)

# Headless, no sandbox (CI runs as root), and none of Chromium's own traffic: only loopback.
CHROMIUM_ARGS = [
    "--headless=new",
    "--no-sandbox",
    "--disable-dev-shm-usage",
    "--disable-gpu",
    "--no-first-run",
    "--no-default-browser-check",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-domain-reliability",
    "--disable-sync",
    "--disable-extensions",
    "--disable-features=Translate,OptimizationHints,MediaRouter,AutofillServerCommunication",
    "--lang=en-US",
]

# Installed before the page's own script on every load: records writes to the status region
# (#state) with their times, every WebSocket the page opens (and its close code), CSP
# violations and script errors.
PROBE = r"""
(() => {
  const probe = window.__probe = {writes: [], sockets: [], violations: [], errors: []};
  document.addEventListener("securitypolicyviolation",
    e => probe.violations.push(e.violatedDirective + " " + e.blockedURI));
  addEventListener("error", e => probe.errors.push(String(e.message)));
  const Native = window.WebSocket;
  window.WebSocket = class extends Native {
    constructor(url, protocols) {
      super(url, protocols);
      const socket = {url: String(url), at: Date.now(), closed: null};
      probe.sockets.push(socket);
      this.addEventListener("close", e => { socket.closed = e.code; });
    }
  };
  document.addEventListener("DOMContentLoaded", () => {
    const state = document.getElementById("state");
    if (!state) return;
    probe.writes.push({text: state.textContent, at: Date.now(), initial: true});
    new MutationObserver(records => {
      for (const record of records) probe.writes.push({text: state.textContent, at: Date.now()});
    }).observe(state, {childList: true, characterData: true, subtree: true});
  });
})();
"""


def now_ms():
    return int(time.time() * 1000)


def until(what, look, timeout=WAIT, every=0.05, seen=None):
    """Calls `look` until it returns something true, and returns that; fails after `timeout`
    naming `what` and, from `seen`, what was there instead."""
    deadline = time.monotonic() + timeout
    while True:
        error = None
        try:
            value = look()
        except WebDriverException as failure:
            value, error = None, failure
        if value:
            return value
        if time.monotonic() > deadline:
            there = seen() if seen else error
            raise AssertionError(f"timed out after {timeout}s waiting for {what}; seen: {there!r}")
        time.sleep(every)


class Control:
    """Requests to the Rust test, which owns the servers: one JSON line out on stdout, one JSON
    line back on stdin. Nothing else may write to stdout, so print() goes to stderr."""

    def __init__(self):
        self._channel = sys.stdout
        sys.stdout = sys.stderr
        self._lock = threading.Lock()
        self._pool = ThreadPoolExecutor(max_workers=1)

    def ask(self, what, **args):
        with self._lock:
            self._channel.write(json.dumps({"ask": what, "args": args}) + "\n")
            self._channel.flush()
            line = sys.stdin.readline()
        if not line:
            raise SystemExit(f"the test closed the control channel during {what}")
        reply = json.loads(line)
        if "error" in reply:
            raise AssertionError(f"{what} {args} failed: {reply['error']}")
        return reply

    def ask_later(self, what, **args):
        """The same on a thread, while the windows go on chatting: a future."""
        return self._pool.submit(self.ask, what, **args)

    def done(self, measurements):
        self._channel.write(json.dumps({"done": measurements}) + "\n")
        self._channel.flush()


class Window:
    """One Chromium window (its own browser and profile) showing the chat page."""

    def __init__(self, name, size, mobile, screenshots):
        options = webdriver.ChromeOptions()
        options.binary_location = os.environ["ROOMCAST_CHROMIUM"]
        for arg in CHROMIUM_ARGS:
            options.add_argument(arg)
        options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
        self.name = name
        self.screenshots = screenshots
        self.driver = webdriver.Chrome(
            service=Service(executable_path=os.environ["ROOMCAST_CHROMEDRIVER"]), options=options
        )
        try:
            width, height = size
            self.driver.execute_cdp_cmd(
                "Emulation.setDeviceMetricsOverride",
                {"width": width, "height": height, "deviceScaleFactor": 2 if mobile else 1, "mobile": mobile},
            )
            self.driver.execute_cdp_cmd("Page.addScriptToEvaluateOnNewDocument", {"source": PROBE})
            self.driver.execute_cdp_cmd("Network.enable", {})
        except BaseException:
            self.quit()
            raise

    def quit(self):
        try:
            self.driver.quit()
        except Exception as error:  # the browser may be gone already; the test kills what is left
            print(f"{self.name}: quit: {error!r}")

    def js(self, script, *args):
        return self.driver.execute_script(script, *args)

    # ---- going places

    def open(self, base, room):
        self.base = base
        self.driver.get(f"{base}/chat/{room}/")

    def believe_rate(self, rate, burst):
        """From the next page load on, the page reads `rate` and `burst` in its settings, as
        a page opened before the server's limits were lowered would have: it then sends
        faster than the server allows."""
        source = """
            new MutationObserver((changes, observer) => {
              const meta = document.querySelector('meta[name="roomcast-config"]');
              if (!meta) return;
              const settings = JSON.parse(meta.content);
              settings.rate = %d; settings.burst = %d;
              meta.content = JSON.stringify(settings);
              observer.disconnect();
            }).observe(document, {childList: true, subtree: true});
        """ % (rate, burst)
        self.driver.execute_cdp_cmd("Page.addScriptToEvaluateOnNewDocument", {"source": source})

    def reload(self):
        self.driver.refresh()

    def visit(self, url):
        self.driver.get(url)

    # ---- what the page shows

    def state(self):
        return self.js("return document.getElementById('state').dataset.state")

    def wait_state(self, state, timeout=WAIT):
        until(f"{self.name} to be {state}", lambda: self.state() == state, timeout, seen=self.state)

    def messages(self):
        return self.js(
            """return [...document.querySelectorAll('#lines .msg')].map(m => ({
                 seq: Number(m.dataset.seq),
                 text: m.querySelector('.text').textContent,
                 who: m.querySelector('.who') ? m.querySelector('.who').textContent : null,
                 datetime: m.querySelector('time').dateTime,
                 time: m.querySelector('time').textContent,
                 mine: m.classList.contains('mine')}))"""
        )

    def texts(self):
        return [m["text"] for m in self.messages()]

    def wait_texts(self, wanted, timeout=WAIT):
        """Waits until every one of `wanted` is shown; the messages then."""
        wanted = list(wanted)

        def look():
            shown = self.texts()
            return all(text in shown for text in wanted) and shown

        def missing():
            shown = self.texts()
            return [text for text in wanted if text not in shown][:10]

        until(f"{self.name} to show {len(wanted)} messages", look, timeout, seen=missing)
        return self.messages()

    def notices(self):
        return self.js(
            """return [...document.querySelectorAll('#lines .notice')].map(n => ({
                 kind: n.dataset.kind, text: n.textContent}))"""
        )

    def pending(self):
        return self.js("return [...document.querySelectorAll('#pending .msg')].map(m => m.textContent)")

    def count(self):
        return self.js("return document.getElementById('count').textContent")

    def people(self):
        return self.js("return [...document.querySelectorAll('#peopleList li')].map(li => li.textContent)")

    def send_error(self):
        return self.js(
            "const e = document.getElementById('sendError'); return e.hidden ? '' : e.textContent"
        )

    def input_value(self):
        return self.js("return document.getElementById('msg').value")

    def focused(self):
        return self.js("return document.activeElement && document.activeElement.id")

    def probe(self):
        return self.js("return window.__probe")

    def layout(self):
        """Sizes at this moment: the header, the title's lines, where the message box is."""
        return self.js(
            """const h = document.querySelector('header').getBoundingClientRect(),
                     t = document.getElementById('roomName'),
                     i = document.getElementById('msg').getBoundingClientRect(),
                     lineHeight = parseFloat(getComputedStyle(t).lineHeight);
               return {header: h.height, titleHeight: t.getBoundingClientRect().height,
                       titleWidth: t.getBoundingClientRect().width, titleLines: Math.round(t.getBoundingClientRect().height / lineHeight),
                       inputTop: i.top, inputBottom: i.bottom, viewport: innerHeight, viewportWidth: innerWidth}"""
        )

    def console_problems(self):
        """Errors in the console (CSP violations included), but for the favicon the page has
        not got and the connections refused while a server is down."""
        problems = [
            entry["message"]
            for entry in self.driver.get_log("browser")
            if (entry["level"] == "SEVERE" or "Content Security Policy" in entry["message"])
            and "favicon.ico" not in entry["message"]
            # Attempts while the server is away fail, and Chromium logs each one.
            and not ("WebSocket connection to" in entry["message"] and "ERR_CONNECTION_REFUSED" in entry["message"])
        ]
        probe = self.probe() or {}
        return problems + probe.get("violations", []) + probe.get("errors", [])

    # ---- doing things

    def send(self, text):
        """Types `text` and presses Enter."""
        box = self.driver.find_element(By.ID, "msg")
        box.send_keys(text + Keys.ENTER)

    def click_send(self, text=None):
        """Types `text` (if any) and clicks Send with the mouse."""
        if text is not None:
            self.driver.find_element(By.ID, "msg").send_keys(text)
        button = self.driver.find_element(By.ID, "sendButton")
        ActionChains(self.driver).move_to_element(button).click().perform()

    def fill(self, text):
        """Puts `text` in the message box at once (typing 64 KiB key by key takes minutes)."""
        self.js(
            """const box = document.getElementById('msg');
               box.value = arguments[0];
               box.dispatchEvent(new Event('input', {bubbles: true}));""",
            text,
        )

    def open_people(self):
        self.driver.find_element(By.ID, "peopleButton").click()

    def network(self, online):
        """Takes the browser's network away or gives it back: the page sees `offline` and
        `online` events, as on a train."""
        self.driver.execute_cdp_cmd(
            "Network.emulateNetworkConditions",
            {"offline": not online, "latency": 0, "downloadThroughput": -1, "uploadThroughput": -1},
        )

    def screenshot(self, name):
        path = os.path.join(self.screenshots, name + ".png")
        self.driver.save_screenshot(path)
        return path


class Windows:
    """Opens windows and closes every one of them on the way out, whatever happened."""

    def __init__(self, screenshots):
        self.screenshots = screenshots
        self.all = []

    def open(self, name, size=DESKTOP, mobile=False):
        window = Window(name, size, mobile, self.screenshots)
        self.all.append(window)
        return window

    def __enter__(self):
        return self

    def __exit__(self, *_):
        for window in self.all:
            window.quit()


class TokenEndpoint:
    """A backend's token endpoint on loopback: `/login?user=ada&name=Ada` sets a session
    cookie; `/token` answers a signed-in browser (cross-origin, with credentials) with a fresh
    HS256 token for it, as JSON for some users and as bare text for others."""

    def __init__(self, port, secret, audience, lifetime, bare_for=()):
        self.secret, self.audience, self.lifetime, self.bare_for = secret, audience, lifetime, set(bare_for)
        self.names = {}
        self.issued = {}
        # Users whose next token is issued 59 s ago and expired 29 s ago: inside the server's
        # 30 s leeway, so it connects, and is closed with 4001 a second later.
        self.stale_next = set()
        endpoint = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *_):
                pass

            def do_GET(self):
                url = urlparse(self.path)
                if url.path == "/login":
                    query = parse_qs(url.query)
                    user, name = query["user"][0], query.get("name", [""])[0]
                    endpoint.names[user] = name
                    self.answer(200, "text/plain", b"signed in\n",
                                [("Set-Cookie", f"session={user}; Path=/; HttpOnly; SameSite=Lax")])
                elif url.path == "/token":
                    cookie = SimpleCookie(self.headers.get("Cookie", ""))
                    user = cookie["session"].value if "session" in cookie else None
                    if user not in endpoint.names:
                        return self.answer(401, "application/json", b'{"error":"not signed in"}')
                    token = endpoint.mint(user)
                    if user in endpoint.bare_for:
                        self.answer(200, "text/plain", token.encode())
                    else:
                        self.answer(200, "application/json", json.dumps({"token": token}).encode())
                else:
                    self.answer(404, "text/plain", b"no such page\n")

            def answer(self, status, kind, body, headers=()):
                self.send_response(status)
                origin = self.headers.get("Origin")
                if origin:
                    self.send_header("Access-Control-Allow-Origin", origin)
                    self.send_header("Access-Control-Allow-Credentials", "true")
                    self.send_header("Vary", "Origin")
                self.send_header("Content-Type", kind)
                self.send_header("Cache-Control", "no-store")
                self.send_header("Content-Length", str(len(body)))
                for name, value in headers:
                    self.send_header(name, value)
                self.end_headers()
                self.wfile.write(body)

        self.server = ThreadingHTTPServer(("127.0.0.1", port), Handler)
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()
        self.base = f"http://127.0.0.1:{port}"

    def mint(self, user):
        now = int(time.time())
        if user in self.stale_next:
            self.stale_next.discard(user)
            now -= self.lifetime + 29
        claims = {"sub": user, "name": self.names[user], "aud": self.audience, "iat": now, "exp": now + self.lifetime}
        self.issued[user] = self.issued.get(user, 0) + 1
        return jwt.encode(claims, self.secret, algorithm="HS256")

    def login_url(self, user, name):
        return f"{self.base}/login?user={user}&name={name}"

    def close(self):
        self.server.shutdown()
        self.server.server_close()


def stop_when_orphaned(parent):
    while os.getppid() == parent:
        time.sleep(0.5)
    os.kill(os.getpid(), signal.SIGTERM)


def main(scenarios):
    """`scenarios.py <name> <setup JSON>`: runs one scenario and reports its measurements."""
    # The Rust test stops a scenario with SIGTERM: unwind, so every window is closed. If the
    # test itself is gone (killed), stop the same way.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    threading.Thread(target=stop_when_orphaned, args=(os.getppid(),), daemon=True).start()
    name, setup = sys.argv[1], json.loads(sys.argv[2])
    control = Control()
    measurements = scenarios[name](setup, control)
    with open(os.path.join(setup["screenshots"], f"measurements-{name}.json"), "w") as out:
        json.dump(measurements, out, indent=2)
        out.write("\n")
    control.done(measurements)
