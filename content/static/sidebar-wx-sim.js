// Simulator stand-in for WeCom's JS-SDK `wx` (loaded only in simulator mode, never with the real SDK).
// The current customer comes from the page's ?customer= parameter; sendChatMessage shows the card
// that would be sent instead of sending it, and keeps it in window.__wxSim.sent.
(function () {
  "use strict";
  var query = new URLSearchParams(location.search);
  var customer = query.get("customer") || query.get("contact") || "";
  var state = { config: null, sent: [] };
  window.__wxSim = state;

  function later(fn, arg) { if (typeof fn === "function") setTimeout(function () { fn(arg); }, 0); }

  function show(news) {
    var box = document.getElementById("sim-sent");
    if (!box) return;
    document.getElementById("sim-sent-title").textContent = news.title || "";
    document.getElementById("sim-sent-desc").textContent = news.desc || "";
    document.getElementById("sim-sent-url").textContent = news.link || "";
    document.getElementById("sim-sent-link").href = news.link || "#";
    // The card image is this server's own file; show it from here whatever public_url says.
    try { document.getElementById("sim-sent-img").src = new URL(news.imgUrl).pathname; } catch (e) { /* no image */ }
    box.hidden = false;
    box.scrollIntoView({ block: "start" });
  }

  var apis = {
    getContext: function () {
      return { err_msg: "getContext:ok", entry: customer ? "single_chat_tools" : "normal", shareTicket: "" };
    },
    getCurExternalContact: function () {
      return customer ? { err_msg: "getCurExternalContact:ok", userId: customer } : { err_msg: "getCurExternalContact:fail" };
    },
    sendChatMessage: function (params) {
      if (!params || params.msgtype !== "news" || !params.news || !params.news.link) return { err_msg: "sendChatMessage:fail invalid news" };
      state.sent.push(params);
      show(params.news);
      return { err_msg: "sendChatMessage:ok" };
    }
  };

  window.wx = {
    simulated: true,
    agentConfig: function (cfg) {
      state.config = cfg;
      var missing = ["corpid", "agentid", "timestamp", "nonceStr", "signature"].filter(function (k) { return !cfg[k]; });
      if (missing.length) later(cfg.fail, { errMsg: "agentConfig:fail missing " + missing.join(",") });
      else later(cfg.success, { errMsg: "agentConfig:ok" });
    },
    invoke: function (name, params, callback) {
      var api = apis[name];
      later(callback, api ? api(params) : { err_msg: name + ":fail not supported by the simulator" });
    }
  };
})();
