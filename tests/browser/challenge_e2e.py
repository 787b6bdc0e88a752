#!/usr/bin/env python3
"""End-to-end test of the shield's challenge in a real headless Chromium (Debian's `chromium`),
driven over the DevTools protocol. Starts a real origin, the real `qalqan shield` (forced into
under_attack through its admin listener) and checks that:

1. a browser that runs JavaScript solves the proof of work and reaches the page;
2. the cleared browser is not challenged again;
3. a browser with JavaScript disabled passes through the no-JavaScript path (meta refresh);
4. a client that neither runs JavaScript nor follows the no-JS path never reaches the page.

Everything listens on 127.0.0.1. Prints `browser: N passed, M failed` and exits non-zero on a
failure.

Usage: challenge_e2e.py PATH/TO/qalqan
"""

import http.server
import json
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request

import websocket  # websocket-client, installed by scripts/test.sh

FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--no-first-run",
    "--disable-component-update",
    "--disable-sync",
]


def free_port():
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


class Origin(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    hits = 0

    def do_GET(self):
        if self.path.startswith("/search"):
            Origin.hits += 1
        body = f"<!doctype html><title>article</title><p>origin page {self.path}</p>".encode()
        self.send_response(200)
        self.send_header("Content-Type", "text/html; charset=utf-8")
        self.send_header("Cache-Control", "no-store")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args):
        pass


class Browser:
    def __init__(self, js=True):
        self.dir = tempfile.mkdtemp(prefix="qalqan-chromium-")
        self.port = free_port()
        self.proc = subprocess.Popen(
            ["chromium", *FLAGS, f"--user-data-dir={self.dir}",
             f"--remote-debugging-port={self.port}", "--remote-allow-origins=*", "about:blank"],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        tabs = None
        for _ in range(200):
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{self.port}/json/list") as r:
                    tabs = json.load(r)
                break
            except OSError:
                time.sleep(0.1)
        if tabs is None:
            raise RuntimeError("chromium did not open its DevTools port")
        page = [t for t in tabs if t["type"] == "page"][0]
        self.ws = websocket.create_connection(page["webSocketDebuggerUrl"], timeout=10)
        self.n = 0
        if not js:
            self.call("Emulation.setScriptExecutionDisabled", value=True)

    def call(self, method, **params):
        self.n += 1
        self.ws.send(json.dumps({"id": self.n, "method": method, "params": params}))
        while True:
            msg = json.loads(self.ws.recv())
            if msg.get("id") == self.n:
                return msg

    def text(self):
        r = self.call("Runtime.evaluate", expression="document.body ? document.body.innerText : ''")
        return r.get("result", {}).get("result", {}).get("value", "")

    def open(self, url, want, within):
        """Navigates and waits until the page text contains `want`; returns (ok, seconds, text)."""
        self.call("Page.navigate", url=url)
        t0 = time.time()
        text = ""
        while time.time() - t0 < within:
            text = self.text()
            if want in text:
                return True, time.time() - t0, text
            time.sleep(0.2)
        return False, time.time() - t0, text

    def close(self):
        try:
            self.ws.close()
        finally:
            self.proc.kill()
            self.proc.wait()
            shutil.rmtree(self.dir, ignore_errors=True)


def main():
    qalqan = sys.argv[1]
    origin_port, listen, admin = free_port(), free_port(), free_port()
    server = http.server.ThreadingHTTPServer(("127.0.0.1", origin_port), Origin)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    work = tempfile.mkdtemp(prefix="qalqan-e2e-")
    cfg = f"{work}/shield.toml"
    with open(cfg, "w") as f:
        f.write(f"""
[origin]
url = "http://127.0.0.1:{origin_port}"
[[listen]]
address = "127.0.0.1:{listen}"
[admin]
address = "127.0.0.1:{admin}"
[access_log]
path = ""
[attack]
episodes_path = ""
[challenge]
nojs_delay = "2s"
""")
    shield = subprocess.Popen([qalqan, "shield", "--config", cfg],
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    results = []

    def check(name, ok, detail=""):
        results.append(ok)
        print(f"{'ok  ' if ok else 'FAIL'} {name} {detail}")

    try:
        for _ in range(100):
            try:
                urllib.request.urlopen(f"http://127.0.0.1:{admin}/healthz").read()
                break
            except OSError:
                time.sleep(0.1)
        req = urllib.request.Request(
            f"http://127.0.0.1:{admin}/mode?set=under-attack&for=1h", method="POST")
        urllib.request.urlopen(req).read()
        base = f"http://127.0.0.1:{listen}"

        b = Browser(js=True)
        try:
            ok, secs, text = b.open(f"{base}/search?q=number+one", "origin page /search", 20)
            check("a browser running JavaScript solves the challenge", ok, f"({secs:.1f} s)")
            hits = Origin.hits
            ok, secs, text = b.open(f"{base}/search?q=second", "origin page /search?q=second", 5)
            challenged = "Checking" in text or "Проверка" in text
            check("the cleared browser is not challenged again", ok and not challenged,
                  f"({secs:.1f} s)")
            check("the cleared browser reached the origin once more", Origin.hits == hits + 1)
        finally:
            b.close()

        b = Browser(js=False)
        try:
            ok, secs, _ = b.open(f"{base}/search?q=nojs", "origin page /search?q=nojs", 20)
            check("a browser without JavaScript passes by waiting", ok and secs >= 1.5,
                  f"({secs:.1f} s)")
        finally:
            b.close()

        hits = Origin.hits
        statuses = []
        for _ in range(3):
            try:
                urllib.request.urlopen(f"{base}/search?q=bot")
                statuses.append(200)
            except urllib.error.HTTPError as e:
                statuses.append(e.code)
        # 403 (the challenge) or 429 (the same address is over the search rate by now).
        check("a client that neither solves nor waits never reaches the page",
              all(s in (403, 429) for s in statuses) and Origin.hits == hits, f"{statuses}")
    finally:
        shield.terminate()
        shield.wait(timeout=15)
        server.shutdown()
        shutil.rmtree(work, ignore_errors=True)

    passed = sum(1 for r in results if r)
    failed = len(results) - passed
    print(f"browser: {passed} passed, {failed} failed")
    sys.exit(1 if failed else 0)


if __name__ == "__main__":
    main()
