// Live pages: when the store changes, fetch this page again and swap its [data-live] parts in.
(() => {
  "use strict";
  const live = document.getElementById("live");
  const stream = document.body.dataset.stream;

  const wire = (root) => {
    for (const form of root.querySelectorAll("form[data-confirm]")) {
      form.addEventListener("submit", (event) => {
        if (!window.confirm(form.dataset.confirm)) event.preventDefault();
      });
    }
    for (const all of root.querySelectorAll("input.select-all")) {
      all.addEventListener("change", () => {
        for (const box of document.querySelectorAll("input[name=ids]")) box.checked = all.checked;
      });
    }
  };

  let pending = null;
  let busy = false;
  let again = false;
  const refresh = async () => {
    pending = null;
    if (busy) {
      again = true; // a change came in while this page was being fetched: fetch it once more
      return;
    }
    busy = true;
    try {
      const response = await fetch(window.location.href, { credentials: "same-origin" });
      if (!response.ok) return;
      const fresh = new DOMParser().parseFromString(await response.text(), "text/html");
      for (const part of document.querySelectorAll("[data-live]")) {
        const next = fresh.getElementById(part.id);
        if (!next) continue;
        const checked = new Set(
          [...part.querySelectorAll("input[type=checkbox]:checked")].map((box) => box.value));
        const open = new Set([...part.querySelectorAll("details[open]")].map((d, i) => i));
        part.replaceWith(next);
        for (const box of next.querySelectorAll("input[type=checkbox]")) {
          if (checked.has(box.value)) box.checked = true;
        }
        next.querySelectorAll("details").forEach((d, i) => { d.open = open.has(i) || d.open; });
        wire(next);
      }
      document.body.dataset.refreshed = String(Date.now());
    } finally {
      busy = false;
      if (again) {
        again = false;
        soon(0);
      }
    }
  };
  const soon = (ms) => { if (pending === null) pending = window.setTimeout(refresh, ms); };

  wire(document);
  if (!stream || !window.EventSource) return;
  const listen = () => {
    const source = new EventSource(stream);
    source.addEventListener("open", () => { live.textContent = "live"; live.classList.add("on"); });
    source.addEventListener("change", () => soon(150));
    source.addEventListener("error", () => {
      live.textContent = "reconnecting…";
      live.classList.remove("on");
      // EventSource retries by itself, except after an answer that is not a stream (the
      // server was full, or restarted): then try again a little later
      if (source.readyState === EventSource.CLOSED) window.setTimeout(listen, 5000);
    });
  };
  listen();
  // heartbeats and counts move without job events: look again now and then
  window.setInterval(() => soon(0), 10000);
})();
