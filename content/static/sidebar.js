// Beacon chat-toolbar sidebar: learns the current customer from WeCom's JS-SDK, sends items as news cards.
// The same code runs against WeCom's `wx` (real mode) and the local stand-in (simulator mode).
(function () {
  "use strict";
  var root = document.getElementById("sidebar");
  if (!root) return;
  var contact = root.dataset.contact || "";
  var csrf = root.dataset.csrf;
  var status = document.getElementById("status");
  var sdkReady = false;

  function say(text, bad) {
    status.textContent = text;
    status.className = "status" + (bad ? " bad" : " ok");
    status.hidden = false;
  }

  function invoke(name, params) {
    return new Promise(function (resolve) { window.wx.invoke(name, params || {}, resolve); });
  }

  function register() {
    // agentConfig is signed for this exact address (without the #fragment), by the server.
    var url = location.href.split("#")[0];
    return fetch("/sidebar/jsconfig?url=" + encodeURIComponent(url), { credentials: "same-origin" })
      .then(function (r) { return r.json().then(function (body) { if (!r.ok) throw new Error(body.error || r.status); return body; }); })
      .then(function (cfg) {
        return new Promise(function (resolve, reject) {
          window.wx.agentConfig({
            corpid: cfg.corpid, agentid: cfg.agentid, timestamp: cfg.timestamp, nonceStr: cfg.nonceStr, signature: cfg.signature,
            jsApiList: ["getContext", "getCurExternalContact", "sendChatMessage"],
            success: resolve,
            fail: function (res) { reject(new Error((res && (res.errMsg || res.err_msg)) || "agentConfig failed")); }
          });
        });
      });
  }

  function identify() {
    return invoke("getContext").then(function (ctx) {
      if (ctx.err_msg !== "getContext:ok") throw new Error("无法获取会话信息");
      if (ctx.entry !== "single_chat_tools") throw new Error("请在与客户的单聊中，从聊天工具栏打开");
      return invoke("getCurExternalContact");
    }).then(function (res) {
      if (res.err_msg !== "getCurExternalContact:ok" || !res.userId) throw new Error("无法识别当前客户");
      if (res.userId !== contact) {
        var next = new URL(location.href);
        next.searchParams.set("contact", res.userId);
        next.hash = "";
        location.replace(next.toString());
      }
    });
  }

  function refreshActivity() {
    var box = document.getElementById("activity");
    if (!box || !contact) return Promise.resolve();
    return fetch("/sidebar/activity?contact=" + encodeURIComponent(contact), { credentials: "same-origin" })
      .then(function (r) { if (!r.ok) throw new Error("刷新失败"); return r.text(); })
      .then(function (html) {
        // Server-rendered and autoescaped; parsed inertly, then moved in.
        var doc = new DOMParser().parseFromString(html, "text/html");
        box.replaceChildren.apply(box, Array.prototype.slice.call(doc.body.childNodes));
        box.dataset.refreshed = String(Date.now());
      });
  }

  function send(button) {
    if (!sdkReady) { say("企业微信接口尚未就绪，请稍候", true); return; }
    button.disabled = true;
    var body = new URLSearchParams({ csrf: csrf, slug: button.dataset.send, contact: contact });
    fetch("/sidebar/share", { method: "POST", credentials: "same-origin", body: body })
      .then(function (r) { return r.json().then(function (data) { if (!r.ok) throw new Error(data.error || r.status); return data; }); })
      .then(function (card) {
        return invoke("sendChatMessage", {
          msgtype: "news", enterChat: true,
          news: { link: card.link, title: card.title, desc: card.desc, imgUrl: card.imgUrl }
        });
      })
      .then(function (res) {
        if (res.err_msg !== "sendChatMessage:ok") throw new Error(res.err_msg === "sendChatMessage:cancel" ? "已取消发送" : "发送失败");
        say("已发送");
        button.textContent = "已发送";
        return refreshActivity();
      })
      .catch(function (err) { say(err.message, true); })
      .then(function () { button.disabled = false; });
  }

  root.addEventListener("click", function (event) {
    var button = event.target.closest("button[data-send]");
    if (button) send(button);
    if (event.target.id === "refresh") refreshActivity().catch(function (err) { say(err.message, true); });
  });

  if (!window.wx) { say("企业微信 JS-SDK 未加载：请在企业微信中打开，或加 ?sim=1 使用模拟模式", true); return; }
  if (root.querySelector(".sim-pick")) return; // simulator mode waiting for a customer id
  register()
    .then(function () { sdkReady = true; root.dataset.ready = "1"; return identify(); })
    .catch(function (err) { say(err.message, true); });
})();
