// How one message (or timeline event) looks, whatever channel it came on.
import { h, humanSize, safeUrl, withoutBidiControls } from "./dom.js";
import { formatNumber, formatTime, t } from "./i18n.js";

const FAILED = new Set(["failed", "undelivered"]);
// The images the hub serves inline (hub/web/attachments.py INLINE_TYPES);
// any other (SVG, BMP, TIFF) it only lets download, so embedded it is broken.
const INLINE_IMAGES = new Set(["image/png", "image/jpeg", "image/gif", "image/webp"]);

/** ``type/subtype`` of a stored content type, or "" when it is not one media
 * type ("image/png, text/html" is none: the hub serves it as a download). */
function mediaType(contentType) {
  const type = (contentType || "").split(";")[0].trim().toLowerCase();
  return /^[\w.+-]+\/[\w.+-]+$/.test(type) ? type : "";
}

export function channelBadge(channel) {
  return h("span", { class: `badge channel channel-${channel}` }, t(`channel.${channel}`));
}

export function authorName(message, agents) {
  if (message.author === "agent" && message.author_id != null && agents.has(message.author_id)) {
    return agents.get(message.author_id).name;
  }
  return t(`author.${message.author}`);
}

function attachmentView(att) {
  const url = safeUrl(att.url);
  const name = att.filename || att.url.split("/").pop() || t("attachment");
  const type = mediaType(att.content_type);
  const label = [name, humanSize(att.size)].filter(Boolean).join(" · ");
  if (!url) return h("div", { class: "attachment", dir: "auto" }, label);
  // Only files from our own store are embedded; a link elsewhere is just a link
  // (no tracking pixels, nothing loaded without the agent's click).
  if (url.local && INLINE_IMAGES.has(type)) {
    return h("a", { class: "attachment image", href: url.href, target: "_blank", rel: "noopener noreferrer" },
      h("img", { src: url.href, alt: name, loading: "lazy" }));
  }
  if (url.local && type.startsWith("audio/")) {
    return h("figure", { class: "attachment audio" }, h("audio", { controls: true, preload: "metadata", src: url.href }),
      h("figcaption", { dir: "auto" }, label));
  }
  if (url.local && type.startsWith("video/")) {
    return h("figure", { class: "attachment video" }, h("video", { controls: true, preload: "metadata", src: url.href }),
      h("figcaption", { dir: "auto" }, label));
  }
  return h("a", { class: "attachment file", href: url.href, target: "_blank", rel: "noopener noreferrer", download: name, dir: "auto" }, label);
}

/** A customer's edited message: marked, with the text it had before (an
 * agent may have answered that one). */
function editsView(message) {
  const edits = message.edits || [];
  if (!edits.length) return null;
  return h("details", { class: "edits" },
    h("summary", { class: "muted small" }, t("edited", { n: formatNumber(edits.length) })),
    h("ol", { class: "edit-list" }, edits.map((edit) => h("li", {},
      edit.replaced_at ? h("time", { class: "muted small", datetime: edit.replaced_at }, t("edited.until", { time: formatTime(edit.replaced_at) })) : null,
      h("div", { class: "msg-body", dir: "auto" }, edit.body)))));
}

/** An email's links to the hub's sanitized rendering of its HTML part and to
 * the raw message, when they were stored. */
function emailLinks(message) {
  const email = message.email;
  if (!email) return null;
  const links = [["html_url", "email.html"], ["original_url", "email.original"]]
    .map(([key, label]) => [email[key] ? safeUrl(email[key]) : null, label])
    .filter(([url]) => url)
    .map(([url, label]) => h("a", { href: url.href, target: "_blank", rel: "noopener noreferrer" }, t(label)));
  if (!links.length) return null;
  return h("div", { class: "msg-links small" }, links.flatMap((link, i) => (i ? [" · ", link] : [link])));
}

/** What a Telegram message's text does not say: forwarded, the message it
 * answers (found among those shown, by the id the hub stores it under), a
 * shared location (a link to the map) or contact card. */
