"""The one HTML page of `gpq serve` (`GET /`): pick or drop a photo, see its top k as a grid of
thumbnails with their distances, click one to search by it. Plain JavaScript, nothing loaded from
elsewhere; file names are shown as text, never as HTML."""

# The Content-Security-Policy the page is served with: its own inline script and style, images and
# JSON from this server (and the picked photo's blob: preview), nothing else.
CSP = (
    "default-src 'none'; script-src 'unsafe-inline'; style-src 'unsafe-inline'; "
    "img-src 'self' blob:; connect-src 'self'; base-uri 'none'; form-action 'none'; "
    "frame-ancestors 'none'"
)

PAGE = """<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>gpq search</title>
<style>
  body { font-family: system-ui, sans-serif; margin: 1.5rem; color: #222; }
  header { display: flex; gap: 1rem; align-items: center; flex-wrap: wrap; }
  #drop { border: 2px dashed #888; border-radius: 8px; padding: 1rem 1.5rem; }
  #drop.over { background: #eef; border-color: #44c; }
  #query { max-height: 120px; max-width: 160px; display: none; border-radius: 4px; }
  #status { margin: 1rem 0; min-height: 1.2em; }
  #status.error { color: #b00; }
  #results { display: grid; gap: 0.75rem;
             grid-template-columns: repeat(auto-fill, minmax(140px, 1fr)); }
  figure.hit { margin: 0; cursor: pointer; text-align: center; }
  figure.hit img { width: 100%; height: 130px; object-fit: cover; border-radius: 4px;
                   background: #eee; }
  figure.hit figcaption { font-size: 0.8rem; overflow-wrap: anywhere; }
  figure.hit:hover img { outline: 3px solid #44c; }
</style>
</head>
<body>
<header>
  <div id="drop">Drop a photo here, or pick one:
    <input id="file" type="file" accept="image/*">
  </div>
  <label>top <input id="k" type="number" min="1" value="__K__" style="width: 4em"></label>
  <img id="query" alt="the query">
  <span id="items"></span>
</header>
<div id="status"></div>
<div id="results"></div>
<script>
"use strict";
const $ = (id) => document.getElementById(id);
const grid = $("results"), statusLine = $("status"), queryImage = $("query");

function say(text, error) {
  statusLine.textContent = text;
  statusLine.className = error ? "error" : "";
}

function k() {
  const value = parseInt($("k").value, 10);
  return value > 0 ? value : __K__;
}

function baseName(path) {
  return path ? path.split(/[\\\\/]/).pop() : "";
}

function render(body) {
  grid.replaceChildren();
  grid.dataset.query = body.query;
  for (const hit of body.results) {
    const figure = document.createElement("figure");
    figure.className = "hit";
    figure.dataset.id = hit.id;
    figure.dataset.rank = hit.rank;
    figure.dataset.distance = hit.distance;
    figure.dataset.source = hit.source || "";
    figure.title = (hit.source || "item " + hit.id) + " (click: search by it)";
    const image = document.createElement("img");
    image.src = "items/" + hit.id + "/image";
    image.alt = baseName(hit.source) || "item " + hit.id;
    image.loading = "lazy";
    const caption = document.createElement("figcaption");
    caption.textContent = hit.rank + ". " + hit.distance.toFixed(4) +
      (hit.class ? " " + hit.class : "") + " " + (baseName(hit.source) || "#" + hit.id);
    figure.append(image, caption);
    figure.addEventListener("click", () => similar(hit.id, hit.source));
    grid.append(figure);
  }
  say("top " + body.results.length + " for " + baseName(body.query || ""), false);
}

async function answer(response) {
  let body;
  try {
    body = await response.json();
  } catch (error) {
    return say("the server answered " + response.status + " without JSON", true);
  }
  if (!response.ok) {
    return say(body.error || "error " + response.status, true);
  }
  render(body);
}

async function searchFile(file) {
  if (!file) return;
  queryImage.src = URL.createObjectURL(file);
  queryImage.style.display = "inline";
  say("searching " + file.name + " ...", false);
  const form = new FormData();
  form.append("image", file, file.name);
  try {
    await answer(await fetch("search?k=" + k(), { method: "POST", body: form }));
  } catch (error) {
    say("no answer from the server: " + error, true);
  }
}

async function similar(id, source) {
  queryImage.src = "items/" + id + "/image";
  queryImage.style.display = "inline";
  say("searching by " + (baseName(source) || "item " + id) + " ...", false);
  try {
    await answer(await fetch("items/" + id + "/similar?k=" + k()));
  } catch (error) {
    say("no answer from the server: " + error, true);
  }
}

$("file").addEventListener("change", (event) => searchFile(event.target.files[0]));
const drop = $("drop");
drop.addEventListener("dragover", (event) => {
  event.preventDefault();
  drop.classList.add("over");
});
drop.addEventListener("dragleave", () => drop.classList.remove("over"));
drop.addEventListener("drop", (event) => {
  event.preventDefault();
  drop.classList.remove("over");
  searchFile(event.dataTransfer.files[0]);
});
fetch("healthz").then((r) => r.json()).then((body) => {
  $("items").textContent = body.items + " items";
}).catch(() => {});
</script>
</body>
</html>
"""


def page(k):
    """The page's HTML, with `k` (an int) as the default top k."""
    return PAGE.replace("__K__", str(int(k)))
