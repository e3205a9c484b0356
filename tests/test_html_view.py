"""`gc.to_html` / `graphc show --format html`: the page's data, and the page itself in a
headless Chromium (Chrome DevTools protocol over --remote-debugging-pipe, standard library
only). The browser tests skip when no chromium is installed."""

from __future__ import annotations

import base64
import json
import os
import shutil
import struct
import subprocess
import tempfile
import zlib
from typing import Any

import numpy as np
import pytest

import graphc as gc
from graphc import cli
from graphc.html_view import page_data

CHROMIUM = next((p for p in (shutil.which(n) for n in ("chromium", "chromium-browser",
                                                       "google-chrome")) if p), None)


def _model(name: str) -> tuple[gc.Graph, gc.Value]:
    g = gc.Graph(name, seed=0)
    x = g.input("x", (None, 4))
    y = g.input("y", (None,), dtype="int64")
    h = gc.tanh(gc.nn.linear(x, 8, name="hidden"))
    loss = gc.mean(gc.softmax_cross_entropy(gc.nn.linear(h, 3, name="out"), y))
    return g, loss


def test_page_data_of_a_step(graphc_cache_dir: str) -> None:
    _, loss = _model("html_data")
    step = gc.compile(loss, optimizer=gc.optim.SGD(lr=0.1))
    data = page_data(step)
    nodes = {n["id"]: n for n in data["nodes"]}
    assert len(nodes) == len(step.program.nodes)
    assert {n["role"] for n in nodes.values()} >= {"input", "param", "forward", "backward"}
    for src, dst in data["edges"]:   # layers follow the edges
        assert nodes[src]["y"] < nodes[dst]["y"]
    grads = [n for n in nodes.values() if "grad_of" in n]
    assert grads and all(n["grad_of"] in nodes and n["rule"] for n in grads)
    assert len(data["kernels"]) == len(step.code.instructions)
    assert all("def kernel(" in k["source"] for k in data["kernels"])
    assert {n["scope"] for n in nodes.values()} >= {"hidden", "out"}


def test_to_html_is_one_self_contained_file(tmp_path, graphc_cache_dir: str) -> None:
    g, loss = _model("html_file")
    path = gc.to_html(gc.grad(loss, g.params), tmp_path / "grads.html")
    html = open(path, encoding="utf-8").read()
    assert html.startswith("<!DOCTYPE html>") and "graphcView" in html
    assert "http://" not in html and "https://" not in html and "<script src" not in html


def test_graphc_show_html(tmp_path, capsys) -> None:
    script = tmp_path / "model.py"
    script.write_text("import graphc as gc\ng = gc.Graph('cli_html', seed=0)\n"
                      "x = g.input('x', (None, 3))\n"
                      "loss = gc.mean(gc.tanh(gc.nn.linear(x, 2, name='fc')))\n")
    out = tmp_path / "graph.html"
    assert cli.main(["show", str(script), "--backward", "--format", "html", "-o",
                     str(out)]) == 0
    assert "wrote html of loss (backward)" in capsys.readouterr().out
    assert "cli_html" in out.read_text()


# -- in a browser ------------------------------------------------------------------------

class Browser:
    """Headless Chromium driven through the DevTools protocol on a pipe (fds 3 and 4)."""

    def __init__(self) -> None:
        self.profile = tempfile.mkdtemp(prefix="graphc-chromium-")
        to_child, self._write = os.pipe()
        self._read, from_child = os.pipe()

        def wire() -> None:   # the pipe ends at fds 3 (commands) and 4 (replies)
            read_end, write_end = os.dup(to_child), os.dup(from_child)
            os.dup2(read_end, 3)
            os.dup2(write_end, 4)

        self.proc = subprocess.Popen(
            [CHROMIUM, "--headless=new", "--remote-debugging-pipe", "--no-sandbox",
             "--disable-gpu", "--no-first-run", f"--user-data-dir={self.profile}",
             "--window-size=1200,800", "about:blank"],
            preexec_fn=wire, pass_fds=(3, 4), stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL)
        os.close(to_child)
        os.close(from_child)
        self._buffer = b""
        self._id = 0
        self.events: list[dict[str, Any]] = []
        target = self.call("Target.createTarget", url="about:blank")["targetId"]
        self.session = self.call("Target.attachToTarget", targetId=target,
                                 flatten=True)["sessionId"]
        for domain in ("Page", "Runtime", "Log"):
            self.call(f"{domain}.enable", session=True)

    def _message(self) -> dict[str, Any]:
        while b"\0" not in self._buffer:
            chunk = os.read(self._read, 1 << 20)
            if not chunk:
                raise RuntimeError("chromium closed the pipe")
            self._buffer += chunk
        raw, self._buffer = self._buffer.split(b"\0", 1)
        return json.loads(raw)

    def call(self, method: str, session: bool = False, **params: Any) -> dict[str, Any]:
        self._id += 1
        msg: dict[str, Any] = {"id": self._id, "method": method, "params": params}
        if session:
            msg["sessionId"] = self.session
        os.write(self._write, json.dumps(msg).encode() + b"\0")
        while True:
            reply = self._message()
            if reply.get("id") == self._id:
                if "error" in reply:
                    raise RuntimeError(f"{method}: {reply['error']}")
                return reply["result"]
            self.events.append(reply)

    def wait_for(self, method: str) -> dict[str, Any]:
        for event in self.events:
            if event.get("method") == method:
                return event
        while True:
            event = self._message()
            self.events.append(event)
            if event.get("method") == method:
                return event

    def js(self, expression: str) -> Any:
        result = self.call("Runtime.evaluate", session=True, expression=expression,
                           returnByValue=True, awaitPromise=True)
        if "exceptionDetails" in result:
            raise RuntimeError(f"{expression}: {result['exceptionDetails']}")
        return result["result"].get("value")

    def click(self, x: float, y: float) -> None:
        for kind in ("mousePressed", "mouseReleased"):
            self.call("Input.dispatchMouseEvent", session=True, type=kind, x=x, y=y,
                      button="left", clickCount=1)

    def errors(self) -> list[str]:
        found = []
        for e in self.events:
            p = e.get("params", {})
            if e.get("method") == "Runtime.exceptionThrown":
                found.append(str(p["exceptionDetails"]))
            elif e.get("method") == "Runtime.consoleAPICalled" and p.get("type") == "error":
                found.append(str(p.get("args")))
            elif e.get("method") == "Log.entryAdded" and p["entry"]["level"] == "error":
                found.append(p["entry"]["text"])
        return found

    def close(self) -> None:
        self.proc.kill()
        self.proc.wait()
        os.close(self._write)
        os.close(self._read)
        shutil.rmtree(self.profile, ignore_errors=True)


