"""The labelling page: one HTML document with its CSS and JavaScript inline, no external
assets, so it works offline and behind any firewall.

What comes from the server (prompts, responses, error messages, names) is only ever put in
the page with `textContent` or `value`, never parsed as HTML: a response holding
`<script>alert(1)</script>` shows as those characters. The Content-Security-Policy the
server sends with the page allows only the two inline blocks carrying this response's
nonce, so even a slip in that rule could not run injected code.

How the page talks to the server (see `rlhfkit.label.server`): POST /api/next, /api/judge,
/api/undo with JSON bodies; each answer carries the next pair and the progress. When the
server cannot be reached (restarting), the page keeps the pending request and sends it again
every second; the server writes a repeated judgement only once. Every 30 s the page tells
the server which pair it shows, which keeps that pair reserved (and claims it back after a
restart).

Hooks for tests and for people reading the DOM: <body data-state="loading | name | busy |
ready | waiting | done | offline">, and data-pair-id on #task.
"""

from __future__ import annotations

__all__ = ["render_page"]


CSS = """
*{box-sizing:border-box}
body{margin:0;font:16px/1.5 system-ui,-apple-system,'Segoe UI',Roboto,'DejaVu Sans',sans-serif;
 color:#1f2328;background:#f6f8fa}
header{display:flex;flex-wrap:wrap;align-items:center;gap:.5em 1.5em;padding:.6em 1em;
 background:#fff;border-bottom:1px solid #d0d7de}
h1{font-size:1.15em;margin:0}
h2{font-size:.8em;text-transform:uppercase;letter-spacing:.05em;color:#59636e;margin:.2em 0 .4em}
header label{display:flex;align-items:center;gap:.4em}
input{font:inherit;padding:.35em .5em;border:1px solid #8c959f;border-radius:6px;width:12em}
.progress{display:flex;align-items:center;gap:.6em;margin-left:auto}
progress{width:10em;height:.8em}
main{max-width:1200px;margin:0 auto;padding:1em}
.text{white-space:pre-wrap;overflow-wrap:anywhere;background:#fff;border:1px solid #d0d7de;
 border-radius:6px;padding:.75em;margin:0 0 .8em;min-height:2.5em}
#prompt{background:#eef4fb}
.pair{display:grid;grid-template-columns:1fr 1fr;gap:1em}
.pair article{display:flex;flex-direction:column}
.pair .text{flex:1}
.actions{display:flex;flex-wrap:wrap;gap:.6em;margin:.4em 0 1em}
button{font:inherit;min-height:44px;padding:.5em 1em;border:1px solid #8c959f;border-radius:6px;
 background:#fff;color:#1f2328;cursor:pointer}
button.choose{width:100%;background:#0969da;border-color:#0969da;color:#fff;font-weight:600}
button:hover:not(:disabled){filter:brightness(.95)}
button:disabled{opacity:.45;cursor:default}
kbd{font:.85em ui-monospace,SFMono-Regular,Menlo,Consolas,'DejaVu Sans Mono',monospace;
 padding:0 .35em;border:1px solid currentColor;border-radius:4px;margin-right:.35em}
#banner{background:#fff8c5;border:1px solid #d4a72c;border-radius:6px;padding:.6em .8em;
 margin-bottom:1em}
#message{font-size:1.1em;background:#fff;border:1px solid #d0d7de;border-radius:6px;
 padding:1em;margin-bottom:1em}
.help{color:#59636e;font-size:.9em}
@media (pointer:coarse){.help{display:none}}   /* a touch screen has no keys to learn */
@media (max-width:720px){
 .pair{grid-template-columns:1fr}
 header{gap:.4em .8em} .progress{margin-left:0;width:100%} progress{flex:1}
 input{width:100%} header label{flex:1}
}
"""

