// warden console: live updates over server-sent events, steps that stay open
// across updates, and times in the viewer's zone. No inline script anywhere
// (the Content-Security-Policy forbids it); the server escapes every value.
"use strict";

function localTimes(root) {
  for (const t of root.querySelectorAll("time[datetime]")) {
    const d = new Date(t.getAttribute("datetime"));
    if (!isNaN(d)) {
      t.textContent = d.toLocaleString(undefined, {dateStyle: "medium", timeStyle: "medium"});
      t.title = t.getAttribute("datetime");
    }
  }
}

function openIds(root) {
  return new Set([...root.querySelectorAll("details[open][id]")].map((d) => d.id));
}

function live(target) {
  const src = target.dataset.live;
  if (!src || !window.EventSource) return;
  const source = new EventSource(src);
  let pending = null;
  const apply = (msg) => {
    const keep = openIds(target);
    // Server-rendered and escaped; parsed without running anything.
    const doc = new DOMParser().parseFromString("<div>" + msg.html + "</div>", "text/html");
    target.replaceChildren(...doc.body.firstChild.childNodes);
    for (const id of keep) {
      const d = document.getElementById(id);
      if (d && d.tagName === "DETAILS") d.open = true;
    }
    localTimes(target);
  };
  // Never redraw under someone typing (a comment on a decision): the latest
  // update waits until they leave the field.
  const typing = () => {
    const a = document.activeElement;
    return a && target.contains(a) && (a.tagName === "INPUT" || a.tagName === "TEXTAREA" || a.tagName === "SELECT");
  };
  target.addEventListener("focusout", () => {
    setTimeout(() => { if (pending && !typing()) { const m = pending; pending = null; apply(m); } }, 0);
  });
  source.addEventListener(target.dataset.event, (e) => {
    const msg = JSON.parse(e.data);
    if (msg.ended) source.close();
    if (typing()) { pending = msg; return; }
    pending = null;
    apply(msg);
  });
}

function openFromHash() {
  const id = decodeURIComponent(location.hash.slice(1));
  const d = id && document.getElementById(id);
  if (d && d.tagName === "DETAILS") d.open = true;
}

document.addEventListener("DOMContentLoaded", () => {
  localTimes(document);
  openFromHash();
  window.addEventListener("hashchange", openFromHash);
  for (const t of document.querySelectorAll("[data-live]")) live(t);
});