def _distinct_pixels(png: bytes) -> int:
    """How many distinct byte values the decoded image rows hold (1-2 for a blank page)."""
    pos, data = 8, b""
    while pos < len(png):
        length, kind = struct.unpack(">I4s", png[pos:pos + 8])
        if kind == b"IDAT":
            data += png[pos + 8:pos + 8 + length]
        pos += 12 + length
    return len(set(zlib.decompress(data)))


@pytest.fixture
def browser():
    if CHROMIUM is None:
        pytest.skip("no chromium on PATH (apt-get install -y chromium)")
    b = Browser()
    try:
        yield b
    finally:
        b.close()


def _open(browser: Browser, path: str) -> None:
    browser.call("Page.navigate", session=True, url="file://" + path)
    browser.wait_for("Page.loadEventFired")


def test_page_in_a_browser_search_click_provenance(browser, tmp_path, graphc_cache_dir) -> None:
    _, loss = _model("html_browser")
    step = gc.compile(loss, optimizer=gc.optim.SGD(lr=0.1))
    feeds = {"x": np.ones((8, 4), np.float32), "y": np.zeros(8, np.int64)}
    path = gc.to_html(step, tmp_path / "step.html", profile=step.profile(feeds, steps=2))
    _open(browser, path)
    assert browser.errors() == []
    assert browser.js("graphcView.data.nodes.length") == len(step.program.nodes)

    # search by op through the search box
    browser.js("const s = document.getElementById('search'); s.value = 'tanh';"
               "s.dispatchEvent(new Event('input'))")
    tanh = next(n for n in step.program.nodes if n.op == "tanh")
    hits = browser.js("[...document.querySelectorAll('#results [data-node]')]"
                      ".map(e => Number(e.dataset.node))")
    assert tanh.id in hits
    browser.js(f"document.querySelector('#results [data-node=\"{tanh.id}\"]').click()")
    assert browser.js("graphcView.selected()") == tanh.id

    # a click on the canvas selects the node under it and shows its gradient nodes
    at = browser.js(f"graphcView.screenPos({tanh.id})")
    browser.js("graphcView.select(-1)")   # no such node: nothing changes
    browser.click(at["x"], at["y"])
    assert browser.js("graphcView.selected()") == tanh.id
    details = browser.js("document.getElementById('details').innerText")
    assert "tanh" in details and "gradient nodes" in details
    grads = {n.id for n in step.program.nodes
             if n.provenance is not None and n.provenance.forward == tanh.id}
    assert set(browser.js("graphcView.highlighted()")) == grads
    assert "def kernel(" in browser.js("document.getElementById('source').textContent")

    # and back: a gradient node names its forward node
    grad = min(grads)
    browser.js(f"graphcView.select({grad}, true)")
    assert browser.js("graphcView.highlighted()") == [tanh.id]
    assert "tanh vjp" in browser.js("document.getElementById('details').innerText")

    # collapse a layer, sort the profile table
    assert browser.js("graphcView.collapse('hidden')") > 3
    browser.js("document.querySelector('#profile th[data-col=\"index\"]').click()")
    first = browser.js("document.querySelector('#profile tr[data-kernel]').dataset.kernel")
    assert first == str(len(step.code.instructions) - 1)

    shot = base64.b64decode(browser.call("Page.captureScreenshot", session=True)["data"])
    assert _distinct_pixels(shot) > 20
    assert browser.errors() == []


def test_page_of_an_8_block_transformer(browser, tmp_path, graphc_cache_dir) -> None:
    from benchmarks.models import char_transformer

    loss, _ = char_transformer(8)
    step = gc.compile(loss, optimizer=gc.optim.Adam(1e-3))
    assert len(step.program.nodes) > 3000
    path = gc.to_html(step, tmp_path / "transformer8.html")
    _open(browser, path)
    assert browser.errors() == []
    # selecting anywhere in a 3,000-node page redraws without errors (its speed is
    # measured by hand, not asserted: the machine's load decides it)
    browser.js("(() => { for (let i = 0; i < 10; i++) graphcView.select(i * 300, true); })()")
    assert browser.errors() == []
    assert len(browser.js("graphcView.search('b7.fc1')")) > 10
    assert browser.js("graphcView.collapse('b3.')") > 50
    shot = base64.b64decode(browser.call("Page.captureScreenshot", session=True)["data"])
    assert _distinct_pixels(shot) > 20
    assert browser.errors() == []
