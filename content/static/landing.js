// Beacon landing page: reports read depth, visible time, downloads and CTA clicks for this link.
// Everything is tied to the page's signed key; the server checks it against the visitor cookie.
(function () {
  "use strict";
  var el = document.getElementById("content");
  if (!el) return;
  var token = el.dataset.token, key = el.dataset.key, pv = el.dataset.pv, child = el.dataset.child;
  var endpoint = "/l/" + token + "/b";
  var seq = 0;

  function send(payload) {
    payload.k = key;
    payload.pv = pv;
    var body = JSON.stringify(payload);
    if (navigator.sendBeacon && navigator.sendBeacon(endpoint, new Blob([body], { type: "application/json" }))) return;
    fetch(endpoint, { method: "POST", body: body, headers: { "Content-Type": "application/json" }, keepalive: true, credentials: "same-origin" });
  }

  // The address this viewer copies and forwards is their own child link, so forwards form a chain.
  if (child && window.history && history.replaceState) {
    history.replaceState(null, "", "/l/" + child + window.location.search);
  }

  // Read depth: the share of the article that has been on screen, in quarters, each reported once.
  var reported = {};
  var article = el;
  function depth() {
    var rect = article.getBoundingClientRect();
    var total = rect.height || 1;
    var seen = Math.min(total, Math.max(0, window.innerHeight - rect.top));
    return Math.floor((seen / total) * 100);
  }
  function checkDepth() {
    var d = depth();
    [25, 50, 75, 100].forEach(function (mark) {
      if (d >= mark - (mark === 100 ? 2 : 0) && !reported[mark]) {
        reported[mark] = true;
        send({ t: "read", d: mark });
      }
    });
  }
  var scheduled = false;
  window.addEventListener("scroll", function () {
    if (scheduled) return;
    scheduled = true;
    window.requestAnimationFrame(function () { scheduled = false; checkDepth(); });
  }, { passive: true });
  window.addEventListener("load", checkDepth);
  checkDepth();

  // Visible time only: the clock runs while the page is visible; flushed when it is hidden or left.
  var visibleSince = document.visibilityState === "visible" ? Date.now() : null;
  var banked = 0;
  function flushTime() {
    if (visibleSince !== null) { banked += (Date.now() - visibleSince) / 1000; visibleSince = null; }
    var secs = Math.round(banked);
    if (secs >= 1) { seq += 1; send({ t: "dwell", s: Math.min(secs, 1800), n: seq }); banked = 0; }
  }
  document.addEventListener("visibilitychange", function () {
    if (document.visibilityState === "hidden") flushTime();
    else visibleSince = Date.now();
  });
  window.addEventListener("pagehide", flushTime);

  document.querySelectorAll("[data-cta]").forEach(function (button) {
    button.addEventListener("click", function () {
      send({ t: "cta", c: button.dataset.cta });
      var thanks = document.getElementById("cta-thanks");
      if (thanks) thanks.hidden = false;
    });
  });
})();
