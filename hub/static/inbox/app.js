// The agents' shared inbox: views, the live feed, the conversation, actions,
// the customer panel. Plain ES modules, no build step; every piece of data is
// put on the page as text (see dom.js).
import { Api, EventsSocket } from "./api.js";
import { $, fill, h, options, withoutBidiControls } from "./dom.js";
import { LANGUAGES, formatAgo, formatNumber, formatTime, language, setLanguage, t } from "./i18n.js";
import { channelBadge, eventView, messageView } from "./messages.js";

const TOKEN_KEY = "crmhub.inbox.token";
const PREFS_KEY = "crmhub.inbox.prefs";
const DRAFT_KEY = "crmhub.inbox.draft";
// Per agent on this browser: { singleKeys: false } turns the one-key shortcuts off.
const AGENT_PREFS_KEY = "crmhub.inbox.agent";
const STATUSES = ["open", "pending", "snoozed", "resolved"];
const PRIORITIES = ["low", "normal", "high", "urgent"];
const CHANNELS = ["webchat", "sms", "voice", "email", "telegram"];
const VIEWS = ["mine", "unassigned", "teams", "all"];
// As hub.core.STATUS_RANK: receipts arrive out of order.
const STATUS_RANK = { received: 0, queued: 1, sending: 2, sent: 3, undelivered: 4, failed: 4, delivered: 5, read: 6 };
// Which channel answers on which kind of identity.
const REPLY_CHANNEL_OF_IDENTITY = { webchat: "webchat", phone: "sms", email: "email", telegram: "telegram" };
// Earlier messages come this many at a time: a few screens' worth, quick to fetch.
const EARLIER_PAGE = 100;
// Scrolled this close to the top, the earlier messages load by themselves.
const EARLIER_MARGIN = 80;

// Site storage can be blocked (a browser setting, a sandboxed frame): every
// access then throws, and the inbox keeps what it must in memory for this page
// instead (the sign-in token, preferences, drafts), like the widget's store().
function siteStorage(area) {
  const memory = new Map();
  return {
    get(key) {
      if (memory.has(key)) return memory.get(key);
      try { return window[area].getItem(key); } catch { return null; }
    },
    set(key, value) {
      memory.delete(key);
      try { window[area].setItem(key, value); } catch { memory.set(key, value); }
    },
    remove(key) {
      memory.delete(key);
      try { window[area].removeItem(key); } catch { /* nothing kept anywhere */ }
    },
  };
}
const local = siteStorage("localStorage");
const session = siteStorage("sessionStorage");

const prefs = Object.assign({ language: null, sound: false, desktop: false, view: "mine" }, readJson(PREFS_KEY));

const state = {
  api: null,
  socket: null,
  me: null,
  agents: new Map(),
  teams: new Map(),
  inboxChannels: new Set(),
  canned: [],
  view: prefs.view,
  filters: { status: "open", channel: "", priority: "", label: "", q: "" },
  tickets: [],
  nextCursor: null,
  current: null,
  contact: null,
  mode: "reply",
  // Uploaded files not sent yet, by ticket id: a draft's files, like its text,
  // wait while the agent looks at another conversation.
  files: new Map(),
  timelineCursor: null,
};

function readJson(key) {
  try { return JSON.parse(local.get(key) || "{}") || {}; } catch { return {}; }
}

function savePrefs() {
  local.set(PREFS_KEY, JSON.stringify(prefs));
}

function announce(text) {
  fill($("#announcer"), text);
}

/** A refused or failed action, said on screen (a sighted agent would never
 * hear the announcer) until dismissed or replaced by the next one, and read out. */
function showError(err) {
  console.error(err);
  // Logged out meanwhile (a 401 leaves): the sign-in form says why instead.
  if (!state.me) return;
  const message = t("error", { message: err.message || String(err) });
  announce(message);
  fill($("#error-banner"),
    h("span", { class: "error-text", dir: "auto" }, message),
    h("button", { type: "button", class: "link", id: "error-dismiss", "aria-label": t("dismiss"), onclick: dismissError }, "×"));
}

function dismissError() {
  const banner = $("#error-banner");
  const focused = banner.contains(document.activeElement);
  fill(banner);
  if (focused) (state.current ? $("#messages") : $("#search")).focus({ preventScroll: true });
}

// --- language -------------------------------------------------------------------------

function applyLanguage(lang) {
  setLanguage(lang);
  for (const node of document.querySelectorAll("[data-i18n]")) node.textContent = t(node.dataset.i18n);
  for (const node of document.querySelectorAll("[data-i18n-placeholder]")) node.placeholder = t(node.dataset.i18nPlaceholder);
  for (const node of document.querySelectorAll("[data-i18n-aria]")) node.setAttribute("aria-label", t(node.dataset.i18nAria));
  for (const select of document.querySelectorAll(".language-select")) {
    fill(select, options(Object.entries(LANGUAGES), language()));
  }
  document.title = `${t("app.title")} · crm-hub`;
}

function changeLanguage(lang) {
  prefs.language = lang;
  savePrefs();
  applyLanguage(lang);
  if (state.me) {
    renderStaticSelects();
    renderViews();
    renderTickets();
    if (state.current) renderConversation();
    renderCustomer();
    setMode(state.mode, false);
  }
}

// --- log in and out ----------------------------------------------------------------------

async function start() {
  applyLanguage(prefs.language || (navigator.language || "en").slice(0, 2));
  for (const select of document.querySelectorAll(".language-select")) {
    select.addEventListener("change", () => changeLanguage(select.value));
  }
  $("#login-form").addEventListener("submit", login);
  const token = local.get(TOKEN_KEY);
  if (token) await enter(token);
  else showLogin();
}

function showLogin(message = "") {
  $("#app").hidden = true;
  $("#login").hidden = false;
  fill($("#login-error"), message);
  $("#login-email").focus();
}

async function login(event) {
  event.preventDefault();
  const email = $("#login-email").value.trim();
  const password = $("#login-password").value;
  try {
    const answer = await new Api(null).post("/auth/token", { email, password });
    local.set(TOKEN_KEY, answer.token);
    $("#login-password").value = "";
    await enter(answer.token);
    // Opening the inbox is how an agent says they are here to answer.
    await setPresence("online");
  } catch (err) {
    fill($("#login-error"), t("login.failed", { message: err.message }));
  }
}

async function logout() {
  try {
    await setPresence("offline");
    await state.api.post("/auth/logout");
  } catch { /* the token is dropped either way */ }
  leave();
}

function leave(message = "") {
  // Requests still on their way answer 401 now: the reason given stays.
  if (state.api) state.api.onUnauthorized = null;
  local.remove(TOKEN_KEY);
  if (state.socket) state.socket.stop();
  state.socket = null;
  state.me = null;
  state.current = null;
  state.files = new Map();
  fill($("#error-banner"));
  fill($("#reply-error"));
  showLogin(message);
}

/** The token stopped being valid (expired, logged out elsewhere, password
 * changed): unlike a logout, the agent did not ask for it, so they are told;
 * their drafts stay in this tab for when they are back. */
function sessionEnded() {
  leave(t("session.expired"));
}