BODY = """
<header>
  <h1>rlhfkit label</h1>
  <label for="annotator">Annotator
    <input id="annotator" maxlength="64" autocomplete="name" placeholder="your name"
           spellcheck="false"></label>
  <div class="progress"><span id="progress" aria-live="polite">&ndash;</span>
    <progress id="bar" max="1" value="0"></progress></div>
</header>
<main>
  <div id="banner" role="alert" hidden></div>
  <div id="message" hidden></div>
  <section id="task" hidden>
    <h2>Prompt</h2>
    <div id="prompt" class="text"></div>
    <div class="pair">
      <article><h2>Response 1</h2><div id="left" class="text"></div>
        <button id="choose-left" class="choose" data-action="left"><kbd>1</kbd>Response 1 is
          better</button></article>
      <article><h2>Response 2</h2><div id="right" class="text"></div>
        <button id="choose-right" class="choose" data-action="right"><kbd>2</kbd>Response 2 is
          better</button></article>
    </div>
  </section>
  <div class="actions">
    <button id="tie" data-action="tie"><kbd>T</kbd>Tie: equally good</button>
    <button id="skip" data-action="skip"><kbd>S</kbd>Skip</button>
    <button id="undo" data-action="undo"><kbd>U</kbd>Undo last</button>
  </div>
  <p class="help">Keys: <kbd>1</kbd> or <kbd>2</kbd> picks the better response, <kbd>T</kbd> tie,
  <kbd>S</kbd> skip, <kbd>U</kbd> undo. Each choice is saved before the next pair appears.</p>
</main>
"""

