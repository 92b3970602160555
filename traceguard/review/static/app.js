// Keyboard shortcuts for the review app. Served as a static file under the app's
// Content-Security-Policy (script-src 'self'): no inline script anywhere.
(function () {
  "use strict";

  function typing(event) {
    var target = event.target;
    return target && (target.isContentEditable || /^(INPUT|TEXTAREA|SELECT|BUTTON)$/.test(target.tagName));
  }

  function follow(selector) {
    var link = document.querySelector(selector);
    if (link) { window.location.assign(link.getAttribute("href")); }
  }

  var rows = Array.prototype.slice.call(document.querySelectorAll("tr[data-href]"));
  var current = -1;

  function select(index) {
    if (!rows.length) { return; }
    index = Math.max(0, Math.min(rows.length - 1, index));
    if (current >= 0) { rows[current].classList.remove("selected"); }
    current = index;
    rows[current].classList.add("selected");
    rows[current].scrollIntoView({ block: "nearest" });
  }

  function open() {
    if (current >= 0) {
      var href = rows[current].getAttribute("data-href");
      // Only ever a path of this app (the server writes it; this is belt and braces).
      if (href && href.charAt(0) === "/" && href.charAt(1) !== "/") { window.location.assign(href); }
    }
  }

  var page = document.body.getAttribute("data-page");

  document.addEventListener("keydown", function (event) {
    if (event.ctrlKey || event.metaKey || event.altKey || typing(event)) { return; }
    var key = event.key;
    if (page === "list") {
      if (key === "j") { select(current + 1); }
      else if (key === "k") { select(current - 1); }
      else if ((key === "o" || key === "Enter") && current >= 0) { open(); }
      else { return; }
      event.preventDefault();
    } else if (page === "detail") {
      if (key === "j") { follow("a[data-key=next]"); }
      else if (key === "k") { follow("a[data-key=prev]"); }
      else if (key === "u") { follow("a[data-key=list]"); }
      else if (key === "a" || key === "r") {
        var button = document.getElementById(key === "a" ? "approve" : "reject");
        if (!button) { return; }
        button.click();
      } else { return; }
      event.preventDefault();
    }
  });

  if (page === "list" && rows.length) { select(0); }
})();