function telegramView(message, findMessage) {
  const tg = message.telegram;
  if (!tg) return null;
  const parts = [];
  if (tg.forwarded) parts.push(h("span", { class: "badge" }, t("telegram.forwarded")));
  if (tg.reply_to_external_id) {
    const answered = findMessage ? findMessage(tg.reply_to_external_id) : null;
    parts.push(answered && answered.body
      ? h("span", {}, t("telegram.reply_to"), " ", h("q", { dir: "auto" }, answered.body.slice(0, 120)))
      : h("span", {}, t("telegram.reply_to_earlier")));
  }
  const loc = tg.location;
  if (loc && Number.isFinite(loc.latitude) && Number.isFinite(loc.longitude)) {
    const lat = loc.latitude.toFixed(6), lon = loc.longitude.toFixed(6);
    parts.push(h("a", { href: `https://www.openstreetmap.org/?mlat=${lat}&mlon=${lon}#map=16/${lat}/${lon}`, target: "_blank", rel: "noopener noreferrer" }, t("telegram.map")));
  }
  if (!parts.length) return null;
  return h("div", { class: "msg-links small" }, parts.flatMap((part, i) => (i ? [" · ", part] : [part])));
}

function statusView(message) {
  if (message.direction !== "out" || message.private) return null;
  const failed = FAILED.has(message.status);
  return h("span", { class: `msg-status${failed ? " failed" : ""}`, title: message.status_reason || "" },
    t(`msg.status.${message.status}`),
    failed && message.status_reason ? h("span", { class: "reason", dir: "auto" }, ` — ${message.status_reason}`) : null);
}

/** ``findMessage(externalId)``: a message shown beside this one, if any. */
export function messageView(message, agents, findMessage = null) {
  const kind = message.private ? "note" : message.direction === "in" ? "in" : "out";
  const audio = (message.attachments || []).some((a) => (a.content_type || "").startsWith("audio/"));
  const voicemail = audio && message.channel === "voice";
  return h("article", { class: `msg ${kind} author-${message.author}`, "data-id": message.id, "aria-label": authorName(message, agents) },
    h("header", { class: "msg-meta" },
      h("strong", { dir: "auto" }, authorName(message, agents)),
      message.private ? h("span", { class: "badge note-badge" }, t("note")) : channelBadge(message.channel),
      voicemail ? h("span", { class: "badge" }, t("voicemail")) : null,
      h("time", { datetime: message.created_at }, formatTime(message.created_at)),
      statusView(message)),
    // The label is in the interface's language, the subject in the customer's:
    // each gets its own direction (a Persian subject under an English label is right to left).
    message.subject ? h("div", { class: "msg-subject" }, `${t("subject")}: `, h("bdi", { dir: "auto" }, withoutBidiControls(message.subject))) : null,
    (message.attachments || []).length ? h("div", { class: "attachments" }, message.attachments.map(attachmentView)) : null,
    message.body
      ? h("div", { class: "msg-body", dir: "auto" }, voicemail ? h("span", { class: "muted", dir: document.documentElement.dir }, `${t("transcription")}: `) : null, message.body)
      : null,
    editsView(message),
    emailLinks(message),
    telegramView(message, findMessage),
    (message.quick_replies || []).length
      ? h("div", { class: "quick-replies", "aria-label": t("buttons_offered") },
        message.quick_replies.map((q) => h("span", { class: "chip", dir: "auto" }, q.title)))
      : null,
    message.quick_reply ? h("div", { class: "muted small", dir: "auto" }, t("pressed", { id: message.quick_reply })) : null);
}

export function eventView(event) {
  const data = event.data || {};
  let text;
  switch (event.kind) {
    case "ticket.created": text = t("event.ticket.created", { channel: t(`channel.${data.channel}`) }); break;
    case "ticket.status_changed": text = t("event.ticket.status_changed", { to: t(`status.${data.to}`) }); break;
    case "ticket.priority_changed": text = t("event.ticket.priority_changed", { to: t(`priority.${data.to}`) }); break;
    case "ticket.labels_changed": text = t("event.ticket.labels_changed", { to: (data.to || []).join(", ") || "—" }); break;
    case "ticket.handoff": text = t("event.ticket.handoff", { reason: data.reason || "" }); break;
    default: text = t(`event.${event.kind}`);
  }
  return h("div", { class: "event", role: "note" }, h("span", { dir: "auto" }, text), " · ",
    h("time", { datetime: event.created_at }, formatTime(event.created_at)), ` · ${t("ticket", { id: event.ticket_id })}`);
}
