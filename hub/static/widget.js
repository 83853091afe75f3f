/* crm-hub web chat widget. Add to any page:
     <script src="https://HUB/widget.js" async></script>
   Optional attributes: data-lang="en|fa" (default: the page's language).
   Lives in a shadow root (the page's CSS cannot break it, ours cannot leak);
   every text from the conversation is inserted with textContent, never as HTML. */
(function () {
  "use strict";
  if (window.__crmHubWidget) return;
  window.__crmHubWidget = true;
  var script = document.currentScript;
  var base = new URL(script ? script.src : location.href, location.href);
  var wsUrl = (base.protocol === "https:" ? "wss://" : "ws://") + base.host + "/chat/ws";
  var KEY = "crmHubVisitor:" + base.host;
  var lang = ((script && script.getAttribute("data-lang")) || document.documentElement.lang || navigator.language || "en").slice(0, 2) === "fa" ? "fa" : "en";
  var T = {
    en: { open: "Open chat", close: "Close chat", send: "Send", msg: "Write a message\u2026", reconnect: "Reconnecting\u2026",
      typing: "{n} is typing\u2026", someone: "Someone", name: "Name", email: "Email", phone: "Phone", start: "Start chat",
      prechat: "Tell us who you are, so we can follow up.", offline: "Nobody is available right now. Leave a message and an email or phone number, and we will reply there.",
      later: "Nobody is available right now. Leave a message and an email or phone number, and we will get back to you.",
      contact: "Email or phone number", leave: "Send message", thanks: "Thanks! We will reply to {c}.", noted: "Thanks! We will get back to you at {c}.", required: "Please fill this in.",
      agent: "Agent", bot: "Bot", you: "You", unread: "{n} new", yours: "Your message",
      sending: "Sending\u2026", unsent: "Not sent.", notsent: "Not sent: {n}", retry: "Send again", attach: "Attach a file", big: "the file is larger than {n} MB",
      title: "Chat with us", down: "Chat is temporarily unavailable, we're reconnecting\u2026", off: "Chat is unavailable on this site.",
      phone_: "Please enter your number with the country code, e.g. {n}.", email_: "Please enter a valid email address.", name_: "Please enter a shorter name.",
      slow: "too many at once; please wait a moment", refused: "this message cannot be sent as it is", file: "the file could not be sent",
      net: "no connection; please try again", oops: "something went wrong; please try again" },
    fa: { open: "باز کردن گفتگو", close: "بستن گفتگو", send: "ارسال", msg: "پیام خود را بنویسید\u2026", reconnect: "در حال اتصال دوباره\u2026",
      typing: "{n} در حال نوشتن است\u2026", someone: "کارشناس", name: "نام", email: "ایمیل", phone: "تلفن", start: "شروع گفتگو",
      prechat: "خودتان را معرفی کنید تا بتوانیم پیگیری کنیم.", offline: "الان کسی در دسترس نیست. پیام خود را با ایمیل یا شماره تلفن بگذارید تا همان‌جا پاسخ دهیم.",
      later: "الان کسی در دسترس نیست. پیام خود را با ایمیل یا شماره تلفن بگذارید تا با شما تماس بگیریم.",
      contact: "ایمیل یا شماره تلفن", leave: "ارسال پیام", thanks: "ممنون! به {c} پاسخ می‌دهیم.", noted: "ممنون! از طریق {c} با شما تماس می‌گیریم.", required: "لطفاً این را پر کنید.",
      agent: "کارشناس", bot: "ربات", you: "شما", unread: "{n} پیام تازه", yours: "پیام شما",
      sending: "در حال ارسال\u2026", unsent: "ارسال نشد.", notsent: "ارسال نشد: {n}", retry: "ارسال دوباره", attach: "پیوست فایل", big: "فایل بزرگ‌تر از {n} مگابایت است",
      title: "گفتگو با ما", down: "گفتگو موقتاً در دسترس نیست، در حال اتصال دوباره\u2026", off: "گفتگو در این سایت در دسترس نیست.",
      phone_: "لطفاً شماره را با کد کشور وارد کنید، مثلاً {n}.", email_: "لطفاً یک ایمیل درست وارد کنید.", name_: "لطفاً نام کوتاه‌تری وارد کنید.",
      slow: "تعداد زیاد است؛ لطفاً کمی صبر کنید", refused: "این پیام را نمی‌توان این‌گونه فرستاد", file: "فایل فرستاده نشد",
      net: "اتصال برقرار نیست؛ دوباره امتحان کنید", oops: "مشکلی پیش آمد؛ لطفاً دوباره امتحان کنید" }
  }[lang];
  // A function, so a "$&" in a name or an address is not a replacement pattern.
  function t(k, n) { return T[k].replace(/\{(\w)\}/, function () { return n == null ? "" : n; }); }
  var dir = lang === "fa" ? "rtl" : "ltr";
  // The hub's texts are for developers, and in English: they go to the
  // console, and the visitor reads ours. The number is isolated so a
  // right-to-left sentence keeps its "+" in front.
  function why(e) {
    console.warn("crm-hub chat:", e.message || e);
    var f = (e.field || "").replace(/\..*/, "");
    return T[f + "_"] ? t(f + "_", "\u2066+98 912 \u2026\u2069")
      : T[f === "attachments" ? "file" : e instanceof TypeError ? "net" : { rate_limited: "slow", too_many_requests: "slow", origin_not_allowed: "off",
        forbidden: "off", invalid_frame: "refused", rejected: "refused", payload_too_large: "file" }[e.code] || "oops"];
  }
  function upper(s) { return s.charAt(0).toUpperCase() + s.slice(1); }

  // Site storage can be blocked (a setting, a sandboxed frame): every access
  // then throws, and the page keeps what it must in memory instead.
  var mem = {};
  function store(k, v) {
    if (v === undefined) { if (k in mem) return mem[k]; try { return localStorage.getItem(k); } catch (e) { return null; } }
    delete mem[k];
    try { if (v === null) localStorage.removeItem(k); else localStorage.setItem(k, v); } catch (e) { if (v !== null) mem[k] = v; }
  }

  // Unsent messages outlive reloads (and are shared with other tabs): resent
  // with the same client_id, each is stored once.
  var PKEY = "crmHubPending:" + base.host;
  function load() { try { return JSON.parse(store(PKEY)) || []; } catch (e) { return []; } }
  function keep() { store(PKEY, pending.length ? JSON.stringify(pending) : null); }
  var seen = {}, pending = load(), bubbles = Object.create(null), socket = null, backoff = 500, settings = null, session = null;
  var afterIdentify = null, deadTimer = 0, typingTimer = 0, lastTyping = 0, unread = 0, offerBox = null, opened = false, refusal = null, stopped = false;

  var css = ":host{all:initial}*{box-sizing:border-box;font:14px/1.4 system-ui,-apple-system,'Segoe UI',Tahoma,sans-serif}" +
    ".btn{position:fixed;bottom:20px;inset-inline-end:20px;width:56px;height:56px;border-radius:50%;border:0;background:var(--c);color:#fff;cursor:pointer;display:flex;align-items:center;justify-content:center;z-index:2147483000;box-shadow:0 4px 14px rgba(0,0,0,.25)}" +
    ".badge{position:absolute;top:-2px;inset-inline-end:-2px;background:#dc2626;color:#fff;border-radius:10px;font-size:11px;padding:0 6px;line-height:18px}" +
    ".panel{position:fixed;bottom:88px;inset-inline-end:20px;width:350px;max-width:calc(100vw - 40px);height:500px;max-height:calc(100vh - 110px);background:#fff;color:#111;border:1px solid #ddd;border-radius:12px;display:none;flex-direction:column;z-index:2147483000;box-shadow:0 8px 28px rgba(0,0,0,.18);overflow:hidden}" +
    ".panel.open{display:flex}.head{background:var(--c);color:#fff;padding:10px 12px;display:flex;align-items:center;gap:8px}.head h2{flex:1;margin:0;font-size:15px;font-weight:600;color:#fff}" +
    ".x{background:none;border:0;color:#fff;font-size:20px;cursor:pointer;line-height:1}.log{flex:1;overflow-y:auto;padding:12px;display:flex;flex-direction:column;gap:6px}" +
    ".m{max-width:82%;padding:7px 10px;border-radius:10px;white-space:pre-wrap;overflow-wrap:anywhere;unicode-bidi:plaintext;text-align:start}" +
    ".contact{align-self:flex-end;background:var(--c);color:#fff}.pending{opacity:.7}.failed{outline:2px solid #dc2626}" +
    ".st{display:block;font-size:12px}.st button{margin-inline-start:6px;border:1px solid;border-radius:10px;background:none;color:inherit;cursor:pointer;font-size:12px}.agent,.bot,.system,.greeting{align-self:flex-start;background:#f1f5f9}" +
    ".m img{max-width:100%;border-radius:6px;display:block}.m audio{max-width:100%}.m a{color:inherit}" +
    ".qr{display:flex;flex-wrap:wrap;gap:6px;align-self:flex-start}.qr button{border:1px solid var(--c);color:var(--c);background:#fff;border-radius:14px;padding:4px 10px;cursor:pointer}" +
    ".status{font-size:12px;color:#555;padding:0 12px;min-height:16px}form{margin:0}.compose{display:flex;border-top:1px solid #eee}" +
    ".compose textarea{flex:1;border:0;padding:12px;resize:none;height:46px;unicode-bidi:plaintext}.compose button{border:0;background:none;color:var(--c);padding:0 14px;cursor:pointer;font-weight:600}" +
    ".form{padding:14px;display:flex;flex-direction:column;gap:10px;overflow-y:auto}.form label{display:flex;flex-direction:column;gap:3px;font-size:13px}" +
    ".form input,.form textarea{border:1px solid #ccc;border-radius:6px;padding:7px;unicode-bidi:plaintext}.form textarea{min-height:80px;resize:vertical}" +
    ".form button{background:var(--c);color:#fff;border:0;border-radius:6px;padding:9px;cursor:pointer;font-weight:600}.err{color:#b91c1c;font-size:12px;min-height:0}" +
    ".note{font-size:13px;color:#333;margin:0}[hidden]{display:none!important}.sr{position:absolute;width:1px;height:1px;overflow:hidden;clip:rect(0 0 0 0)}" +
    ":focus-visible{outline:2px solid #f59e0b;outline-offset:1px}";

  function el(tag, attrs, text) {
    var n = document.createElement(tag);
    for (var k in attrs || {}) n.setAttribute(k, attrs[k]);
    if (text != null) n.textContent = text;
    return n;
  }
  function safe(url) {
    try { var u = new URL(url, base); return u.protocol === "https:" || u.protocol === "http:" ? u.href : null; } catch (e) { return null; }
  }

  // The launcher and the panel sit in the widget's own direction, not the page's.
  var host = el("div", { id: "crm-hub-widget", dir: dir });
  var root = host.attachShadow({ mode: "open" });
  if (root.adoptedStyleSheets && window.CSSStyleSheet && CSSStyleSheet.prototype.replaceSync) {
    // A constructed sheet works on pages whose CSP forbids inline <style>.
    var sheet = new CSSStyleSheet(); sheet.replaceSync(css); root.adoptedStyleSheets = [sheet];
  } else root.appendChild(el("style", {}, css));

  var btn = el("button", { "class": "btn", type: "button", "aria-label": T.open, "aria-expanded": "false", "aria-controls": "crmhub-panel", dir: dir });
  // Drawn, not a font's glyph: not every system has an emoji font.
  function icon(d, size, line) {
    var ns = "http://www.w3.org/2000/svg", svg = document.createElementNS(ns, "svg"), path = document.createElementNS(ns, "path");
    [["viewBox", "0 0 24 24"], ["width", size], ["height", size], ["aria-hidden", "true"]].forEach(function (a) { svg.setAttribute(a[0], a[1]); });
    path.setAttribute("d", d);
    path.setAttribute(line ? "stroke" : "fill", "currentColor");
    if (line) { path.setAttribute("fill", "none"); path.setAttribute("stroke-width", "2"); }
    svg.appendChild(path);
    return svg;
  }
  btn.appendChild(icon("M4 3h16a2 2 0 0 1 2 2v11a2 2 0 0 1-2 2H8l-5 4V5a2 2 0 0 1 1-2z", "26"));
  var badge = el("span", { "class": "badge", hidden: "" }); btn.appendChild(badge);

  var panel = el("div", { id: "crmhub-panel", "class": "panel", role: "dialog", "aria-labelledby": "crmhub-title", dir: dir, lang: lang });
  var head = el("div", { "class": "head" });
  var title = el("h2", { id: "crmhub-title", dir: "auto" }, T.title);
  var closeBtn = el("button", { "class": "x", type: "button", "aria-label": T.close }, "\u00d7");
  head.appendChild(title); head.appendChild(closeBtn);
  var log = el("div", { "class": "log", role: "log", "aria-live": "polite", tabindex: "0" });
  var status = el("div", { "class": "status", role: "status", "aria-live": "polite" });
  // Offered only once the hub has said whether a form comes first: a message
  // written before would be sent, then hidden behind the form asking for it.
  var compose = el("form", { "class": "compose", hidden: "" });
  var input = el("textarea", { dir: "auto", "aria-label": T.msg, placeholder: T.msg, maxlength: "5000", rows: "1" });
  var file = el("input", { type: "file", hidden: "" }), clip = el("button", { type: "button", "aria-label": T.attach, title: T.attach });
  clip.appendChild(icon("M21 11l-9 9a6 6 0 0 1-8.5-8.5l9-9a4 4 0 0 1 5.7 5.7l-9 9a2 2 0 0 1-2.9-2.9l8.5-8.4", "20", true));
  compose.appendChild(input); compose.appendChild(clip); compose.appendChild(el("button", { type: "submit" }, T.send)); compose.appendChild(file);
  var formBox = el("form", { "class": "form", hidden: "", novalidate: "" });
  panel.appendChild(head); panel.appendChild(formBox); panel.appendChild(log); panel.appendChild(status); panel.appendChild(compose);
  root.appendChild(btn); root.appendChild(panel);
  (document.body || document.documentElement).appendChild(host);

  function setColor(c) { host.style.setProperty("--c", /^#[0-9a-f]{6}$/i.test(c || "") ? c : "#2563eb"); }
  setColor(null);

  function toggle(open) {
    opened = open;
    panel.classList.toggle("open", open);
    btn.setAttribute("aria-expanded", String(open));
    btn.setAttribute("aria-label", open ? T.close : T.open);
    if (open) {
      unread = 0; badge.hidden = true; connect(); markRead();
      // With nothing to write in yet, focus still goes into the dialog, so Esc closes it.
      setTimeout(function () { var f = !formBox.hidden ? formBox.querySelector("input,textarea") : compose.hidden ? closeBtn : input; if (f) f.focus(); }, 0);
    } else btn.focus();
  }
  btn.addEventListener("click", function () { toggle(!opened); });
  closeBtn.addEventListener("click", function () { toggle(false); });
  panel.addEventListener("keydown", function (e) { if (e.key === "Escape") toggle(false); });

  function send(frame) { if (socket && socket.readyState === 1) socket.send(JSON.stringify(frame)); }
  function say(text, quickReply, files) {
    if (stopped) return;
    var frame = { type: "message", text: text, client_id: Date.now().toString(36) + Math.random().toString(36).slice(2) };
    if (quickReply) frame.quick_reply = quickReply;
    if (files) frame.attachments = files;
    pending.push(frame);
    keep();
    unsent(frame);
    send(frame);
    clearOffer();
  }
  // Shown at once, so the visitor sees their words are not lost, until the
  // hub's acknowledgement replaces it with the stored message.
  function unsent(frame) {
    attach(bubbles[frame.client_id] = bubble("contact pending", frame.text, T.you), frame.attachments);
    mark(frame.client_id, T.sending);
    log.scrollTop = log.scrollHeight;
  }
  function mark(id, text, retry) {
    var m = bubbles[id];
    if (!m) return;
    var st = m.querySelector(".st") || m.appendChild(el("span", { "class": "st", dir: dir }));
    st.textContent = text;
    if (retry) {
      var b = el("button", { type: "button" }, T.retry);
      b.addEventListener("click", function () { input.focus(); resend(id); });
      st.appendChild(b);
    }
  }
  function resend(id) {
    mark(id, T.sending);
    connect();
    pending.forEach(function (f) { if (f.client_id === id) send(f); });
  }
  function failed(frame) {
    var id = frame.client_id;
    // Too many too fast: sent again once the hub has room.
    if (frame.code === "rate_limited") setTimeout(resend, frame.retry_after * 1200, id);
    if (frame.code !== "invalid_frame" && frame.code !== "rejected") return mark(id, T.unsent, true);
    // The hub will never store this one: resending it on every reconnect
    // would fail forever, so it leaves the queue and goes back to the visitor.
    var f = pending.filter(function (p) { return p.client_id === id; })[0];
    pending = pending.filter(function (p) { return p.client_id !== id; });
    keep();
    mark(id, t("notsent", why(frame)));
    if (bubbles[id]) { bubbles[id].className = "m contact failed"; delete bubbles[id]; }
    if (f && !input.value.trim()) input.value = f.text;
  }
  // Uploaded first (the hub keeps the file), then sent as a message that names it.
  clip.addEventListener("click", function () { file.click(); });
  file.addEventListener("change", function () {
    var f = file.files[0], id = "up" + Date.now(), body = new FormData(), max = session && session.max_file_bytes;
    if (!f) return;
    file.value = "";
    body.append("file", f);
    bubbles[id] = bubble("contact pending", f.name, T.you);
    mark(id, T.sending);
    // Refused before it is sent: the hub would stop reading it anyway.
    // No custom header: a plain POST, which needs no CORS preflight.
    (f.size > max ? Promise.reject({ text: t("big", +(max / 1048576).toFixed(1)) })
      : fetch(base.origin + "/chat/attachments?token=" + encodeURIComponent(store(KEY) || ""), { method: "POST", body: body })
        .then(function (r) { return r.json().then(function (j) { if (!r.ok) throw j.error; return j; }); }))
      .then(function (a) { bubbles[id].remove(); delete bubbles[id]; say("", null, [a]); },
        function (e) { mark(id, t("notsent", e.text || why(e))); bubbles[id].className = "m contact failed"; delete bubbles[id]; });
  });
  window.addEventListener("storage", function (e) { if (e.key === PKEY) pending = load(); });
  compose.addEventListener("submit", function (e) {
    e.preventDefault();
    var text = input.value.trim();
    if (!text) return;
    input.value = "";
    say(text);
  });
  input.addEventListener("keydown", function (e) {
    if (e.key === "Enter" && !e.shiftKey && !e.isComposing) { e.preventDefault(); compose.requestSubmit ? compose.requestSubmit() : compose.dispatchEvent(new Event("submit")); }
  });
  input.addEventListener("input", function () {
    var now = Date.now();
    if (now - lastTyping > 3000) { lastTyping = now; send({ type: "typing" }); }
  });

  function clearOffer() { if (offerBox) { offerBox.remove(); offerBox = null; } }
  function bubble(cls, text, label) {
    var m = el("div", { "class": "m " + cls, dir: "auto" });
    // Its own dir keeps the label out of the bubble's dir="auto" guess.
    if (label) m.appendChild(el("span", { "class": "sr", dir: dir }, label + ": "));
    if (text) m.appendChild(document.createTextNode(text));
    // Unsent messages stay last: what the hub has stored happened before them.
    log.insertBefore(m, /pending/.test(cls) ? null : log.querySelector(".pending"));
    return m;
  }
  // Images the hub serves inline are shown; any other file is a link.
  function attach(m, list) {
    (list || []).forEach(function (a) {
      var href = safe(a.url), type = a.content_type || "";
      if (!href) return;
      m.appendChild(/^image\/(png|jpeg|gif|webp)$/.test(type) ? el("img", { src: href, alt: a.filename || "" })
        : type.indexOf("audio/") === 0 ? el("audio", { controls: "", src: href })
        : el("a", { href: href, target: "_blank", rel: "noopener noreferrer" }, a.filename || href));
    });
  }
  function show(frame) {
    var old = frame.client_id && bubbles[frame.client_id];
    if (old) delete bubbles[frame.client_id];
    if (seen[frame.id]) { if (old) old.remove(); return; }
    seen[frame.id] = true;
    hideTyping();
    var who = frame.author === "contact" ? T.you : frame.author === "bot" ? T.bot : T.agent;
    var m = bubble(frame.author, frame.text, who);
    if (old) old.replaceWith(m);
    m.setAttribute("data-id", String(frame.id));
    attach(m, frame.attachments);
    if (frame.author === "contact") clearOffer();
    else if ((frame.quick_replies || []).length) {
      clearOffer();
      offerBox = el("div", { "class": "qr", role: "group", "aria-label": frame.text || "" });
      frame.quick_replies.forEach(function (q) {
        var b = el("button", { type: "button", dir: "auto" }, q.title);
        b.addEventListener("click", function () { say(q.title, q.id); input.focus(); });
        offerBox.appendChild(b);
      });
      log.insertBefore(offerBox, log.querySelector(".pending"));
    }
    log.scrollTop = log.scrollHeight;
    if (frame.author !== "contact") {
      // The hub reads up to a reply: none above it is unread.
      if (frame.status === "read") unread = 0;
      send({ type: "ack", id: frame.id });
      if (opened && !document.hidden) send({ type: "read", id: frame.id });
      else if (frame.status !== "read") unread++;
      badge.textContent = unread; badge.hidden = !unread; btn.setAttribute("aria-label", T.open + (unread ? " (" + t("unread", unread) + ")" : ""));
    }
  }
  function markRead() {
    var nodes = log.querySelectorAll(".agent,.bot");
    if (nodes.length) send({ type: "read", id: Number(nodes[nodes.length - 1].getAttribute("data-id")) });
  }
  document.addEventListener("visibilitychange", function () { if (!document.hidden) { ping(); if (opened) markRead(); } });

  function hideTyping() { clearTimeout(typingTimer); status.textContent = ""; }
  function typing(frame) {
    if (frame.typing === false) return hideTyping();
    status.textContent = t("typing", frame.name || T.someone);
    clearTimeout(typingTimer);
    typingTimer = setTimeout(hideTyping, 6000);
  }

  // The pre-chat form and the offline form: both end in an "identify" frame.
  function field(name, label, type, required) {
    var wrap = el("label", {}, null);
    wrap.appendChild(el("span", {}, label));
    var f = el(type === "textarea" ? "textarea" : "input", { name: name, dir: "auto", "aria-describedby": "crmhub-err-" + name });
    if (type !== "textarea") f.setAttribute("type", type);
    if (required) f.setAttribute("required", "");
    wrap.appendChild(f);
    formBox.appendChild(wrap);
    formBox.appendChild(el("span", { "class": "err", id: "crmhub-err-" + name, "aria-live": "polite", dir: "auto" }));
    return f;
  }
  function fieldError(name, message) {
    var f = formBox.querySelector("[name=" + name + "]") || formBox.querySelector("[name=contact]");
    if (!f) { status.textContent = message; return; }
    f.setAttribute("aria-invalid", "true");
    formBox.querySelector("#" + f.getAttribute("aria-describedby")).textContent = message;
    f.focus();
  }
  function showForm(offline) {
    formBox.textContent = "";
    // What a reload or another tab left unsent goes out anyway: shown, and
    // not asked for again.
    formBox.hidden = false; log.hidden = !pending.length; compose.hidden = true;
    var pre = settings.prechat;
    // The hub says which channels it can reply on; with neither, promise a
    // reply, not one on a channel nobody set up.
    var replies = settings.offline_reply || [];
    formBox.appendChild(el("p", { "class": "note" }, offline ? (replies.length ? T.offline : T.later) : T.prechat));
    var inputs = {};
    if (pre.fields.indexOf("name") >= 0 && session.known.indexOf("name") < 0) inputs.name = field("name", T.name, "text", !offline && pre.required.indexOf("name") >= 0);
    if (offline) {
      if (!pending.length) {
        inputs.message = field("message", T.yours, "textarea", true);
        inputs.message.maxLength = input.maxLength;
      }
      inputs.contact = field("contact", T.contact, "text", true);
    } else {
      ["email", "phone"].forEach(function (k) {
        if (pre.fields.indexOf(k) >= 0) inputs[k] = field(k, T[k], k === "email" ? "email" : "tel", pre.required.indexOf(k) >= 0);
      });
    }
    formBox.appendChild(el("button", { type: "submit" }, offline ? T.leave : T.start));
    formBox.onsubmit = function (e) {
      e.preventDefault();
      var frame = { type: "identify" }, bad = null;
      formBox.querySelectorAll(".err").forEach(function (n) { n.textContent = ""; });
      Object.keys(inputs).forEach(function (k) {
        var f = inputs[k], v = f.value.trim();
        f.removeAttribute("aria-invalid");
        if (!v && f.hasAttribute("required") && !bad) bad = k;
        if (v && k !== "message" && k !== "contact") frame[k] = v;
      });
      if (bad) return fieldError(bad, T.required);
      if (offline) {
        var c = inputs.contact.value.trim();
        frame[c.indexOf("@") >= 0 ? "email" : "phone"] = c;
        frame.offline = true;
      }
      var message = inputs.message && inputs.message.value.trim();
      afterIdentify = function () {
        formBox.hidden = true; log.hidden = false; compose.hidden = false;
        var kind = frame.email ? "email" : "sms";
        if (offline) { bubble("system", t(replies.indexOf(kind) >= 0 ? "thanks" : "noted", frame.email || frame.phone)); if (message) say(message); }
        input.focus();
      };
      if (Object.keys(frame).length > 1) send(frame); else afterIdentify();
    };
  }

  function ready(frame) {
    // After a reconnect: same conversation, nothing to set up again.
    if (session) { frame.known = frame.known || session.known; session = frame; return; }
    session = frame;
    settings = frame.widget || { prechat: { enabled: false, fields: [], required: [] }, title: {}, greeting: {} };
    setColor(settings.color);
    // The hub refuses longer text: better the box stops the visitor typing it.
    if (settings.max_chars) input.maxLength = settings.max_chars;
    title.textContent = (settings.title && settings.title[lang]) || T.title;
    var fresh = !frame.ticket_id;
    var reachable = (frame.known || []).some(function (k) { return k === "email" || k === "phone"; });
    var away = fresh && frame.available === false && settings.offline_form && !reachable;
    if (away) showForm(true);
    else if (fresh && settings.prechat && settings.prechat.enabled && !(frame.known || []).length) showForm(false);
    else { formBox.hidden = true; log.hidden = false; compose.hidden = false; }
    var greeting = settings.greeting && settings.greeting[lang];
    if (fresh && !away && greeting && !log.querySelector(".greeting")) bubble("greeting", greeting);
  }

  // A connection can die without a word (a laptop asleep, a carrier's NAT
  // forgetting it), and the browser may notice only minutes later: a ping
  // unanswered drops it, and the reconnect resends what is unsent.
  function ping() {
    if (!socket || socket.readyState !== 1 || deadTimer) return;
    send({ type: "ping" });
    deadTimer = setTimeout(function () {
      // Not waiting for the close handshake, which a dead link never completes.
      var s = socket; s.onmessage = s.onclose = null; s.close(); closed({});
    }, 10000);
  }
  setInterval(ping, 25000);
  window.addEventListener("online", ping);
  function closed(e) {
    var r = refusal || {}; refusal = null;
    clearTimeout(deadTimer); deadTimer = 0;
    // Refused after the upgrade, the hub said why first (in the console). A
    // site it does not serve: retrying cannot help.
    if (e.code === 4403) { stopped = true; formBox.hidden = log.hidden = compose.hidden = true; status.textContent = T.off; return; }
    if (e.code === 4429) backoff = Math.max(backoff, r.retry_after * 1000 || 0);
    status.textContent = session ? T.reconnect : T.down;
    setTimeout(connect, backoff * (0.5 + Math.random() * 0.5));
    backoff = Math.min(Math.max(backoff * 2, 500), 30000);
  }

  function connect() {
    if (stopped || (socket && socket.readyState <= 1)) return;
    var token = store(KEY);
    socket = new WebSocket(wsUrl + (token ? "?token=" + encodeURIComponent(token) : ""));
    socket.onmessage = function (e) {
      clearTimeout(deadTimer); deadTimer = 0;
      var frame;
      try { frame = JSON.parse(e.data); } catch (err) { return; }
      if (frame.type === "session") {
        // Reset only now: a hub that takes the upgrade and then fails (its
        // database down) is not retried twice a second forever.
        backoff = 500;
        status.textContent = "";
        store(KEY, frame.visitor_token);
        ready(frame);
        pending.forEach(function (f) { mark(f.client_id, T.sending); send(f); });
      } else if (frame.type === "message") {
        var n = pending.length;
        pending = pending.filter(function (f) { return f.client_id !== frame.client_id; });
        if (pending.length < n) keep();
        show(frame);
      } else if (frame.type === "typing") typing(frame);
      else if (frame.type === "identified") { session.known = frame.known || []; if (afterIdentify) { afterIdentify(); afterIdentify = null; } }
      else if (frame.type === "error" && frame.code === "invalid_token") {
        // The hub no longer knows this token (its secret key changed): retrying
        // it would fail forever, so start over as a new visitor.
        store(KEY, null);
        session = null;
        backoff = 0;
      }
      else if (frame.type === "error" && frame.client_id) failed(frame);
      else if (frame.type === "error") {
        refusal = frame;
        if (frame.field && !formBox.hidden) fieldError(frame.field, why(frame)); else status.textContent = upper(why(frame));
      }
    };
    socket.onclose = closed;
  }
  pending.forEach(unsent);
  // A returning visitor connects at once: replies show as unread on the
  // bubble, and what a reload left unsent goes now.
  if (store(KEY) || pending.length) connect();
})();