async function enter(token) {
  state.api = new Api(token, sessionEnded);
  try {
    state.me = await state.api.get("/me");
  } catch (err) {
    if (err.status === 401) return sessionEnded();
    return showLogin(t("error", { message: err.message }));
  }
  $("#login").hidden = true;
  $("#app").hidden = false;
  fill($("#me"), state.me.name);
  state.agentPrefs = Object.assign({ singleKeys: true }, readJson(`${AGENT_PREFS_KEY}.${state.me.id}`));
  $("#single-keys").checked = state.agentPrefs.singleKeys;
  if (state.view === "all" && state.me.role !== "admin") state.view = "mine";
  bindOnce();
  await loadReference();
  renderStaticSelects();
  // The socket first, the list once the hub has subscribed it (its hello,
  // which runs catchUp): read before, the list would miss whatever happened
  // in between, for good.
  state.listed = false;
  const socket = new EventsSocket(token, {
    onHello: () => { clearTimeout(noHello); catchUp(); },
    onEvent: onEvent,
    onState: (s) => {
      const node = $("#connection");
      node.className = `connection ${s}`;
      fill(node, t(`connection.${s}`));
      if (s !== "reconnecting") return;
      // A token refused at connect fails before the upgrade, which a browser
      // cannot tell from a network error: ask the API, whose 401 logs out.
      state.api.get("/me").catch(() => {});
      listWithoutFeed();
    },
    onUnauthorized: sessionEnded,
  });
  state.socket = socket;
  // No live feed yet (the hub is slow, or the socket cannot connect): the
  // agent sees the list meanwhile; the hello reads it again.
  const noHello = setTimeout(() => { if (state.socket === socket) listWithoutFeed(); }, 3000);
  const wanted = Number((location.hash.match(/^#\/ticket\/(\d+)$/) || [])[1]);
  if (wanted) openTicket(wanted);
}

function listWithoutFeed() {
  if (state.listed) return;
  loadTickets();
  loadCounts();
}

async function loadReference() {
  const [agents, teams, inboxes, canned] = await Promise.all([
    state.api.get("/agents"),
    state.api.get("/teams"),
    state.api.get("/inboxes").catch(() => ({ items: [] })),
    state.api.get("/canned_responses").catch(() => ({ items: [] })),
  ]);
  state.agents = new Map(agents.items.map((a) => [a.id, a]));
  state.teams = new Map(teams.items.map((tm) => [tm.id, tm]));
  state.inboxChannels = new Set(inboxes.items.map((i) => i.channel));
  state.canned = canned.items;
  const me = state.agents.get(state.me.id);
  if (me) state.me = me;
}

async function setPresence(presence) {
  const me = await state.api.put("/me/presence", { presence });
  state.me = me;
  state.agents.set(me.id, me);
  $("#presence").value = presence;
}

// --- binding the page once ---------------------------------------------------------------

let bound = false;

function bindOnce() {
  if (bound) return;
  bound = true;
  $("#logout").addEventListener("click", logout);
  $("#presence").addEventListener("change", (e) => setPresence(e.target.value).catch(showError));
  $("#notify-sound").checked = prefs.sound;
  $("#notify-desktop").checked = prefs.desktop;
  $("#notify-sound").addEventListener("change", (e) => { prefs.sound = e.target.checked; savePrefs(); });
  $("#notify-desktop").addEventListener("change", async (e) => {
    prefs.desktop = e.target.checked;
    if (prefs.desktop && "Notification" in window && Notification.permission === "default") {
      prefs.desktop = (await Notification.requestPermission()) === "granted";
      e.target.checked = prefs.desktop;
    }
    savePrefs();
  });
  let searchTimer;
  $("#search").addEventListener("input", (e) => {
    clearTimeout(searchTimer);
    searchTimer = setTimeout(() => { state.filters.q = e.target.value.trim(); loadTickets(); }, 250);
  });
  for (const [id, key] of [["#filter-status", "status"], ["#filter-channel", "channel"], ["#filter-priority", "priority"]]) {
    $(id).addEventListener("change", (e) => { state.filters[key] = e.target.value; loadTickets(); loadCounts(); });
  }
  $("#filter-label").addEventListener("change", (e) => { state.filters.label = e.target.value.trim(); loadTickets(); });
  $("#more").addEventListener("click", () => loadTickets(true));
  $("#act-assignee").addEventListener("change", () => assign(numberOrNull($("#act-assignee").value), numberOrNull($("#act-team").value)));
  $("#act-team").addEventListener("change", () => assign(numberOrNull($("#act-assignee").value), numberOrNull($("#act-team").value)));
  $("#act-status").addEventListener("change", (e) => {
    if (e.target.value === "snoozed") { e.target.value = state.current.status; openSnooze(); }
    else setStatus(e.target.value);
  });
  $("#act-snooze").addEventListener("click", openSnooze);
  $("#act-priority").addEventListener("change", (e) => setPriority(e.target.value));
  $("#act-labels").addEventListener("keydown", (e) => { if (e.key === "Enter") { e.preventDefault(); saveLabels(); } });
  $("#act-labels").addEventListener("change", saveLabels);
  $("#toggle-customer").addEventListener("click", toggleCustomer);
  $("#mode-reply").addEventListener("click", () => setMode("reply"));
  $("#mode-note").addEventListener("click", () => setMode("note"));
  $("#reply").addEventListener("submit", (e) => { e.preventDefault(); sendReply(); });
  $("#reply-text").addEventListener("keydown", onReplyKey);
  $("#reply-text").addEventListener("input", onReplyInput);
  $("#reply-text").addEventListener("blur", () => { setTimeout(closeCanned, 150); stopTyping(); });
  $("#reply-file").addEventListener("change", uploadFiles);
  $("#snooze-form").addEventListener("submit", onSnoozeSubmit);
  for (const button of document.querySelectorAll("[data-snooze]")) button.addEventListener("click", () => presetSnooze(button.dataset.snooze));
  for (const button of document.querySelectorAll("dialog [data-close]")) button.addEventListener("click", () => button.closest("dialog").close());
  $("#contact-dialog").addEventListener("close", contactDialogClosed);
  $("#timeline-more").addEventListener("click", () => loadTimeline(true));
  $("#messages").addEventListener("scroll", (e) => { if (e.target.scrollTop < EARLIER_MARGIN) loadEarlier(true); });
  $("#open-canned").addEventListener("click", openCannedDialog);
  $("#canned-form").addEventListener("submit", addCanned);
  document.addEventListener("keydown", onShortcut);
  $("#open-help").addEventListener("click", () => $("#help-dialog").showModal());
  $("#single-keys").addEventListener("change", (e) => {
    state.agentPrefs.singleKeys = e.target.checked;
    local.set(`${AGENT_PREFS_KEY}.${state.me.id}`, JSON.stringify(state.agentPrefs));
  });
  document.addEventListener("visibilitychange", () => { if (!document.hidden && state.current) markRead(); });
  window.addEventListener("hashchange", () => {
    const id = Number((location.hash.match(/^#\/ticket\/(\d+)$/) || [])[1]);
    if (id && (!state.current || state.current.id !== id)) openTicket(id);
  });
}

function numberOrNull(value) {
  return value === "" ? null : Number(value);
}

/** Live events re-render the lists: the button a keyboard user is on is
 * replaced by its new self, and focus moves there instead of falling to
 * <body>. ``key`` is the data attribute naming the item (data-ticket, ...). */
function keepingFocus(container, key, render) {
  const focused = document.activeElement;
  const item = focused && container.contains(focused) ? focused.getAttribute(key) : null;
  render();
  if (item == null) return;
  const again = [...container.querySelectorAll(`[${key}]`)].find((node) => node.getAttribute(key) === item);
  if (again) again.focus({ preventScroll: true });
}

/** A select filled again on every event: while it has the focus only its
 * value follows, its options are not replaced under a keyboard (or screen
 * reader) user going through them. */
function fillSelect(select, pairs, selected) {
  const value = String(selected ?? "");
  if (document.activeElement === select && pairs.some(([v]) => String(v) === value)) {
    if (select.value !== value) select.value = value;
    return;
  }
  fill(select, options(pairs, selected));
}

function renderStaticSelects() {
  fill($("#presence"), options(["online", "away", "offline"].map((p) => [p, t(`presence.${p}`)]), state.me.presence));
  fill($("#filter-status"), options([["", t("filter.any")], ...STATUSES.map((s) => [s, t(`status.${s}`)])], state.filters.status));
  fill($("#filter-channel"), options([["", `${t("filter.channel")}: ${t("filter.any")}`], ...CHANNELS.map((c) => [c, t(`channel.${c}`)])], state.filters.channel));
  fill($("#filter-priority"), options([["", `${t("filter.priority")}: ${t("filter.any")}`], ...PRIORITIES.map((p) => [p, t(`priority.${p}`)])], state.filters.priority));
  renderHelp();
}

// --- views, counts and the list ------------------------------------------------------------------

function ticketQuery() {
  const params = new URLSearchParams({ view: state.view, status: state.filters.status });
  for (const key of ["channel", "priority", "label", "q"]) if (state.filters[key]) params.set(key, state.filters[key]);
  return params;
}

// The list as the hub orders it: newest activity first.
function listOrder(a, b) {
  return (b.last_message_at || "").localeCompare(a.last_message_at || "") || b.id - a.id;
}

let listGeneration = 0; // bumped by every read that replaces the list (a view, a filter, a search)
let listKey = null; // the query the list held answers
let reloadRequest = 0;

/** ``more``: the next page, added. ``merge`` (live events, a reconnect): the
 * first page read again and merged into what is held, so the pages the agent
 * loaded with "Load more", and the open ticket's row among them, stay. */
async function loadTickets(more = false, { merge = false } = {}) {
  const params = ticketQuery();
  const key = params.toString();
  const replacing = !more && !(merge && key === listKey);
  if (replacing) listGeneration++;
  const generation = listGeneration;
  const reload = merge && !replacing ? ++reloadRequest : null;
  if (more) {
    if (!state.nextCursor) return;
    params.set("cursor", state.nextCursor);
  }
  try {
    const page = await state.api.get(`/inbox/tickets?${params}`);
    // Another view or filter since; or a newer reload of this one is on its way.
    if (generation !== listGeneration || (reload !== null && reload !== reloadRequest)) return;
    if (replacing) {
      state.tickets = page.items;
      state.nextCursor = page.next_cursor;
      listKey = key;
    } else if (more) {
      const held = new Set(state.tickets.map((x) => x.id));
      state.tickets = [...state.tickets, ...page.items.filter((x) => !held.has(x.id))];
      state.nextCursor = page.next_cursor;
    } else mergeFirstPage(page);
    state.listed = true;
    renderTickets();
  } catch (err) { showError(err); }
}

function mergeFirstPage(page) {
  const fresh = new Set(page.items.map((x) => x.id));
  const last = page.items[page.items.length - 1];
  // Held rows the first page would hold but does not have left the list
  // (resolved, assigned away, no longer found); those past it are later pages.
  const later = state.tickets.filter((x) => !fresh.has(x.id) && page.next_cursor && last && listOrder(x, last) > 0);
  state.tickets = [...page.items, ...later].sort(listOrder);
  // The held cursor points past the deepest page loaded, still right (keyset).
  if (!later.length) state.nextCursor = page.next_cursor;
}

let countsTimer = null;

function scheduleCounts() {
  clearTimeout(countsTimer);
  countsTimer = setTimeout(loadCounts, 600);
}

async function loadCounts() {
  try {
    state.counts = await state.api.get(`/inbox/counts?status=${state.filters.status || ""}`);
    renderViews();
  } catch (err) { showError(err); }
}

function renderViews() {
  const views = (state.counts && state.counts.views) || {};
  const items = VIEWS.filter((v) => v !== "all" || (state.me && state.me.role === "admin")).map((view, i) => {
    const count = views[view];
    return h("li", {},
      h("button", { type: "button", class: "view", "aria-current": state.view === view ? "page" : null, "data-view": view, title: `${i + 1}`,
        onclick: () => switchView(view) },
        h("span", {}, t(`view.${view}`)),
        count ? h("span", { class: "count" }, formatNumber(count.total)) : null,
        count && count.unread ? h("span", { class: "badge unread", "aria-label": t("unread", { n: count.unread }) }, formatNumber(count.unread)) : null));
  });
  keepingFocus($("#views"), "data-view", () => fill($("#views"), items));
  const queues = (state.counts && state.counts.queues) || [];
  fill($("#queues"), queues.map((q) => h("li", { class: "queue" },
    h("span", { dir: "auto" }, q.name),
    h("span", { class: "muted small" },
      q.length ? `${t("queue.waiting", { n: formatNumber(q.length) })} · ${t("queue.oldest", { time: formatAgo(q.oldest_waiting_since) })}` : t("queue.empty")))));
}

function switchView(view) {
  state.view = view;
  prefs.view = view;
  savePrefs();
  renderViews();
  loadTickets();
}

function contactLabel(ticket) {
  return withoutBidiControls(ticket.contact_name) || t("anonymous", { id: ticket.contact_id });
}

function renderTickets() {
  const list = $("#tickets");
  // Scrolled down, the row at the top of the view stays there while rows
  // arrive above it (a new conversation) instead of sliding away.
  const top = list.getBoundingClientRect().top;
  const anchor = list.scrollTop > 0
    ? [...list.querySelectorAll("[data-ticket]")].find((node) => node.getBoundingClientRect().bottom > top)
    : null;
  const offset = anchor ? anchor.getBoundingClientRect().top - top : 0;
  keepingFocus(list, "data-ticket", fillTickets);
  const again = anchor && list.querySelector(`[data-ticket="${anchor.getAttribute("data-ticket")}"]`);
  if (again) list.scrollTop += again.getBoundingClientRect().top - top - offset;
}

function fillTickets() {
  const list = $("#tickets");
  if (!state.tickets.length) {
    fill(list, h("li", { class: "empty muted" }, t("no_tickets")));
  } else {
    fill(list, state.tickets.map((ticket) => {
      const last = ticket.last_message;
      const active = state.current && state.current.id === ticket.id;
      return h("li", {},
        h("button", { type: "button", class: `ticket${active ? " active" : ""}${ticket.unread ? " has-unread" : ""}`,
          "data-ticket": ticket.id, "aria-current": active ? "true" : null, onclick: () => openTicket(ticket.id) },
          h("span", { class: "ticket-top" },
            h("strong", { class: "name", dir: "auto" }, contactLabel(ticket)),
            h("time", { datetime: ticket.last_message_at }, formatTime(ticket.last_message_at))),
          h("span", { class: "preview", dir: "auto" }, last ? last.body : ""),
          h("span", { class: "ticket-tags" },
            channelBadge(ticket.channel),
            ticket.priority !== "normal" ? h("span", { class: `badge priority-${ticket.priority}` }, t(`priority.${ticket.priority}`)) : null,
            ticket.status !== "open" ? h("span", { class: "badge" }, t(`status.${ticket.status}`)) : null,
            (ticket.labels || []).map((l) => h("span", { class: "badge label", dir: "auto" }, l)),
            ticket.unread ? h("span", { class: "badge unread", "aria-label": t("unread", { n: ticket.unread }) }, formatNumber(ticket.unread)) : null)));
    }));
  }
  $("#more").hidden = !state.nextCursor;
}

/** What makes two labels one, as hub.text.label_key: "VIP", "vip" and " Vip ". */
function labelKey(label) {
  return label.normalize("NFC").split(/\s+/).filter(Boolean).join(" ").toLowerCase();
}

/** Whether a ticket belongs in the list as filtered now (text search aside). */
function matchesList(ticket) {
  const f = state.filters;
  if (f.status && ticket.status !== f.status) return false;
  if (f.channel && ticket.channel !== f.channel) return false;
  if (f.priority && ticket.priority !== f.priority) return false;
  if (f.label && !(ticket.labels || []).some((l) => labelKey(l) === labelKey(f.label))) return false;
  switch (state.view) {
    case "mine": return ticket.assignee_id === state.me.id;
    case "unassigned": return ticket.assignee_id == null;
    case "teams": return ticket.team_id != null && state.me.team_ids.includes(ticket.team_id);
    default: return true;
  }
}

let reloadTimer = null;

function scheduleReload() {
  clearTimeout(reloadTimer);
  reloadTimer = setTimeout(() => loadTickets(false, { merge: true }), 300);
}

function upsertTicket(ticket, message) {
  const i = state.tickets.findIndex((x) => x.id === ticket.id);
  if (i < 0) {
    // New to this list: fetch it with its contact's name, unread count and all.
    if (matchesList(ticket)) scheduleReload();
    return;
  }
  if (!matchesList(ticket) || state.filters.q) {
    if (!matchesList(ticket)) state.tickets.splice(i, 1);
    else scheduleReload();
    renderTickets();
    return;
  }
  const item = Object.assign({}, state.tickets[i], ticket);
  if (message && !message.private) {
    item.last_message = { id: message.id, body: message.body, direction: message.direction, author: message.author, created_at: message.created_at };
    const reading = state.current && state.current.id === ticket.id && !document.hidden;
    if (message.direction === "in" && !reading) item.unread = (item.unread || 0) + 1;
  }
  state.tickets[i] = item;
  state.tickets.sort(listOrder);
  renderTickets();
}

// --- the live feed ------------------------------------------------------------------------------

function catchUp() {
  // On every hello (the first included): whatever happened before the hub
  // subscribed this socket, the list, the counts and the open conversation (or
  // the one on its way) are read now; pages loaded with "Load more" stay.
  loadTickets(false, { merge: true });
  loadCounts();
  if (opening != null) openTicket(opening);
  else if (state.current) openTicket(state.current.id, { keepFocus: true });
}

function onEvent(frame) {
  switch (frame.type) {
    case "message.received":
    case "message.created": {
      upsertTicket(frame.ticket, frame.message);
      if (state.current && state.current.id === frame.ticket.id) {
        Object.assign(state.current, frame.ticket);
        addMessage(frame.message);
        renderHeader();
        if (frame.message.direction === "in") {
          hideTyping();
          if (!document.hidden) markRead();
        }
      }
      if (frame.message.direction === "in") notifyMessage(frame);
      scheduleCounts();
      break;
    }
    case "message.status":
      if (state.current && state.current.id === frame.message.ticket_id) addMessage(frame.message);
      break;
    case "message.updated": {
      // A customer's edit, a voicemail's transcription: the new text, with
      // the earlier versions, where the agent reads it.
      const message = frame.message;
      if (state.current && state.current.id === message.ticket_id) addMessage(message);
      const item = state.tickets.find((x) => x.id === message.ticket_id);
      if (item && item.last_message && item.last_message.id === message.id) {
        item.last_message = Object.assign({}, item.last_message, { body: message.body });
        renderTickets();
      }
      break;
    }
    case "contact.updated":
      contactChanged(frame.contact_id, frame.contact);
      break;
    case "contact.identity_linked":
    case "contact.source":
    case "contact.reachability": {
      const data = frame.data || {};
      // Merged into another contact by a shared phone: the open conversation is
      // read again with the customer it belongs to now.
      if (state.current && data.merged_contact_id != null && state.current.contact_id === data.merged_contact_id) {
        openTicket(state.current.id, { keepFocus: true });
      }
      upsertTicket(frame.ticket);
      contactChanged(frame.ticket.contact_id);
      break;
    }
    case "ticket.assigned":
    case "ticket.status_changed":
    case "ticket.routed":
    case "ticket.handoff":
    case "ticket.priority_changed":
    case "ticket.labels_changed":
      upsertTicket(frame.ticket);
      if (state.current && state.current.id === frame.ticket.id) {
        Object.assign(state.current, frame.ticket);
        renderHeader();
      }
      if (frame.type === "ticket.assigned" && frame.ticket.assignee_id === state.me.id && frame.actor !== `agent:${state.me.id}`) {
        notify(t("notify.assigned", { id: frame.ticket.id }), frame.ticket.id);
      }
      scheduleCounts();
      break;
    case "contact.merged":
      // The source's tickets move to the target: the open one is read again,
      // with the contact it belongs to now.
      if (state.current && state.current.contact_id === frame.data.source_id) openTicket(state.current.id, { keepFocus: true });
      else if (state.current && state.current.contact_id === frame.data.target_id) loadCustomer();
      scheduleReload();
      break;
    case "typing":
      if (state.current && frame.ticket_id === state.current.id && frame.agent_id !== state.me.id) showTyping(frame);
      break;
    case "agent.presence": {
      // Routing puts presence changes on the stream with the agent's view.
      const changed = frame.agent || { id: frame.agent_id, presence: frame.presence };
      const agent = state.agents.get(changed.id);
      if (agent) agent.presence = changed.presence;
      break;
    }
    default:
      break;
  }
}

/** Something about a customer changed (their name, an address, where to
 * reply): the rows of their tickets, the open conversation's title and
 * customer panel, and its "Send on" choices follow. ``contact``: {id, name}
 * when the event has it. */
function contactChanged(contactId, contact = null) {
  const named = contact && "name" in contact;
  const listed = named ? showContactName(contactId, contact.name) : state.tickets.some((item) => item.contact_id === contactId);
  if (listed && !named) renderTickets();
  // A search may find (or stop finding) them under the new name.
  if (listed || state.filters.q) scheduleReload();
  if (state.current && state.current.contact_id === contactId) loadCustomer();
}

/** A customer's name wherever the inbox shows it outside their panel: the
 * rows of their tickets and the open conversation's title. Returns whether
 * any of their tickets is in the list. */
function showContactName(contactId, name) {
  let listed = false;
  for (const item of state.tickets) {
    if (item.contact_id !== contactId) continue;
    listed = true;
    item.contact_name = name;
  }
  if (listed) renderTickets();
  if (state.current && state.current.contact_id === contactId) {
    state.current.contact_name = name;
    renderHeader();
  }
  return listed;
}

function notifyMessage(frame) {
  const ticket = frame.ticket;
  const relevant = ticket.assignee_id === state.me.id || ticket.assignee_id == null
    || (ticket.team_id != null && state.me.team_ids.includes(ticket.team_id));
  const watching = state.current && state.current.id === ticket.id && !document.hidden;
  if (!relevant || watching) return;
  const item = state.tickets.find((x) => x.id === ticket.id);
  notify(t("notify.new", { name: item ? contactLabel(item) : t("anonymous", { id: ticket.contact_id }) }), ticket.id, frame.message.body);
}

let audio = null;

function notify(title, ticketId, body = "") {
  if (prefs.sound) {
    try {
      audio = audio || new AudioContext();
      const osc = audio.createOscillator();
      const gain = audio.createGain();
      osc.frequency.value = 880;
      gain.gain.setValueAtTime(0.08, audio.currentTime);
      gain.gain.exponentialRampToValueAtTime(0.0001, audio.currentTime + 0.25);
      osc.connect(gain).connect(audio.destination);
      osc.start();
      osc.stop(audio.currentTime + 0.25);
    } catch { /* no audio device */ }
  }
  if (prefs.desktop && "Notification" in window && Notification.permission === "granted" && document.hidden) {
    const n = new Notification(title, { body: body.slice(0, 140), tag: `ticket-${ticketId}` });
    n.onclick = () => { window.focus(); openTicket(ticketId); n.close(); };
  }
}

// --- the conversation ----------------------------------------------------------------------------

let ticketRequest = 0;
let opening = null; // the ticket asked for last, until its answer is in

async function openTicket(id, { keepFocus = false } = {}) {
  const mine = ++ticketRequest;
  opening = id;
  try {
    const ticket = await state.api.get(`/tickets/${id}`);
    // Answers come back in any order: only the last request opens its ticket
    // (the agent clicked on, or a catch-up's read lost to the agent's click).
    if (mine !== ticketRequest) return;
    opening = null;
    const switching = !state.current || state.current.id !== id;
    if (switching && state.current) saveDraft();
    if (!switching) keepEarlier(ticket, state.current);
    state.current = ticket;
    state.messageIds = new Set();
    // The previous customer's details must not stand in for this one's, not
    // even until they load: the panel, the reply channels and {{contact.name}}.
    if (state.contact && state.contact.id !== ticket.contact_id) state.contact = null;
    if (switching) {
      const draft = readDraft(id);
      $("#reply-text").value = draft.text || "";
      setMode(draft.mode === "note" ? "note" : "reply", false);
      $("#send").disabled = sending.has(id);
      hideTyping();
    }
    if (location.hash !== `#/ticket/${id}`) history.replaceState(null, "", `#/ticket/${id}`);
    $("#conv-empty").hidden = true;
    $("#conv").hidden = false;
    renderConversation();
    renderTickets();
    if (!state.contact) renderCustomer();
    await loadCustomer();
    if (mine !== ticketRequest) return;
    markRead();
    if (!keepFocus && switching) $("#messages").focus({ preventScroll: true });
  } catch (err) {
    if (mine !== ticketRequest) return;
    opening = null;
    showError(err);
    // The address names what is on screen, not the ticket that could not open.
    const shown = state.current ? `#/ticket/${state.current.id}` : "";
    if (location.hash !== shown) history.replaceState(null, "", `${location.pathname}${location.search}${shown}`);
  }
}

/** A message of the open conversation by the id its channel gave it (what a
 * Telegram reply names). */
function shownMessage(externalId) {
  return (state.current?.messages || []).find((m) => m.external_id === externalId) || null;
}

function renderConversation() {
  renderHeader();
  const box = $("#messages");
  fill(box, earlierControl(), state.current.messages.map((m) => messageView(m, state.agents, shownMessage)));
  state.messageIds = new Set(state.current.messages.map((m) => m.id));
  box.setAttribute("tabindex", "-1");
  box.scrollTop = box.scrollHeight;
  renderPendingFiles();
}

function renderHeader() {
  const ticket = state.current;
  fill($("#conv-title"), contactLabel(ticket));
  fill($("#conv-badges"),
    h("span", { class: "muted" }, t("ticket", { id: ticket.id })), " ",
    channelBadge(ticket.channel), " ",
    h("span", { class: `badge status-${ticket.status}` }, t(`status.${ticket.status}`)),
    ticket.snoozed_until ? h("span", { class: "muted small" }, ` → ${formatTime(ticket.snoozed_until)}`) : null);
  const agents = [...state.agents.values()].filter((a) => a.active);
  fillSelect($("#act-assignee"), [["", t("nobody")], ...agents.map((a) => [a.id, a.name])], ticket.assignee_id);
  fillSelect($("#act-team"), [["", t("no_team")], ...[...state.teams.values()].map((tm) => [tm.id, tm.name])], ticket.team_id);
  fillSelect($("#act-status"), STATUSES.map((s) => [s, t(`status.${s}`)]), ticket.status);
  fillSelect($("#act-priority"), PRIORITIES.map((p) => [p, t(`priority.${p}`)]), ticket.priority);
  const labels = $("#act-labels");
  if (document.activeElement !== labels) labels.value = (ticket.labels || []).join(", ");
  renderReplyChannels();
}

function addMessage(message) {
  const box = $("#messages");
  const nearBottom = box.scrollHeight - box.scrollTop - box.clientHeight < 80;
  const node = messageView(message, state.agents, shownMessage);
  const existing = box.querySelector(`[data-id="${message.id}"]`);
  const list = state.current.messages;
  const i = list.findIndex((m) => m.id === message.id);
  // A late status of a message on a page not loaded yet: appended, it would sit
  // among the newest; its page brings it, current, when the agent scrolls back.
  if (i < 0 && state.current.messages_before != null && list.length && message.id < list[0].id) return;
  if (i >= 0) {
    // Events and answers cross on the wire: a status never moves backwards
    // (a reply's "queued" answer may arrive after its "failed" event).
    const merged = Object.assign({}, list[i], message);
    if ((STATUS_RANK[list[i].status] ?? 0) > (STATUS_RANK[message.status] ?? 0)) {
      merged.status = list[i].status;
      merged.status_reason = list[i].status_reason;
    }
    list[i] = merged;
  } else list.push(message);
  if (existing) existing.replaceWith(messageView(list[i >= 0 ? i : list.length - 1], state.agents, shownMessage));
  else {
    box.appendChild(node);
    if (nearBottom || message.direction === "out") box.scrollTop = box.scrollHeight;
  }
}

// --- earlier messages: the detail holds the newest page; older ones load on demand ---

let earlier = null; // the request for earlier messages under way: { ticket }
let earlierFailed = null; // the ticket whose last request failed: no more automatic tries

function earlierControl() {
  if (!state.current || state.current.messages_before == null) return null;
  const loading = Boolean(earlier && earlier.ticket === state.current);
  return h("div", { id: "history-more", class: "history-more" },
    h("button", { type: "button", id: "load-earlier", class: "link", onclick: () => loadEarlier(false) },
      t(loading ? "history.loading" : "history.earlier")));
}

function renderEarlierControl() {
  const box = $("#messages");
  const row = $("#history-more");
  const next = earlierControl();
  if (row && next) {
    // Its text changes in place: a keyboard user's focus stays on the button.
    fill(row.firstChild, next.firstChild.textContent);
  } else if (row) {
    const focused = row.contains(document.activeElement);
    row.remove();
    if (focused) box.focus({ preventScroll: true });
  } else if (next) box.prepend(next);
}

async function loadEarlier(automatic) {
  const ticket = state.current;
  if (!ticket || ticket.messages_before == null || (earlier && earlier.ticket === ticket)) return;
  if (automatic && earlierFailed === ticket) return;
  earlierFailed = null;
  const mine = (earlier = { ticket });
  const box = $("#messages");
  // The whole page lands at once in a live region: read it out as one change.
  box.setAttribute("aria-busy", "true");
  renderEarlierControl();
  try {
    const params = new URLSearchParams({ before: String(ticket.messages_before), limit: String(EARLIER_PAGE) });
    const page = await state.api.get(`/tickets/${ticket.id}/messages?${params}`);
    // Another conversation, or a fresh read of this one, has the pane now.
    if (state.current !== ticket) return;
    const held = new Set(ticket.messages.map((m) => m.id));
    const fresh = page.items.filter((m) => !held.has(m.id));
    ticket.messages = [...fresh, ...ticket.messages];
    for (const m of fresh) state.messageIds.add(m.id);
    ticket.messages_before = page.next_cursor && page.items.length ? page.items[0].id : null;
    if (earlier === mine) earlier = null;
    // Kept at the same distance from the bottom, what the agent was reading
    // stays where it was while the page grows above it.
    const fromBottom = box.scrollHeight - box.scrollTop;
    renderEarlierControl();
    const nodes = fresh.map((m) => messageView(m, state.agents, shownMessage));
    const control = $("#history-more");
    if (control) control.after(...nodes);
    else box.prepend(...nodes);
    box.scrollTop = box.scrollHeight - fromBottom;
    announce(t("history.loaded", { n: formatNumber(fresh.length) }));
  } catch (err) {
    earlierFailed = ticket;
    showError(err);
  } finally {
    if (earlier === mine) earlier = null;
    if (!earlier) box.removeAttribute("aria-busy");
    if (state.current === ticket) renderEarlierControl();
  }
}

/** A fresh read of the open ticket (after a reconnect) holds only the newest
 * page: the earlier pages the agent already went back through stay with it,
 * when the two overlap (nothing can be missing in between). */
function keepEarlier(fresh, held) {
  if (!held || fresh.messages_before == null || !fresh.messages.length || !held.messages.length) return;
  const first = fresh.messages[0].id;
  if (held.messages[0].id >= first || held.messages[held.messages.length - 1].id < first) return;
  fresh.messages = [...held.messages.filter((m) => m.id < first), ...fresh.messages];
  fresh.messages_before = held.messages_before;
}

async function markRead() {
  if (!state.current) return;
  const id = state.current.id;
  try {
    await state.api.post(`/tickets/${id}/read`, {});
    const item = state.tickets.find((x) => x.id === id);
    if (item && item.unread) { item.unread = 0; renderTickets(); }
    scheduleCounts();
  } catch (err) { showError(err); }
}

let typingHide = null;

function showTyping(frame) {
  if (frame.typing === false) return hideTyping();
  const name = frame.author === "agent" ? (state.agents.get(frame.agent_id) || {}).name || t("author.agent") : null;
  fill($("#typing"), frame.author === "agent" ? t("typing.agent", { name }) : t("typing.contact"));
  clearTimeout(typingHide);
  typingHide = setTimeout(hideTyping, 6000);
}

function hideTyping() {
  clearTimeout(typingHide);
  fill($("#typing"));
}

// --- actions ---------------------------------------------------------------------------------------

/** ``onRefused`` puts back what the agent changed when the hub says no. */
async function act(promise, onRefused = null) {
  try {
    const ticket = await promise;
    if (ticket && state.current && ticket.id === state.current.id) {
      Object.assign(state.current, ticket);
      renderHeader();
      upsertTicket(ticket);
    }
    announce(t("saved"));
    scheduleCounts();
    return ticket;
  } catch (err) {
    showError(err);
    if (onRefused) onRefused();
    if (state.current) renderHeader();
    return null;
  }
}

function assign(agentId, teamId) {
  if (!state.current) return null;
  // Says whom the agent saw holding it: when a colleague took it meanwhile,
  // the hub answers 409 naming them instead of silently taking it from them.
  const body = { agent_id: agentId, team_id: teamId, expected_assignee_id: state.current.assignee_id ?? null };
  return act(state.api.post(`/tickets/${state.current.id}/assign`, body));
}

function setStatus(status, snoozedUntil = null) {
  if (!state.current) return null;
  const body = { status };
  if (snoozedUntil) body.snoozed_until = snoozedUntil;
  return act(state.api.post(`/tickets/${state.current.id}/status`, body));
}

function setPriority(priority) {
  if (!state.current) return null;
  return act(state.api.post(`/tickets/${state.current.id}/priority`, { priority }));
}

function saveLabels() {
  if (!state.current) return null;
  const labels = $("#act-labels").value.split(/[,،]/).map((l) => l.trim()).filter(Boolean);
  const same = JSON.stringify([...labels].sort()) === JSON.stringify([...(state.current.labels || [])].sort());
  if (same) return null;
  const ticket = state.current;
  // Left in the box, refused labels would look saved.
  return act(state.api.put(`/tickets/${ticket.id}/labels`, { labels }), () => {
    if (state.current === ticket) $("#act-labels").value = (ticket.labels || []).join(", ");
  });
}

function toLocalInput(date) {
  const pad = (n) => String(n).padStart(2, "0");
  return `${date.getFullYear()}-${pad(date.getMonth() + 1)}-${pad(date.getDate())}T${pad(date.getHours())}:${pad(date.getMinutes())}`;
}

function openSnooze() {
  if (!state.current) return;
  const dialog = $("#snooze-dialog");
  presetSnooze("tomorrow");
  dialog.showModal();
}

function presetSnooze(which) {
  const d = new Date();
  if (which === "hour") d.setHours(d.getHours() + 1);
  else {
    d.setDate(d.getDate() + (which === "week" ? 7 : 1));
    d.setHours(9, 0, 0, 0);
  }
  $("#snooze-at").value = toLocalInput(d);
}

function onSnoozeSubmit(event) {
  if (event.submitter && event.submitter.value === "cancel") return;
  const when = new Date($("#snooze-at").value);
  if (Number.isNaN(when.getTime())) { event.preventDefault(); return; }
  setStatus("snoozed", when.toISOString());
}

function cyclePriority() {
  if (!state.current) return;
  const next = PRIORITIES[(PRIORITIES.indexOf(state.current.priority) + 1) % PRIORITIES.length];
  setPriority(next);
}

// --- the reply box ---------------------------------------------------------------------------------

// --- drafts: a half-written reply waits for the agent to come back to its ticket ---
// Kept in this tab's sessionStorage, so a reload keeps them too; per agent, so
// whoever signs in next on this browser does not get them. With the text goes
// whether it is a private note: a note restored as a reply would reach the customer.

function draftKey(id) {
  return `${DRAFT_KEY}.${state.me.id}.${id}`;
}

function readDraft(id) {
  try { return JSON.parse(session.get(draftKey(id)) || "{}") || {}; } catch { return {}; }
}

function saveDraft() {
  if (!state.current) return;
  const text = $("#reply-text").value;
  if (text) session.set(draftKey(state.current.id), JSON.stringify({ text, mode: state.mode }));
  else session.remove(draftKey(state.current.id));
}

function filesOf(id) {
  if (!state.files.has(id)) state.files.set(id, []);
  return state.files.get(id);
}

function setMode(mode, focus = true) {
  state.mode = mode;
  saveDraft();
  $("#mode-reply").setAttribute("aria-pressed", String(mode === "reply"));
  $("#mode-note").setAttribute("aria-pressed", String(mode === "note"));
  $("#reply").classList.toggle("note-mode", mode === "note");
  $("#reply-text").placeholder = t(mode === "note" ? "note.placeholder" : "reply.placeholder");
  $("#channel-label").hidden = mode === "note";
  if (mode === "note") stopTyping();
  if (focus) $("#reply-text").focus();
}

function replyChannels() {
  const ticket = state.current;
  const channels = [ticket.channel];
  for (const identity of (state.contact && state.contact.identities) || []) {
    const channel = REPLY_CHANNEL_OF_IDENTITY[identity.channel];
    if (channel && !channels.includes(channel) && state.inboxChannels.has(channel)) channels.push(channel);
  }
  return channels;
}

function renderReplyChannels() {
  if (!state.current) return;
  const select = $("#reply-channel");
  const channels = replyChannels();
  const preferred = state.contact && state.contact.attributes && state.contact.attributes.reply_channel;
  const current = channels.includes(select.value) && select.dataset.ticket === String(state.current.id)
    ? select.value
    : channels.includes(preferred) ? preferred : state.current.channel;
  fillSelect(select, channels.map((c) => [c, t(`channel.${c}`)]), current);
  select.dataset.ticket = String(state.current.id);
}

// Tickets whose reply is on its way: a second Ctrl+Enter (or click) before the
// hub answers must not send the same text again.
const sending = new Set();

async function sendReply() {
  if (!state.current) return;
  const id = state.current.id;
  if (sending.has(id)) return;
  const text = $("#reply-text").value;
  const files = [...filesOf(id)];
  if (!text.trim() && !files.length) return;
  const body = { body: text, private: state.mode === "note", attachments: files };
  const channel = $("#reply-channel").value;
  if (state.mode === "reply" && channel && channel !== state.current.channel) body.channel = channel;
  sending.add(id);
  $("#send").disabled = true;
  fill($("#reply-error"));
  try {
    const message = await state.api.post(`/tickets/${id}/messages`, body);
    state.files.set(id, filesOf(id).filter((f) => !files.includes(f)));
    // The agent may have opened another conversation meanwhile: its box and
    // its messages are not this reply's to touch.
    if (!state.current || state.current.id !== id) {
      if (state.me) session.remove(draftKey(id));
      return;
    }
    // Whatever the agent typed after sending stays in the box.
    const box = $("#reply-text");
    box.value = box.value.startsWith(text) ? box.value.slice(text.length).trimStart() : box.value;
    saveDraft();
    renderPendingFiles();
    stopTyping();
    addMessage(message);
  } catch (err) {
    if (state.current && state.current.id === id) fill($("#reply-error"), err.message);
    else showError(err);
  } finally {
    sending.delete(id);
    if (state.current && state.current.id === id) $("#send").disabled = false;
  }
}

let lastTypingSent = 0;

function onReplyInput() {
  saveDraft();
  updateCanned();
  if (state.mode !== "reply" || !state.current || !state.socket) return;
  const now = Date.now();
  if (now - lastTypingSent > 2500) {
    lastTypingSent = now;
    state.socket.send({ type: "typing", ticket_id: state.current.id, typing: true });
  }
}

function stopTyping() {
  if (lastTypingSent && state.socket && state.current) {
    state.socket.send({ type: "typing", ticket_id: state.current.id, typing: false });
  }
  lastTypingSent = 0;
}

async function uploadFiles(event) {
  if (!state.current) return;
  const id = state.current.id;
  const files = [...event.target.files];
  event.target.value = "";
  for (const file of files) {
    try {
      // Uploads are slow: the file belongs to the ticket it was chosen for,
      // whichever one is open when it is done.
      filesOf(id).push(await state.api.upload(file));
      renderPendingFiles();
    } catch (err) {
      fill($("#reply-error"), err.message);
    }
  }
}

function renderPendingFiles() {
  if (!state.current) return;
  const files = filesOf(state.current.id);
  fill($("#pending-files"), files.map((file, i) => h("li", { class: "chip" },
    h("span", { dir: "auto" }, file.filename || file.url),
    h("button", { type: "button", class: "link", "aria-label": `${t("remove")} ${file.filename || ""}`,
      onclick: () => { files.splice(i, 1); renderPendingFiles(); } }, "×"))));
}

// Canned responses: "/" then the short code, at the start or after a space.
let cannedMatches = [];
let cannedIndex = 0;

function cannedQuery() {
  const box = $("#reply-text");
  const before = box.value.slice(0, box.selectionStart);
  const match = before.match(/(?:^|\s)\/([^\s/]*)$/);
  return match ? { word: match[1], start: before.length - match[1].length - 1 } : null;
}

function updateCanned() {
  const query = cannedQuery();
  const menu = $("#canned-menu");
  if (!query) return closeCanned();
  const word = query.word.toLocaleLowerCase();
  cannedMatches = state.canned.filter((c) => c.short_code.startsWith(word) || (word && c.body.toLocaleLowerCase().includes(word))).slice(0, 8);
  cannedIndex = 0;
  menu.hidden = false;
  $("#reply-text").setAttribute("aria-expanded", "true");
  renderCanned();
}

function renderCanned() {
  const menu = $("#canned-menu");
  if (!cannedMatches.length) return fill(menu, h("li", { class: "muted", role: "option", "aria-disabled": "true" }, t("canned.none")));
  fill(menu, cannedMatches.map((c, i) => h("li", {
    role: "option", id: `canned-${c.id}`, "aria-selected": String(i === cannedIndex), class: i === cannedIndex ? "selected" : null,
    onmousedown: (e) => { e.preventDefault(); insertCanned(c); },
  }, h("strong", { dir: "auto" }, `/${c.short_code}`), " ", h("span", { class: "muted", dir: "auto" }, c.body.slice(0, 80)))));
  if (cannedMatches[cannedIndex]) $("#reply-text").setAttribute("aria-activedescendant", `canned-${cannedMatches[cannedIndex].id}`);
}

function closeCanned() {
  $("#canned-menu").hidden = true;
  $("#reply-text").setAttribute("aria-expanded", "false");
  $("#reply-text").removeAttribute("aria-activedescendant");
  cannedMatches = [];
}

function fillVariables(text) {
  const contact = state.contact || {};
  const values = { "contact.name": contact.name || "", "agent.name": state.me.name, "ticket.id": state.current ? state.current.id : "" };
  return text.replace(/\{\{\s*([\w.]+)\s*\}\}/g, (all, key) => (key in values ? String(values[key]) : all));
}

function insertCanned(canned) {
  const box = $("#reply-text");
  const query = cannedQuery();
  if (!query) return;
  const text = fillVariables(canned.body);
  box.value = box.value.slice(0, query.start) + text + box.value.slice(box.selectionStart);
  const caret = query.start + text.length;
  box.setSelectionRange(caret, caret);
  saveDraft();
  closeCanned();
  box.focus();
}

function onReplyKey(event) {
  const menuOpen = !$("#canned-menu").hidden && cannedMatches.length;
  if (menuOpen && (event.key === "ArrowDown" || event.key === "ArrowUp")) {
    event.preventDefault();
    cannedIndex = (cannedIndex + (event.key === "ArrowDown" ? 1 : -1) + cannedMatches.length) % cannedMatches.length;
    renderCanned();
  } else if (menuOpen && (event.key === "Enter" || event.key === "Tab") && !event.ctrlKey && !event.metaKey) {
    event.preventDefault();
    insertCanned(cannedMatches[cannedIndex]);
  } else if (event.key === "Escape") {
    if (!$("#canned-menu").hidden) closeCanned();
    else $("#reply-text").blur();
  } else if (event.key === "Enter" && (event.ctrlKey || event.metaKey)) {
    event.preventDefault();
    sendReply();
  }
}

async function openCannedDialog() {
  await refreshCanned();
  $("#canned-dialog").showModal();
}

async function refreshCanned() {
  try { state.canned = (await state.api.get("/canned_responses")).items; } catch (err) { showError(err); }
  fill($("#canned-list"), state.canned.map((c) => h("li", {},
    h("strong", { dir: "auto" }, `/${c.short_code}`), " ", h("span", { dir: "auto" }, c.body), " ",
    h("button", { type: "button", class: "link", onclick: () => deleteCanned(c) }, t("canned.delete")))));
}

async function addCanned(event) {
  event.preventDefault();
  fill($("#canned-error"));
  try {
    await state.api.post("/canned_responses", { short_code: $("#canned-code").value, body: $("#canned-body").value });
    $("#canned-code").value = "";
    $("#canned-body").value = "";
    await refreshCanned();
  } catch (err) { fill($("#canned-error"), err.message); }
}

async function deleteCanned(canned) {
  try {
    await state.api.del(`/canned_responses/${canned.id}`);
    await refreshCanned();
  } catch (err) { fill($("#canned-error"), err.message); }
}

// --- the customer panel ---------------------------------------------------------------------------------

async function loadCustomer() {
  if (!state.current) return;
  const id = state.current.contact_id;
  let contact = null;
  let failure = null;
  try {
    contact = await state.api.get(`/contacts/${id}`);
  } catch (err) { failure = err; }
  // Another conversation (another customer's) may have opened meanwhile.
  if (!state.current || state.current.contact_id !== id) return;
  if (failure) showError(failure);
  state.contact = contact;
  renderCustomer();
  renderReplyChannels();
}

function toggleCustomer() {
  const panel = $("#customer");
  panel.hidden = !panel.hidden;
  $("#toggle-customer").setAttribute("aria-expanded", String(!panel.hidden));
  $("#app").classList.toggle("no-customer", panel.hidden);
}

function renderCustomer() {
  const panel = $("#customer");
  const c = state.contact;
  if (!c || !state.current) return fill(panel);
  const attributes = Object.entries(c.attributes || {}).filter(([key]) => key !== "possible_duplicate_of");
  const duplicates = (c.attributes && c.attributes.possible_duplicate_of) || [];
  // Live events re-render the panel: a keyboard user on "Edit" stays there.
  const onEdit = document.activeElement && document.activeElement.id === "edit-contact";
  fill(panel,
    h("div", { class: "customer-head" },
      h("h2", { dir: "auto" }, withoutBidiControls(c.name) || t("anonymous", { id: c.id })),
      h("button", { type: "button", id: "edit-contact", class: "link", "aria-haspopup": "dialog", onclick: openContactEdit }, t("contact.edit"))),
    h("p", { class: "muted small" }, `#${c.id}`),
    duplicates.map((id) => h("p", { class: "hint" }, t("possible_duplicate", { id }), " ",
      h("button", { type: "button", class: "link", onclick: () => confirmMerge(id) }, t("merge.do")))),
    h("h3", {}, t("identities")),
    h("ul", { class: "identities" }, (c.identities || []).map((i) => h("li", {},
      h("span", { class: "badge" }, t(`identity.${i.channel}`)), " ",
      h("span", { dir: "ltr", class: "address" }, i.address),
      // The parentheses outside the name: a right-to-left name cannot take them along.
      i.display_name ? h("span", { class: "muted" }, " (", h("bdi", { dir: "auto" }, withoutBidiControls(i.display_name)), ")") : null))),
    h("dl", { class: "facts" },
      h("dt", {}, t("lead_stage")), h("dd", { dir: "auto" }, c.lifecycle_stage ? stageLabel(c.lifecycle_stage) : "—"),
      h("dt", {}, t("lead_score")), h("dd", {}, formatNumber(c.lead_score || 0)),
      c.segment ? [h("dt", {}, t("segment")), h("dd", { dir: "auto" }, c.segment)] : null,
      (c.tags || []).length ? [h("dt", {}, t("tags")), h("dd", { dir: "auto" }, c.tags.join(", "))] : null),
    attributes.length ? [h("h3", {}, t("attributes")), h("dl", { class: "facts" }, attributes.map(([key, value]) => [
      h("dt", { dir: "auto" }, key), h("dd", { dir: "auto" }, typeof value === "string" ? value : JSON.stringify(value))]))] : null,
    h("h3", {}, t("previous_tickets")),
    h("ul", { class: "previous" }, (c.tickets || []).map((tk) => h("li", {},
      h("button", { type: "button", class: "link", "aria-current": tk.id === state.current.id ? "true" : null, onclick: () => openTicket(tk.id) },
        t("ticket", { id: tk.id })), " ", channelBadge(tk.channel), " ",
      h("span", { class: "muted small" }, `${t(`status.${tk.status}`)} · ${formatTime(tk.last_message_at)}`)))),
    h("button", { type: "button", id: "open-timeline", onclick: openTimeline }, t("timeline")),
    h("h3", {}, t("merge")),
    h("form", { class: "merge", onsubmit: searchMerge },
      h("input", { id: "merge-q", type: "search", dir: "auto", "aria-label": t("merge.search"), placeholder: t("merge.search") }),
      h("ul", { id: "merge-results", class: "merge-results" })));
  if (onEdit) $("#edit-contact").focus({ preventScroll: true });
}

// --- editing the contact (PATCH /contacts/{id}) ---------------------------------------------------
// The form sends only what the agent changed against the contact as it opened
// (a colleague's edit meanwhile is not undone); the hub's refusal stays in the
// form, next to the field it names, and the form stays open to fix it.

// The stages the hub takes, in the order a lead climbs them.
const LIFECYCLE_STAGES = ["lead", "marketing_qualified", "sales_qualified", "customer"];
// Each field the hub may name in a refusal: the input, and its label.
const CONTACT_FIELDS = {
  name: ["#contact-name", "contact.name"],
  tags: ["#contact-tags", "tags"],
  lifecycle_stage: ["#contact-stage", "lead_stage"],
  add_email: ["#contact-email", "contact.add_email"],
  add_phone: ["#contact-phone", "contact.add_phone"],
  attributes: ["#contact-attr-add", "attributes"],
};

let editing = null; // the contact as the form opened on it: { id, name, tags, stage, attributes }

function stageLabel(stage) {
  const key = `stage.${stage}`;
  const label = t(key);
  return label === key ? stage : label;
}

/** Attributes the form offers: not the hub's own duplicate hint, not SMS
 * consent (recorded with its time and source through its own endpoint), and
 * only text, numbers and true/false, which is all an edit can write back. */
function editableAttribute(key, value) {
  return key !== "possible_duplicate_of" && !key.startsWith("sms_consent") && ["string", "number", "boolean"].includes(typeof value);
}

function attributeText(value) {
  return typeof value === "string" ? value : JSON.stringify(value);
}

/** The text typed, as the type the attribute had: a number stays a number
 * and true / false stay booleans; anything else (and every new one) is text,
 * so "0912" is not turned into 912. */
function typedValue(text, original) {
  if (typeof original === "number" && /^-?\d+(\.\d+)?$/.test(text)) return Number(text);
  if (typeof original === "boolean" && /^(true|false)$/i.test(text)) return text.toLowerCase() === "true";
  return text;
}

function splitTags(text) {
  return text.split(/[,،]/).map((tag) => tag.trim()).filter(Boolean);
}

function sameWords(text) {
  return String(text || "").split(/\s+/).filter(Boolean).join(" ");
}

function openContactEdit() {
  const c = state.contact;
  if (!c) return;
  const attributes = Object.fromEntries(Object.entries(c.attributes || {}).filter(([key, value]) => editableAttribute(key, value)));
  editing = { id: c.id, name: withoutBidiControls(c.name) || "", tags: [...(c.tags || [])], stage: c.lifecycle_stage || "", attributes };
  const stages = !editing.stage || LIFECYCLE_STAGES.includes(editing.stage) ? LIFECYCLE_STAGES : [...LIFECYCLE_STAGES, editing.stage];
  const field = (label, control) => h("label", {}, h("span", {}, t(label)), " ", control);
  const dialog = $("#contact-dialog");
  // Built on opening, in the language of the moment, and emptied on closing:
  // the login form's "Email" is then the page's only field of that name.
  fill(dialog, h("form", { id: "contact-form", class: "contact-form", novalidate: true, onsubmit: saveContact },
    h("h2", { id: "contact-title" }, t("contact.edit.title")),
    field("contact.name", h("input", { id: "contact-name", dir: "auto", maxlength: "512", autocomplete: "off", value: editing.name })),
    field("tags", h("input", { id: "contact-tags", dir: "auto", autocomplete: "off", placeholder: t("contact.tags.hint"), value: editing.tags.join(", ") })),
    field("lead_stage", h("select", { id: "contact-stage" },
      options([["", t("stage.none")], ...stages.map((stage) => [stage, stageLabel(stage)])], editing.stage))),
    field("contact.add_email", h("input", { id: "contact-email", type: "email", dir: "auto", maxlength: "320", autocomplete: "off" })),
    field("contact.add_phone", h("input", { id: "contact-phone", type: "tel", dir: "auto", maxlength: "64", autocomplete: "off" })),
    h("fieldset", { class: "contact-attributes" },
      h("legend", {}, t("attributes")),
      h("ul", { id: "contact-attributes", class: "attribute-rows" },
        Object.entries(attributes).map(([key, value]) => attributeRow(key, attributeText(value), true))),
      h("p", { class: "muted small" }, t("contact.attr.hint")),
      h("button", { type: "button", id: "contact-attr-add", onclick: addAttributeRow }, t("contact.attr.add"))),
    h("p", { id: "contact-error", class: "error", role: "alert", dir: "auto" }),
    h("div", { class: "row end" },
      h("button", { type: "button", onclick: () => dialog.close() }, t("cancel")),
      h("button", { type: "submit", class: "primary", id: "contact-save" }, t("save")))));
  dialog.showModal();
  $("#contact-name").focus();
}

/** One attribute's row: an existing one's name is fixed (remove it and add
 * another to rename it), a new one's is typed. */
function attributeRow(key = "", value = "", existing = false) {
  const row = h("li", { class: "attribute-row", "data-key": existing ? key : null },
    h("input", { class: "attr-key", dir: "auto", value: key, readonly: existing, maxlength: "64", autocomplete: "off",
      "aria-label": t("contact.attr.name"), placeholder: existing ? null : t("contact.attr.name") }),
    h("input", { class: "attr-value", dir: "auto", value, autocomplete: "off",
      "aria-label": existing ? t("contact.attr.value_of", { name: key }) : t("contact.attr.value"),
      placeholder: existing ? null : t("contact.attr.value") }),
    h("button", { type: "button", class: "link attr-remove", "aria-label": existing ? t("contact.attr.remove", { name: key }) : t("remove"),
      onclick: () => removeAttributeRow(row) }, "×"));
  return row;
}

function addAttributeRow() {
  const row = attributeRow();
  $("#contact-attributes").appendChild(row);
  row.querySelector(".attr-key").focus();
}

function removeAttributeRow(row) {
  const next = row.nextElementSibling || row.previousElementSibling;
  row.remove();
  (next ? next.querySelector(".attr-value") : $("#contact-attr-add")).focus();
}

/** What the form asks the hub to change: ``{ body }``, or ``{ missing }``:
 * the name input of an attribute given a value but no name. */
function contactPatch() {
  const body = {};
  const name = sameWords(withoutBidiControls($("#contact-name").value));
  if (name !== sameWords(editing.name)) body.name = name || null;
  const tags = splitTags($("#contact-tags").value);
  // The hub keeps one tag per spelling up to case, in the contact's spelling.
  const keys = (list) => [...new Set(list.map(labelKey))].sort().join("\n");
  if (keys(tags) !== keys(editing.tags)) body.tags = tags;
  const stage = $("#contact-stage").value;
  if (stage !== editing.stage) body.lifecycle_stage = stage || null;
  const email = $("#contact-email").value.trim();
  if (email) body.add_email = email;
  const phone = $("#contact-phone").value.trim();
  if (phone) body.add_phone = phone;
  const attributes = {};
  const kept = new Set();
  for (const row of $("#contact-attributes").children) {
    const keyInput = row.querySelector(".attr-key");
    const key = keyInput.value.trim();
    const text = row.querySelector(".attr-value").value.trim();
    if (!key) {
      if (text) return { missing: keyInput };
      continue;
    }
    kept.add(key);
    const had = Object.hasOwn(editing.attributes, key);
    if (!text) {
      if (had) attributes[key] = null;
      else delete attributes[key];
      continue;
    }
    if (had && attributeText(editing.attributes[key]) === text) delete attributes[key];
    else attributes[key] = typedValue(text, editing.attributes[key]);
  }
  for (const key of Object.keys(editing.attributes)) if (!kept.has(key)) attributes[key] = null;
  if (Object.keys(attributes).length) body.attributes = attributes;
  return { body };
}

function clearContactError() {
  fill($("#contact-error"));
  for (const node of $("#contact-form").querySelectorAll("[aria-invalid]")) {
    node.removeAttribute("aria-invalid");
    node.removeAttribute("aria-describedby");
  }
}

function showContactError(message, inputs = []) {
  fill($("#contact-error"), message);
  announce(message);
  for (const input of inputs) {
    input.setAttribute("aria-invalid", "true");
    input.setAttribute("aria-describedby", "contact-error");
  }
  if (inputs.length) inputs[0].focus();
}

/** The input and the label of a field the hub names ("add_email", "tags.2",
 * "attributes.plan"). */
function contactField(path) {
  const [head, ...rest] = String(path || "").split(".");
  if (head === "attributes" && rest.length) {
    const key = rest.join(".");
    const row = [...$("#contact-attributes").children].find((r) => r.querySelector(".attr-key").value.trim() === key);
    return { input: row ? row.querySelector(row.dataset.key != null ? ".attr-value" : ".attr-key") : null, label: `${t("attributes")} › ${key}` };
  }
  const known = CONTACT_FIELDS[head];
  return known ? { input: $(known[0]), label: t(known[1]) } : { input: null, label: path || null };
}

/** The hub's refusal as the form shows it: each field it names, with its label. */
function contactRefusal(err, body) {
  if (err.details.length) {
    const fields = err.details.map((d) => ({ ...contactField(d.field), message: d.message }));
    return {
      message: fields.map((f) => (f.label ? `${f.label}: ${f.message}` : f.message)).join(" · "),
      inputs: fields.map((f) => f.input).filter(Boolean),
    };
  }
  if (err.status === 409) {
    // An address another contact has: the hub's message starts with its kind.
    const field = body.add_phone && (!body.add_email || /^phone\b/.test(err.message)) ? "add_phone" : body.add_email ? "add_email" : null;
    if (field) {
      const { input, label } = contactField(field);
      return { message: `${label}: ${err.message}`, inputs: [input] };
    }
  }
  return { message: err.message, inputs: [] };
}

async function saveContact(event) {
  event.preventDefault();
  const mine = editing;
  const save = $("#contact-save");
  if (!mine || save.disabled) return;
  clearContactError();
  const patch = contactPatch();
  if (patch.missing) return showContactError(t("contact.attr.missing"), [patch.missing]);
  if (!Object.keys(patch.body).length) {
    $("#contact-dialog").close();
    return;
  }
  save.disabled = true;
  try {
    const contact = await state.api.patch(`/contacts/${mine.id}`, patch.body);
    if (editing === mine) $("#contact-dialog").close();
    announce(t("contact.saved"));
    // Other agents' inboxes follow with the contact.updated event; this one
    // need not wait for it.
    if (state.contact && (state.contact.id === mine.id || state.contact.id === contact.id)) {
      state.contact = contact;
      renderCustomer();
      renderReplyChannels();
    }
    showContactName(contact.id, contact.name);
  } catch (err) {
    // A 401 returns to the login form, which says why.
    if (!state.me) return;
    if (editing !== mine) return showError(err);
    const refusal = contactRefusal(err, patch.body);
    showContactError(t("contact.refused", { message: refusal.message }), refusal.inputs);
  } finally {
    save.disabled = false;
  }
}

function contactDialogClosed() {
  editing = null;
  fill($("#contact-dialog"));
  const button = $("#edit-contact");
  if (button) button.focus({ preventScroll: true });
}

async function searchMerge(event) {
  event.preventDefault();
  const q = $("#merge-q").value.trim();
  const target = state.contact;
  if (!q || !target) return;
  try {
    const found = await state.api.get(`/contacts?q=${encodeURIComponent(q)}&limit=10`);
    if (!state.contact || state.contact.id !== target.id) return;
    fill($("#merge-results"), found.items.filter((c) => c.id !== target.id).map((c) => h("li", {},
      h("span", { dir: "auto" }, withoutBidiControls(c.name) || t("anonymous", { id: c.id })), " ",
      h("span", { class: "muted small", dir: "ltr" }, (c.identities || []).map((i) => i.address).join(", ")), " ",
      h("button", { type: "button", class: "link", onclick: () => confirmMerge(c.id) }, t("merge.do")))));
  } catch (err) { showError(err); }
}

async function confirmMerge(sourceId) {
  if (!state.contact) return;
  const target = state.contact.id;
  if (!window.confirm(t("merge.confirm", { source: sourceId, target }))) return;
  try {
    const merged = await state.api.post(`/contacts/${target}/merge`, { source_id: sourceId });
    announce(t("merged"));
    if (!state.contact || state.contact.id !== target) return;
    state.contact = merged;
    renderCustomer();
    renderReplyChannels();
  } catch (err) { showError(err); }
}

async function openTimeline() {
  const contact = state.contact;
  if (!contact) return;
  fill($("#timeline"));
  fill($("#timeline-title"), t("timeline.title", { name: withoutBidiControls(contact.name) || t("anonymous", { id: contact.id }) }));
  state.timelineContact = contact.id;
  state.timelineCursor = null;
  await loadTimeline(false);
  $("#timeline-dialog").showModal();
}

async function loadTimeline(more) {
  const params = new URLSearchParams({ limit: "50" });
  if (more && state.timelineCursor) params.set("cursor", state.timelineCursor);
  try {
    const page = await state.api.get(`/contacts/${state.timelineContact}/timeline?${params}`);
    state.timelineCursor = page.next_cursor;
    const box = $("#timeline");
    for (const item of page.items) box.appendChild(item.type === "message" ? messageView(item.message, state.agents) : eventView(item.event));
    $("#timeline-more").hidden = !page.next_cursor;
  } catch (err) { showError(err); }
}

// --- keyboard shortcuts ------------------------------------------------------------------------------------

const SHORTCUTS = [
  ["j", "key.next"], ["k", "key.prev"], ["r", "key.reply"], ["n", "key.note"], ["a", "key.assign"],
  ["e", "key.resolve"], ["o", "key.reopen"], ["z", "key.snooze"], ["p", "key.priority"], ["c", "key.customer"],
  ["/", "key.search"], ["1–4", "key.views"], ["Ctrl+Enter", "key.send"], ["Esc", "key.escape"], ["?", "key.help"],
];

function renderHelp() {
  fill($("#help"), SHORTCUTS.map(([key, label]) => [h("dt", {}, h("kbd", {}, key)), h("dd", {}, t(label))]));
}

function moveSelection(step) {
  if (!state.tickets.length) return;
  const i = state.current ? state.tickets.findIndex((x) => x.id === state.current.id) : -1;
  const next = state.tickets[Math.min(Math.max(i + step, 0), state.tickets.length - 1)];
  if (next) {
    openTicket(next.id);
    const button = document.querySelector(`[data-ticket="${next.id}"]`);
    if (button) button.scrollIntoView({ block: "nearest" });
  }
}

function onShortcut(event) {
  if (event.defaultPrevented || event.ctrlKey || event.metaKey || event.altKey) return;
  const target = event.target;
  const typing = target instanceof HTMLElement && (target.isContentEditable || ["INPUT", "TEXTAREA", "SELECT"].includes(target.tagName));
  if (typing || document.querySelector("dialog[open]") || !state.me) return;
  // Every shortcut here is a single key: an agent who turned them off (a
  // speech input typing letters, a stray key) gets none (WCAG 2.1.4).
  if (!state.agentPrefs.singleKeys) return;
  const key = event.key;
  const handlers = {
    j: () => moveSelection(1),
    k: () => moveSelection(-1),
    r: () => state.current && setMode("reply"),
    n: () => state.current && setMode("note"),
    a: () => state.current && assign(state.me.id, state.current.team_id),
    e: () => state.current && setStatus("resolved"),
    o: () => state.current && setStatus("open"),
    z: () => openSnooze(),
    p: () => cyclePriority(),
    c: () => toggleCustomer(),
    "/": () => $("#search").focus(),
    "?": () => $("#help-dialog").showModal(),
  };
  if (key in handlers) {
    event.preventDefault();
    handlers[key]();
  } else if (/^[1-4]$/.test(key)) {
    const views = VIEWS.filter((v) => v !== "all" || state.me.role === "admin");
    const view = views[Number(key) - 1];
    if (view) { event.preventDefault(); switchView(view); }
  }
}

start();
