// Berth's portal: progressive enhancement only. Every page works without this file.
(function () {
  "use strict";

  // Copy buttons: any element with data-copy gets a button that copies that text.
  function addCopyButtons(root) {
    root.querySelectorAll("[data-copy]").forEach(function (el) {
      if (el.dataset.copyReady) return;
      el.dataset.copyReady = "1";
      var button = document.createElement("button");
      button.type = "button";
      button.className = "copy";
      button.textContent = "Copy";
      button.setAttribute("aria-label", "Copy " + (el.dataset.copyLabel || "to the clipboard"));
      button.addEventListener("click", function () {
        var text = el.dataset.copy;
        var done = function () {
          button.textContent = "Copied";
          setTimeout(function () { button.textContent = "Copy"; }, 1500);
        };
        if (navigator.clipboard && window.isSecureContext) {
          navigator.clipboard.writeText(text).then(done, function () { fallback(text); done(); });
        } else {
          fallback(text);
          done();
        }
      });
      el.insertAdjacentElement("afterend", button);
    });
  }

  function fallback(text) {
    var area = document.createElement("textarea");
    area.value = text;
    area.setAttribute("readonly", "");
    area.style.position = "fixed";
    area.style.opacity = "0";
    document.body.appendChild(area);
    area.select();
    try { document.execCommand("copy"); } catch (e) { /* nothing more to try */ }
    document.body.removeChild(area);
  }

  // Filter as you type: <input data-filter="TABLE-ID"> hides rows whose data-key lacks the text. The form around
  // the input still submits ?filter= to the server (which filters the whole listing, not only this page).
  function addFilters(root) {
    root.querySelectorAll("input[data-filter]").forEach(function (input) {
      var table = document.getElementById(input.dataset.filter);
      if (!table) return;
      input.addEventListener("input", function () {
        var wanted = input.value.trim().toLowerCase();
        table.querySelectorAll("tbody tr[data-key]").forEach(function (row) {
          row.hidden = wanted !== "" && row.dataset.key.toLowerCase().indexOf(wanted) === -1;
        });
      });
    });
  }

  // Relative times: <time datetime="..."> shows "5 minutes ago"; the exact UTC time stays in the tooltip.
  var UNITS = [["year", 31536000], ["month", 2592000], ["day", 86400], ["hour", 3600], ["minute", 60],
               ["second", 1]];
  function relative(date) {
    var seconds = (date.getTime() - Date.now()) / 1000;
    var format = window.Intl && Intl.RelativeTimeFormat ? new Intl.RelativeTimeFormat("en", {numeric: "auto"}) : null;
    for (var i = 0; i < UNITS.length; i++) {
      var unit = UNITS[i];
      if (Math.abs(seconds) >= unit[1] || unit[0] === "second") {
        var value = Math.round(seconds / unit[1]);
        return format ? format.format(value, unit[0]) : Math.abs(value) + " " + unit[0] + "s ago";
      }
    }
    return "";
  }
  function addRelativeTimes(root) {
    root.querySelectorAll("time[datetime]").forEach(function (el) {
      var date = new Date(el.getAttribute("datetime"));
      if (isNaN(date.getTime())) return;
      if (!el.title) el.title = el.textContent;
      el.textContent = relative(date);
    });
  }

  function enhance() {
    addCopyButtons(document);
    addFilters(document);
    addRelativeTimes(document);
    document.documentElement.classList.add("js");
  }
  if (document.readyState === "loading") document.addEventListener("DOMContentLoaded", enhance);
  else enhance();
})();
