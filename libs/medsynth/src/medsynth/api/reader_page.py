"""The page a reader of a reader study works on: one image, two buttons, optionally a rating; no
framework, no external resource. It talks to the api with the token of its link."""

from __future__ import annotations

import json
from typing import Any

PAGE = """<!doctype html><html lang=en><head><meta charset=utf-8><title>Real or synthetic?</title>
<meta name=viewport content="width=device-width,initial-scale=1">
<style>
body{font-family:system-ui,sans-serif;max-width:640px;margin:2em auto;padding:0 1em;text-align:center;color:#222}
img{image-rendering:pixelated;width:384px;height:384px;background:#000;border:1px solid #999}
button{font-size:1.1em;padding:.6em 1.6em;margin:.4em;cursor:pointer}
#quality{margin:.6em} .muted{color:#666}
</style></head><body>
<h1>Real or synthetic?</h1>
<p class=muted id=progress></p>
<div id=task><img id=image alt="the image to judge"><div id=quality hidden>
<label>Image quality: <select id=rating><option value="">choose</option><option>1</option><option>2</option><option>3</option>
<option>4</option><option>5</option></select></label></div>
<button id=real>Real</button><button id=synthetic>Synthetic</button></div>
<p id=done hidden>All images are answered. Thank you.</p>
<p id=error role=alert style="color:#b00"></p>
<script>
const STUDY = __STUDY__;
const token = new URLSearchParams(location.search).get("token");
let current = __FIRST__;
function show(state) {
  current = state;
  document.getElementById("progress").textContent = state.answered + " of " + state.total + " answered";
  document.getElementById("quality").hidden = !state.rate_quality;
  if (state.done) { document.getElementById("task").hidden = true; document.getElementById("done").hidden = false; return; }
  document.getElementById("image").src = state.image + "?token=" + encodeURIComponent(token);
  document.getElementById("rating").value = "";
}
async function send(answer) {
  const body = {item: current.item, answer: answer};
  if (current.rate_quality) {
    const q = document.getElementById("rating").value;
    if (!q) { document.getElementById("error").textContent = "Please rate the image quality first."; return; }
    body.quality = Number(q);
  }
  document.getElementById("error").textContent = "";
  const r = await fetch("/v1/reader-studies/" + STUDY + "/answers", {method: "POST",
    headers: {"content-type": "application/json", "x-reader-token": token}, body: JSON.stringify(body)});
  const data = await r.json();
  if (!r.ok) { document.getElementById("error").textContent = data.detail || ("error " + r.status); return; }
  show(data);
}
document.getElementById("real").onclick = () => send("real");
document.getElementById("synthetic").onclick = () => send("synthetic");
show(current);
</script></body></html>"""


def reader_page(study_id: str, first: dict[str, Any]) -> str:
    safe = lambda value: json.dumps(value).replace("<", "\\u003c")  # noqa: E731 - inside a <script>
    return PAGE.replace("__STUDY__", safe(study_id)).replace("__FIRST__", safe(first))
