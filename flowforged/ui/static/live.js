// Follows the daemon's event stream (/ui/events) and swaps in what the server renders again: the tiles
// of a pipeline on the board, the <main> of a pipeline or run page. The browser's EventSource sends
// Last-Event-ID when it reconnects, and the stream replays what was missed from there.
"use strict";
(function () {
  const main = document.getElementById("main");
  const status = document.getElementById("live");
  if (!main || !main.dataset.live || !window.EventSource) return;
  const pending = new Map();

  function later(key, fn) {
    if (pending.has(key)) return;
    pending.set(key, setTimeout(function () { pending.delete(key); fn(); }, 150));
  }

  async function fetchText(url) {
    const response = await fetch(url, { credentials: "same-origin", headers: { Accept: "text/html" } });
    if (response.status === 401 || response.redirected) { window.location.reload(); return null; }
    return response.ok ? response.text() : null;
  }

  async function refreshTiles(source, pipeline) {
    const list = document.getElementById("tiles");
    const query = new URLSearchParams({ source: source, pipeline: pipeline });
    const html = await fetchText("/ui/tiles?" + query);
    if (html === null || !list) return;
    const fresh = new DOMParser().parseFromString("<ul>" + html + "</ul>", "text/html").querySelectorAll("li.tile");
    const old = Array.from(list.querySelectorAll("li.tile")).filter(function (li) {
      return li.dataset.source === source && li.dataset.pipeline === pipeline;
    });
    if (!old.length) return; // filtered out, or new: the next visit shows it
    fresh.forEach(function (li, index) {
      const before = old[index];
      if (before) before.replaceWith(li); else old[old.length - 1].after(li);
      if (li.classList.contains("t-failing") && !(before && before.classList.contains("t-failing"))) list.prepend(li);
    });
    old.slice(fresh.length).forEach(function (li) { li.remove(); });
  }

  async function refreshPage() {
    const html = await fetchText(window.location.href);
    if (html === null) return;
    const fresh = new DOMParser().parseFromString(html, "text/html").getElementById("main");
    if (fresh) main.replaceChildren.apply(main, Array.from(fresh.childNodes));
  }

  function wanted(event) {
    const d = main.dataset;
    if (d.run) return event.source === d.source && event.run_id === d.run;
    return event.source === d.source && event.pipeline === d.pipeline;
  }

  const after = main.dataset.after ? "?after=" + encodeURIComponent(main.dataset.after) : "";
  const stream = new EventSource("/ui/events" + after);
  stream.onopen = function () { status.textContent = "live"; };
  stream.onerror = function () { status.textContent = "reconnecting…"; };
  stream.onmessage = function (message) {
    const event = JSON.parse(message.data);
    if (main.dataset.live === "board") {
      if (event.kind === "run") later(event.source + "\n" + event.pipeline, function () { refreshTiles(event.source, event.pipeline); });
    } else if (wanted(event)) {
      later("page", refreshPage);
    }
  };
})();
