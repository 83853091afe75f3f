/* crm-hub web chat widget: add <script src="https://HUB/widget.js" async></script> to any page.
   Customer text is only ever inserted with textContent, never as HTML. */
(function () {
  "use strict";
  if (window.__crmHubWidget) return;
  window.__crmHubWidget = true;
  var script = document.currentScript;
  var base = script ? new URL(script.src, location.href) : new URL(location.href);
  var wsUrl = (base.protocol === "https:" ? "wss://" : "ws://") + base.host + "/chat/ws";
  var KEY = "crmHubVisitor:" + base.host;
  var seen = {};
  var socket = null, backoff = 500, pending = [];

  var css = "#crmhub-btn{position:fixed;bottom:20px;inset-inline-end:20px;width:56px;height:56px;border-radius:50%;border:0;background:#2563eb;color:#fff;cursor:pointer;display:flex;align-items:center;justify-content:center;z-index:2147483000}" +
    "#crmhub-panel{position:fixed;bottom:88px;inset-inline-end:20px;width:340px;max-width:calc(100vw - 40px);height:460px;max-height:calc(100vh - 120px);background:#fff;border:1px solid #ddd;border-radius:12px;display:none;flex-direction:column;font:14px system-ui,sans-serif;z-index:2147483000;box-shadow:0 8px 24px rgba(0,0,0,.15)}" +
    "#crmhub-panel.open{display:flex}#crmhub-log{flex:1;overflow-y:auto;padding:12px;display:flex;flex-direction:column;gap:6px}" +
    ".crmhub-m{max-width:80%;padding:8px 10px;border-radius:10px;white-space:pre-wrap;word-wrap:break-word;unicode-bidi:plaintext}" +
    ".crmhub-contact{align-self:flex-end;background:#2563eb;color:#fff}.crmhub-agent,.crmhub-bot,.crmhub-system{align-self:flex-start;background:#f1f5f9;color:#111}" +
    "#crmhub-form{display:flex;border-top:1px solid #eee}#crmhub-input{flex:1;border:0;padding:12px;font:inherit}#crmhub-send{border:0;background:none;color:#2563eb;padding:0 14px;cursor:pointer;font:inherit}" +
    "#crmhub-status{font-size:12px;color:#666;padding:4px 12px}";
  var style = document.createElement("style");
  style.textContent = css;
  document.head.appendChild(style);

  var btn = el("button", { id: "crmhub-btn", type: "button", "aria-label": "Open chat", "aria-expanded": "false" });
  // An SVG, not an emoji: it renders the same without an emoji font.
  var svg = document.createElementNS("http://www.w3.org/2000/svg", "svg");
  svg.setAttribute("viewBox", "0 0 24 24"); svg.setAttribute("width", "26"); svg.setAttribute("height", "26");
  svg.setAttribute("aria-hidden", "true");
  var path = document.createElementNS("http://www.w3.org/2000/svg", "path");
  path.setAttribute("fill", "currentColor");
  path.setAttribute("d", "M4 3h16a2 2 0 0 1 2 2v11a2 2 0 0 1-2 2H8l-5 4V5a2 2 0 0 1 1-2z");
  svg.appendChild(path); btn.appendChild(svg);
  var panel = el("div", { id: "crmhub-panel", role: "dialog", "aria-label": "Chat" });
  var log = el("div", { id: "crmhub-log", role: "log", "aria-live": "polite" });
  var status = el("div", { id: "crmhub-status" });
  var form = el("form", { id: "crmhub-form" });
  var input = el("input", { id: "crmhub-input", dir: "auto", autocomplete: "off", "aria-label": "Message", placeholder: "Write a message\u2026", maxlength: "5000" });
  var send = el("button", { id: "crmhub-send", type: "submit" });
  send.textContent = "Send";
  form.appendChild(input); form.appendChild(send);
  panel.appendChild(log); panel.appendChild(status); panel.appendChild(form);
  document.body.appendChild(btn); document.body.appendChild(panel);

  btn.addEventListener("click", function () {
    var open = panel.classList.toggle("open");
    btn.setAttribute("aria-expanded", String(open));
    if (open) { connect(); input.focus(); }
  });
  form.addEventListener("submit", function (e) {
    e.preventDefault();
    var text = input.value.trim();
    if (!text) return;
    input.value = "";
    var frame = { type: "message", text: text, client_id: Date.now().toString(36) + Math.random().toString(36).slice(2) };
    pending.push(frame);
    if (socket && socket.readyState === 1) socket.send(JSON.stringify(frame));
  });

  function el(tag, attrs) {
    var node = document.createElement(tag);
    for (var k in attrs) node.setAttribute(k, attrs[k]);
    return node;
  }
  // Messages stay pending until the server acknowledges them (after storing);
  // after a reconnect they are sent again with the same client_id, which the
  // server stores only once.
  function resend() {
    for (var i = 0; i < pending.length; i++) socket.send(JSON.stringify(pending[i]));
  }
  function acknowledged(clientId) {
    pending = pending.filter(function (f) { return f.client_id !== clientId; });
  }
  function show(frame) {
    if (seen[frame.id]) return;
    seen[frame.id] = true;
    var m = el("div", { "class": "crmhub-m crmhub-" + frame.author, dir: "auto" });
    m.textContent = frame.text;
    m.setAttribute("data-id", String(frame.id));
    log.appendChild(m);
    log.scrollTop = log.scrollHeight;
    if (frame.author !== "contact" && socket && socket.readyState === 1) socket.send(JSON.stringify({ type: "ack", id: frame.id }));
  }
  function connect() {
    if (socket && socket.readyState <= 1) return;
    var token = localStorage.getItem(KEY);
    socket = new WebSocket(wsUrl + (token ? "?token=" + encodeURIComponent(token) : ""));
    socket.onopen = function () { backoff = 500; status.textContent = ""; };
    socket.onmessage = function (e) {
      var frame = JSON.parse(e.data);
      if (frame.type === "session") { localStorage.setItem(KEY, frame.visitor_token); resend(); }
      else if (frame.type === "message") { if (frame.client_id) acknowledged(frame.client_id); show(frame); }
      else if (frame.type === "error") status.textContent = frame.message;
    };
    socket.onclose = function () {
      status.textContent = "Reconnecting\u2026";
      setTimeout(connect, backoff);
      backoff = Math.min(backoff * 2, 30000);
    };
  }
  if (localStorage.getItem(KEY)) connect();
})();
