// driftwatch dashboard: the few things that need a script. Every page works without it.
// 1. Times: shown in the viewer's zone, UTC kept in the tooltip.
// 2. Live pages (<main data-live="SECONDS">): refreshed in place; a banner says when
//    the collector cannot be reached. A refresh waits while the user is in a form.
"use strict";
(function () {
  function localTimes(root) {
    root.querySelectorAll("time[datetime]").forEach(function (el) {
      var when = new Date(el.getAttribute("datetime"));
      if (!isNaN(when)) {
        el.textContent = when.toLocaleString();
        el.title = el.getAttribute("datetime") + " (UTC)";
      }
    });
  }
  function busy(main) {
    var active = document.activeElement;
    return (active && main.contains(active) && active.closest("form")) ||
      main.querySelector("details[open]");
  }
  function live(main, seconds) {
    var banner = document.getElementById("offline");
    setInterval(function () {
      if (document.hidden || busy(main)) { return; }
      fetch(location.href, { credentials: "same-origin", cache: "no-store" })
        .then(function (response) {
          if (response.redirected || !response.ok) { throw new Error(String(response.status)); }
          return response.text();
        })
        .then(function (html) {
          var next = new DOMParser().parseFromString(html, "text/html").getElementById("main");
          if (next && next.innerHTML !== main.dataset.last) {
            main.dataset.last = next.innerHTML;
            main.innerHTML = next.innerHTML;
            localTimes(main);
          }
          if (banner) { banner.hidden = true; }
        })
        .catch(function () { if (banner) { banner.hidden = false; } });
    }, seconds * 1000);
  }
  document.addEventListener("DOMContentLoaded", function () {
    localTimes(document);
    var main = document.getElementById("main");
    var seconds = main && Number(main.getAttribute("data-live"));
    if (seconds > 0) { live(main, seconds); }
  });
})();