SCRIPT = r"""
"use strict";
(function () {
  const RETRY_MS = 1000, MAX_RETRIES = 600, WAIT_POLL_MS = 10000, HEARTBEAT_MS = 30000;
  const $ = (id) => document.getElementById(id);
  const token = new URLSearchParams(location.search).get("token") || "";
  let annotator = "", current = null, busy = false, canUndo = false, pollTimer = null;
  let lastStatus = 0;

  function setState(state) { document.body.dataset.state = state; }
  function show(id, text) { const el = $(id); el.textContent = text; el.hidden = !text; }
  function sleep(ms) { return new Promise((resolve) => setTimeout(resolve, ms)); }

  function remember(name) {
    try { localStorage.setItem("rlhfkit-annotator", name); } catch (e) { /* private mode */ }
  }
  function remembered() {
    try { return localStorage.getItem("rlhfkit-annotator") || ""; } catch (e) { return ""; }
  }

  function setButtons() {
    const open = !busy && current !== null && annotator !== "";
    for (const id of ["choose-left", "choose-right", "tie", "skip"]) $(id).disabled = !open;
    $("undo").disabled = busy || !canUndo;
  }

  // POST a JSON body until the server answers: a refused connection (a restarting server)
  // is retried, and the server writes a repeated judgement once. Returns the JSON or null.
  async function send(path, body) {
    busy = true; setButtons();
    for (let attempt = 0; attempt <= MAX_RETRIES; attempt++) {
      let response;
      try {
        response = await fetch(path, {method: "POST", cache: "no-store",
          headers: {"Content-Type": "application/json", "X-Rlhfkit-Token": token},
          body: JSON.stringify(body)});
      } catch (err) {
        setState("offline");
        show("banner", "Cannot reach the labelling server; trying again every second. " +
             "Your last choice is kept and will be sent when the server is back.");
        await sleep(RETRY_MS);
        continue;
      }
      let data = null;
      try { data = await response.json(); } catch (err) { data = null; }
      busy = false; lastStatus = response.status;
      if (!response.ok) {
        show("banner", (data && data.error) || ("The server answered " + response.status + "."));
        setButtons();
        return null;
      }
      show("banner", "");
      return data;
    }
    busy = false; setState("offline"); setButtons();
    show("banner", "The labelling server is gone. Reload this page when it runs again.");
    return null;
  }

  function render(data) {
    const p = data.progress;
    current = data.pair; canUndo = p.can_undo;
    $("progress").textContent = p.labelled + " / " + p.total + " labelled · yours: " +
      p.yours + (p.skipped ? " · skipped: " + p.skipped : "");
    $("bar").value = p.total ? p.labelled / p.total : 1;
    const note = {taken: "Someone else finished that pair meanwhile; here is another one.",
                  duplicate: "That choice was already saved."}[data.status] || "";
    show("banner", note);
    clearTimeout(pollTimer);
    if (current) {
      $("task").dataset.pairId = current.pair_id;
      $("prompt").textContent = current.prompt;
      $("left").textContent = current.left;
      $("right").textContent = current.right;
      $("task").hidden = false; show("message", ""); setState("ready");
    } else {
      $("task").hidden = true; delete $("task").dataset.pairId;
      if (data.done) {
        show("message", "All done: there is nothing left for you to label. Thank you!");
        setState("done");
      } else {
        show("message", "Every open pair is being labelled by someone else right now; " +
             "looking again in a few seconds.");
        setState("waiting");
        pollTimer = setTimeout(next, WAIT_POLL_MS);
      }
    }
    setButtons();
  }

  // One exchange, shown as state "busy". After an error answer the page shows what it
  // showed before, except that a pair the server does not know (it was restarted with
  // other pairs) is replaced by the next one.
  async function exchange(path, body) {
    const before = document.body.dataset.state;
    setState("busy");
    const data = await send(path, body);
    if (data) {
      render(data);
    } else if (lastStatus === 404 && path === "/api/judge") {
      current = null; next();
    } else if (document.body.dataset.state === "busy") {
      setState(before);
    }
  }

  // What the page shows goes with every /api/next: a restarted server hands it back.
  function shownBody() {
    return current ? {annotator, pair_id: current.pair_id, left: current.left_is} : {annotator};
  }

  function next() {
    if (annotator && !busy) exchange("/api/next", shownBody());
  }

  // Every 30 s, quietly: keeps the lease of a slow reader alive, claims the pair back after
  // a server restart, and moves on if someone else finished it meanwhile.
  async function heartbeat() {
    if (busy || !current || document.body.dataset.state !== "ready") return;
    try {
      const response = await fetch("/api/next", {method: "POST", cache: "no-store",
        headers: {"Content-Type": "application/json", "X-Rlhfkit-Token": token},
        body: JSON.stringify(shownBody())});
      const data = response.ok ? await response.json() : null;
      if (data && !busy && current && (!data.pair || data.pair.pair_id !== current.pair_id)) {
        render(data);
      }
    } catch (err) { /* the next choice finds out, and retries */ }
  }

  function act(action) {
    if (busy || !annotator) return;
    if (action === "undo") {
      if (canUndo) exchange("/api/undo", {annotator});
      return;
    }
    if (!current) return;
    const other = current.left_is === "a" ? "b" : "a";
    const label = {left: current.left_is, right: other, tie: "tie", skip: "skip"}[action];
    exchange("/api/judge", {annotator, pair_id: current.pair_id, label, left: current.left_is});
  }

  function setAnnotator(name) {
    name = name.trim();
    if (name === annotator) return;
    annotator = name; remember(name); current = null; $("task").hidden = true;
    if (name) { next(); } else { askName(); }
  }

  function askName() {
    setState("name"); setButtons();
    show("message", "Type your name (or any id) in the Annotator box to start labelling.");
  }

  $("annotator").addEventListener("change", (e) => setAnnotator(e.target.value));
  document.addEventListener("click", (e) => {
    const button = e.target.closest("button[data-action]");
    if (button) { button.blur(); act(button.dataset.action); }
  });
  document.addEventListener("keydown", (e) => {
    if (e.ctrlKey || e.metaKey || e.altKey || e.repeat) return;
    if (e.target instanceof HTMLInputElement) {
      if (e.key === "Enter") e.target.blur();   // commits the name (a change event)
      return;
    }
    const keys = {"1": "left", "2": "right", "t": "tie", "s": "skip", "u": "undo"};
    const action = keys[e.key.toLowerCase()];
    if (action) { e.preventDefault(); act(action); }
  });

  setInterval(heartbeat, HEARTBEAT_MS);
  $("annotator").value = remembered();
  if ($("annotator").value.trim()) { setAnnotator($("annotator").value); } else { askName(); }
})();
"""


def render_page(nonce: str) -> str:
    """The page, its inline style and script marked with this response's CSP nonce."""
    return ("<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">"
            "<meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">"
            "<link rel=\"icon\" href=\"data:,\"><title>rlhfkit label</title>"
            f"<style nonce=\"{nonce}\">{CSS}</style></head>\n"
            f"<body data-state=\"loading\">{BODY}<script nonce=\"{nonce}\">{SCRIPT}</script>"
            "</body></html>\n")
