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
  // The submitted value is rewritten, not the form: a form changed on submit and then
  // restored by Back (the back/forward cache) sent its old time whatever was typed next.
  form.addEventListener("formdata", (event) => {
    for (const input of inputs) {
      if (!input.value) continue;
      const at = new Date(input.value); // read in the viewer's zone
      if (isNaN(at)) continue;
      event.formData.set(input.name, at.toISOString());
    }
  });
}

// Reloads only once the gateway answers: a reload while it was down left the browser's
// own error page, where no script runs, and the screen never came back. Meanwhile the
// page says since when the gateway has not answered.
function refresh() {
  const seconds = Number(document.body.dataset.refresh || 0);
  if (!seconds) return;
  let down = null;
  setInterval(async () => {
    if (document.hidden) return;
    try {
      // The smallest thing the console answers: its own script, headers only.
      // A proxy in front answering 502 for it is no gateway answering either.
      const answer = await fetch("/ui/static/console.js", { method: "HEAD", cache: "no-store" });
      if (!answer.ok) throw new Error(String(answer.status));
    } catch (_) {
      if (!down) {
        down = document.createElement("p");
        down.className = "error";
        down.id = "unreachable";
        down.setAttribute("role", "alert");
        down.textContent = "The gateway has not answered since " +
          new Date().toLocaleTimeString() + "; trying again every " + seconds + " s.";
        document.querySelector("main").prepend(down);
      }
      return;
    }
    location.reload();
  }, seconds * 1000);
}

document.addEventListener("DOMContentLoaded", () => {
  localTimes();
  localDateInputs();
  refresh();
});
