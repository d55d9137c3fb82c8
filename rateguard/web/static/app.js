// RateGuard dashboard: the little behaviour the server-rendered pages need.
// No inline script anywhere (the Content-Security-Policy forbids it); everything hangs
// off data attributes.
(function () {
  "use strict";
  document.documentElement.classList.add("js");

  // Forms that apply on change (workspace switcher, role, analytics filters).
  document.querySelectorAll("form[data-autosubmit]").forEach(function (form) {
    form.querySelectorAll("select").forEach(function (select) {
      if (select.id === "refresh") return;
      select.addEventListener("change", function () { form.requestSubmit(); });
    });
  });

  // Ask before destructive actions.
  document.querySelectorAll("form[data-confirm]").forEach(function (form) {
    form.addEventListener("submit", function (event) {
      if (!window.confirm(form.getAttribute("data-confirm"))) event.preventDefault();
    });
  });

  // Copy a one-time secret to the clipboard.
  document.querySelectorAll("[data-copy]").forEach(function (button) {
    button.addEventListener("click", function () {
      var source = document.querySelector(button.getAttribute("data-copy"));
      var text = source ? source.textContent.trim() : "";
      var done = function () {
        button.textContent = "Copied";
        button.classList.add("copied");
        window.setTimeout(function () { button.textContent = "Copy"; button.classList.remove("copied"); }, 2000);
      };
      if (navigator.clipboard && window.isSecureContext) {
        navigator.clipboard.writeText(text).then(done, function () { select(source); });
      } else {
        select(source);
        try { document.execCommand("copy"); done(); } catch (e) { /* selected for manual copy */ }
      }
    });
  });

  function select(node) {
    if (!node) return;
    var range = document.createRange();
    range.selectNodeContents(node);
    var sel = window.getSelection();
    sel.removeAllRanges();
    sel.addRange(range);
  }

  // Analytics: refresh the panel in place, now and every N seconds.
  var panel = document.getElementById("panel");
  if (panel) {
    var timer = null;
    var busy = false;
    var refresh = function () {
      if (busy) return;
      busy = true;
      panel.setAttribute("aria-busy", "true");
      fetch(panel.getAttribute("data-panel-url"), {credentials: "same-origin", headers: {"Accept": "text/html"}})
        .then(function (response) {
          if (response.redirected || !response.ok) throw new Error("status " + response.status);
          return response.text();
        })
        .then(function (html) { panel.innerHTML = html; panel.removeAttribute("data-stale"); })
        .catch(function () { panel.setAttribute("data-stale", "true"); })
        .finally(function () { busy = false; panel.removeAttribute("aria-busy"); });
    };
    var schedule = function (seconds) {
      if (timer) window.clearInterval(timer);
      timer = seconds > 0 ? window.setInterval(refresh, seconds * 1000) : null;
    };
    schedule(parseInt(panel.getAttribute("data-refresh"), 10) || 0);
    var now = document.getElementById("refresh-now");
    if (now) now.addEventListener("click", refresh);
    var choice = document.getElementById("refresh");
    if (choice) {
      var seconds = {"off": 0, "5s": 5, "30s": 30, "1m": 60};
      choice.addEventListener("change", function () {
        schedule(seconds[choice.value] || 0);
        var url = new URL(window.location.href);
        url.searchParams.set("refresh", choice.value);
        window.history.replaceState(null, "", url.toString());
      });
    }
  }
})();
