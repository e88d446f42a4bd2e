// hookgate console: the one script its pages load (the Content-Security-Policy allows
// no other, and no inline script). The pages work without it; it adds:
// - times in the viewer's time zone (the server writes UTC);
// - the filter form's date inputs read and written in the viewer's zone;
// - the overview's periodic refresh (paused while the tab is hidden).
"use strict";

function localTimes() {
  const thisYear = new Date().getFullYear();
  for (const el of document.querySelectorAll("time[datetime]")) {
    const at = new Date(el.getAttribute("datetime"));
    if (isNaN(at)) continue;
    el.title = el.textContent;
    el.textContent = at.toLocaleString(undefined, {
      year: at.getFullYear() === thisYear ? undefined : "numeric",
      month: "short", day: "numeric",
      hour: "2-digit", minute: "2-digit", second: "2-digit",
    });
  }
  const zone = document.getElementById("zone");
  if (zone) zone.textContent = Intl.DateTimeFormat().resolvedOptions().timeZone || "your time zone";
}

function pad(n) { return String(n).padStart(2, "0"); }

// A datetime-local value ("YYYY-MM-DDTHH:MM:SS") for a Date, in the viewer's zone.
function localValue(at) {
  return at.getFullYear() + "-" + pad(at.getMonth() + 1) + "-" + pad(at.getDate()) +
    "T" + pad(at.getHours()) + ":" + pad(at.getMinutes()) + ":" + pad(at.getSeconds());
}

function localDateInputs() {
  const inputs = document.querySelectorAll("input[data-utc]");
  for (const input of inputs) {
    // The server echoes UTC; show it in the viewer's zone.
    if (input.value) {
      const at = new Date(input.value + "Z");
      if (!isNaN(at)) input.value = localValue(at);
    }
  }
  const form = document.querySelector("form.filters");
  if (!form) return;
  form.addEventListener("submit", () => {
    for (const input of inputs) {
      if (!input.value) continue;
      const at = new Date(input.value); // read in the viewer's zone
      if (isNaN(at)) continue;
      const utc = document.createElement("input");
      utc.type = "hidden";
      utc.name = input.name;
      utc.value = at.toISOString();
      input.removeAttribute("name");
      form.appendChild(utc);
    }
  });
}

function refresh() {
  const seconds = Number(document.body.dataset.refresh || 0);
  if (!seconds) return;
  setInterval(() => {
    if (!document.hidden) location.reload();
  }, seconds * 1000);
}

document.addEventListener("DOMContentLoaded", () => {
  localTimes();
  localDateInputs();
  refresh();
});
