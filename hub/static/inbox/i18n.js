// The inbox's words in English and Persian. Persian turns the whole interface
// right-to-left; customer text follows its own direction (dir="auto") either way.
const STRINGS = {
  en: {
    "app.title": "Inbox", "login.title": "Log in to the inbox", "login.email": "Email", "login.password": "Password",
    "login.submit": "Log in", "login.failed": "Could not log in: {message}", "logout": "Log out",
    "language": "Language", "views": "Views", "view.mine": "Mine", "view.unassigned": "Unassigned",
    "view.teams": "My teams", "view.all": "All", "queues": "Team queues", "queue.waiting": "{n} waiting",
    "queue.oldest": "oldest {time}", "queue.empty": "empty", "search": "Search conversations",
    "filter.status": "Status", "filter.channel": "Channel", "filter.priority": "Priority", "filter.label": "Label",
    "filter.any": "Any", "load_more": "Load more", "no_tickets": "No conversations here.",
    "no_ticket": "Pick a conversation, or press j / k.", "unread": "{n} unread",
    "status.open": "Open", "status.pending": "Pending (bot)", "status.snoozed": "Snoozed", "status.resolved": "Resolved",
    "priority.low": "Low", "priority.normal": "Normal", "priority.high": "High", "priority.urgent": "Urgent",
    "channel.webchat": "Web chat", "channel.sms": "SMS", "channel.voice": "Phone", "channel.email": "Email",
    "channel.telegram": "Telegram", "identity.webchat": "Web visitor", "identity.phone": "Phone",
    "identity.email": "Email", "identity.telegram": "Telegram",
    "author.contact": "Customer", "author.agent": "Agent", "author.bot": "Bot", "author.system": "System",
    "note": "Private note", "msg.status.queued": "Queued", "msg.status.sending": "Sending", "msg.status.sent": "Sent",
    "msg.status.delivered": "Delivered", "msg.status.read": "Read", "msg.status.failed": "Failed",
    "msg.status.undelivered": "Undelivered", "msg.status.received": "Received", "voicemail": "Voicemail",
    "telegram.forwarded": "Forwarded", "telegram.reply_to": "In reply to", "telegram.reply_to_earlier": "In reply to an earlier message", "telegram.map": "Open the map",
    "transcription": "Transcription", "buttons_offered": "Buttons offered", "pressed": "Pressed “{id}”",
    "attachment": "Attachment", "assignee": "Assignee", "team": "Team", "nobody": "Nobody", "no_team": "No team",
    "priority": "Priority", "status": "Status", "labels": "Labels", "labels.hint": "comma-separated, Enter to save",
    "snooze": "Snooze", "snooze.until": "Snooze until", "snooze.hour": "1 hour", "snooze.tomorrow": "Tomorrow 9:00",
    "snooze.week": "Next week", "snooze.apply": "Snooze", "cancel": "Cancel", "close": "Close",
    "assign_me": "Assign to me", "resolve": "Resolve", "reopen": "Reopen",
    "reply": "Reply", "reply.placeholder": "Write a reply… ( / for canned responses, Ctrl+Enter to send)",
    "note.placeholder": "Write a private note (only agents see it)…", "send": "Send", "send_on": "Send on",
    "attach": "Attach a file", "remove": "Remove", "typing.contact": "The customer is typing…",
    "typing.agent": "{name} is writing a reply…", "canned": "Canned responses", "canned.none": "No canned response matches.",
    "canned.manage": "Canned responses", "canned.add": "Add", "canned.code": "Short code", "canned.body": "Text",
    "canned.delete": "Delete", "customer": "Customer", "identities": "Identities", "attributes": "Attributes",
    "lead_stage": "Lead stage", "lead_score": "Lead score", "segment": "Segment", "tags": "Tags",
    "previous_tickets": "Tickets", "timeline": "Whole timeline", "timeline.title": "Timeline of {name}",
    "merge": "Merge contacts", "merge.search": "Find the contact to merge into this one",
    "merge.confirm": "Merge #{source} into #{target}? Its identities, tickets and history move here.",
    "merge.do": "Merge", "merged": "Merged.", "possible_duplicate": "Possibly the same person as contact #{id}",
    "connection.live": "Live", "connection.reconnecting": "Reconnecting…", "presence.online": "Online",
    "presence.away": "Away", "presence.offline": "Offline", "presence": "Presence",
    "notify.sound": "Sound", "notify.desktop": "Desktop notifications", "notify.new": "New message from {name}",
    "notify.assigned": "Conversation #{id} was assigned to you", "shortcuts": "Keyboard shortcuts",
    "shortcuts.single": "Single-key shortcuts (all but Ctrl+Enter and Esc)", "anonymous": "Visitor #{id}", "ticket": "#{id}",
    "event.ticket.created": "Conversation started on {channel}", "event.ticket.assigned": "Assigned",
    "event.ticket.status_changed": "Status: {to}", "event.ticket.handoff": "Handed to a human: {reason}",
    "event.ticket.routed": "Routed", "event.ticket.priority_changed": "Priority: {to}",
    "event.ticket.labels_changed": "Labels: {to}",
    "event.contact.merged": "Contacts merged", "event.call": "Call", "error": "Error: {message}",
    "key.next": "Next conversation", "key.prev": "Previous conversation", "key.reply": "Reply",
    "key.note": "Private note", "key.assign": "Assign to me", "key.resolve": "Resolve", "key.reopen": "Reopen",
    "key.snooze": "Snooze", "key.priority": "Change priority", "key.search": "Search", "key.views": "Switch view",
    "key.send": "Send the reply", "key.escape": "Leave the reply box / close", "key.help": "This help",
    "key.customer": "Show / hide the customer panel", "saved": "Saved", "subject": "Subject",
    "history.earlier": "Load earlier messages", "history.loading": "Loading earlier messages…",
    "history.loaded": "Earlier messages loaded: {n}",
    "dismiss": "Dismiss", "session.expired": "Your session ended; log in again — your draft is kept.",
    "edited": "Edited — earlier versions: {n}", "edited.until": "until {time}",
    "email.html": "View as HTML", "email.original": "Original message",
    "contact.edit": "Edit", "contact.edit.title": "Edit contact", "contact.name": "Name",
    "contact.tags.hint": "comma-separated", "contact.add_email": "Add an email", "contact.add_phone": "Add a phone number",
    "contact.attr.name": "Attribute name", "contact.attr.value": "Value", "contact.attr.value_of": "Value of {name}",
    "contact.attr.add": "Add an attribute", "contact.attr.remove": "Remove {name}",
    "contact.attr.hint": "An empty value removes the attribute.", "contact.attr.missing": "Attributes: give the attribute a name.",
    "contact.refused": "Not saved — {message}", "contact.saved": "Contact saved", "save": "Save",
    "stage.none": "None", "stage.lead": "Lead", "stage.marketing_qualified": "Marketing qualified",
    "stage.sales_qualified": "Sales qualified", "stage.customer": "Customer",
  },
  fa: {
    "app.title": "صندوق گفتگوها", "login.title": "ورود به صندوق گفتگوها", "login.email": "ایمیل", "login.password": "گذرواژه",
    "login.submit": "ورود", "login.failed": "ورود ممکن نشد: {message}", "logout": "خروج",
    "language": "زبان", "views": "نماها", "view.mine": "مال من", "view.unassigned": "بدون مسئول",
    "view.teams": "تیم‌های من", "view.all": "همه", "queues": "صف تیم‌ها", "queue.waiting": "{n} در انتظار",
    "queue.oldest": "قدیمی‌ترین {time}", "queue.empty": "خالی", "search": "جستجو در گفتگوها",
    "filter.status": "وضعیت", "filter.channel": "کانال", "filter.priority": "اولویت", "filter.label": "برچسب",
    "filter.any": "همه", "load_more": "بیشتر", "no_tickets": "گفتگویی اینجا نیست.",
    "no_ticket": "یک گفتگو را انتخاب کنید یا j / k را بزنید.", "unread": "{n} نخوانده",
    "status.open": "باز", "status.pending": "در انتظار (ربات)", "status.snoozed": "به تعویق افتاده", "status.resolved": "حل‌شده",
    "priority.low": "کم", "priority.normal": "عادی", "priority.high": "زیاد", "priority.urgent": "فوری",
    "channel.webchat": "گفتگوی وب", "channel.sms": "پیامک", "channel.voice": "تلفن", "channel.email": "ایمیل",
    "channel.telegram": "تلگرام", "identity.webchat": "بازدیدکننده وب", "identity.phone": "تلفن",
    "identity.email": "ایمیل", "identity.telegram": "تلگرام",
    "author.contact": "مشتری", "author.agent": "کارشناس", "author.bot": "ربات", "author.system": "سیستم",
    "note": "یادداشت خصوصی", "msg.status.queued": "در صف", "msg.status.sending": "در حال ارسال", "msg.status.sent": "ارسال شد",
    "msg.status.delivered": "تحویل شد", "msg.status.read": "خوانده شد", "msg.status.failed": "ناموفق",
    "msg.status.undelivered": "تحویل نشد", "msg.status.received": "دریافت شد", "voicemail": "پیام صوتی",
    "telegram.forwarded": "بازارسال‌شده", "telegram.reply_to": "در پاسخ به", "telegram.reply_to_earlier": "در پاسخ به پیامی قدیمی‌تر", "telegram.map": "نمایش روی نقشه",
    "transcription": "متن پیام", "buttons_offered": "دکمه‌های پیشنهادی", "pressed": "«{id}» را زد",
    "attachment": "پیوست", "assignee": "مسئول", "team": "تیم", "nobody": "هیچ‌کس", "no_team": "بدون تیم",
    "priority": "اولویت", "status": "وضعیت", "labels": "برچسب‌ها", "labels.hint": "با ویرگول جدا کنید، Enter برای ذخیره",
    "snooze": "تعویق", "snooze.until": "تعویق تا", "snooze.hour": "یک ساعت", "snooze.tomorrow": "فردا ساعت ۹",
    "snooze.week": "هفته بعد", "snooze.apply": "تعویق", "cancel": "انصراف", "close": "بستن",
    "assign_me": "به من بسپار", "resolve": "حل شد", "reopen": "بازگشایی",
    "reply": "پاسخ", "reply.placeholder": "پاسخ را بنویسید… ( / برای پاسخ‌های آماده، Ctrl+Enter برای ارسال)",
    "note.placeholder": "یادداشت خصوصی بنویسید (فقط کارشناسان می‌بینند)…", "send": "ارسال", "send_on": "ارسال با",
    "attach": "پیوست فایل", "remove": "حذف", "typing.contact": "مشتری در حال نوشتن است…",
    "typing.agent": "{name} در حال نوشتن پاسخ است…", "canned": "پاسخ‌های آماده", "canned.none": "پاسخ آماده‌ای پیدا نشد.",
    "canned.manage": "پاسخ‌های آماده", "canned.add": "افزودن", "canned.code": "کد کوتاه", "canned.body": "متن",
    "canned.delete": "حذف", "customer": "مشتری", "identities": "شناسه‌ها", "attributes": "ویژگی‌ها",
    "lead_stage": "مرحله سرنخ", "lead_score": "امتیاز سرنخ", "segment": "بخش", "tags": "برچسب‌ها",
    "previous_tickets": "گفتگوها", "timeline": "تاریخچه کامل", "timeline.title": "تاریخچه {name}",
    "merge": "ادغام مخاطب‌ها", "merge.search": "مخاطبی را که باید در این یکی ادغام شود پیدا کنید",
    "merge.confirm": "#{source} در #{target} ادغام شود؟ شناسه‌ها، گفتگوها و تاریخچه‌اش به اینجا منتقل می‌شود.",
    "merge.do": "ادغام", "merged": "ادغام شد.", "possible_duplicate": "شاید همان مخاطب #{id} باشد",
    "connection.live": "برخط", "connection.reconnecting": "در حال اتصال دوباره…", "presence.online": "حاضر",
    "presence.away": "دور از میز", "presence.offline": "آفلاین", "presence": "وضعیت حضور",
    "notify.sound": "صدا", "notify.desktop": "اعلان دسکتاپ", "notify.new": "پیام تازه از {name}",
    "notify.assigned": "گفتگوی #{id} به شما سپرده شد", "shortcuts": "میان‌برهای صفحه‌کلید",
    "shortcuts.single": "میان‌برهای تک‌کلیدی (همه به جز Ctrl+Enter و Esc)", "anonymous": "بازدیدکننده #{id}", "ticket": "#{id}",
    "event.ticket.created": "گفتگو با {channel} آغاز شد", "event.ticket.assigned": "سپرده شد",
    "event.ticket.status_changed": "وضعیت: {to}", "event.ticket.handoff": "به کارشناس سپرده شد: {reason}",
    "event.ticket.routed": "مسیردهی شد", "event.ticket.priority_changed": "اولویت: {to}",
    "event.ticket.labels_changed": "برچسب‌ها: {to}",
    "event.contact.merged": "مخاطب‌ها ادغام شدند", "event.call": "تماس", "error": "خطا: {message}",
    "key.next": "گفتگوی بعدی", "key.prev": "گفتگوی قبلی", "key.reply": "پاسخ",
    "key.note": "یادداشت خصوصی", "key.assign": "به من بسپار", "key.resolve": "حل شد", "key.reopen": "بازگشایی",
    "key.snooze": "تعویق", "key.priority": "تغییر اولویت", "key.search": "جستجو", "key.views": "تغییر نما",
    "key.send": "ارسال پاسخ", "key.escape": "خروج از کادر پاسخ / بستن", "key.help": "همین راهنما",
    "key.customer": "نمایش / پنهان کردن اطلاعات مشتری", "saved": "ذخیره شد", "subject": "موضوع",
    "history.earlier": "بارگذاری پیام‌های قبلی", "history.loading": "در حال بارگذاری پیام‌های قبلی…",
    "history.loaded": "{n} پیام قبلی بارگذاری شد",
    "dismiss": "بستن", "session.expired": "نشست شما به پایان رسید؛ دوباره وارد شوید — پیش‌نویس شما نگه داشته شده است.",
    "edited": "ویرایش شده — نسخه‌های قبلی: {n}", "edited.until": "تا {time}",
    "email.html": "نمایش به صورت HTML", "email.original": "پیام اصلی",
    "contact.edit": "ویرایش", "contact.edit.title": "ویرایش مخاطب", "contact.name": "نام",
    "contact.tags.hint": "جدا شده با ویرگول", "contact.add_email": "افزودن ایمیل", "contact.add_phone": "افزودن شماره تلفن",
    "contact.attr.name": "نام ویژگی", "contact.attr.value": "مقدار", "contact.attr.value_of": "مقدار {name}",
    "contact.attr.add": "افزودن ویژگی", "contact.attr.remove": "حذف {name}",
    "contact.attr.hint": "مقدار خالی ویژگی را حذف می‌کند.", "contact.attr.missing": "ویژگی‌ها: برای ویژگی نامی بنویسید.",
    "contact.refused": "ذخیره نشد — {message}", "contact.saved": "مخاطب ذخیره شد", "save": "ذخیره",
    "stage.none": "هیچ‌کدام", "stage.lead": "سرنخ", "stage.marketing_qualified": "تأییدشده برای بازاریابی",
    "stage.sales_qualified": "تأییدشده برای فروش", "stage.customer": "مشتری",
  },
};

export const LANGUAGES = { en: "English", fa: "فارسی" };

let current = "en";

export function setLanguage(lang) {
  current = lang in STRINGS ? lang : "en";
  document.documentElement.lang = current;
  document.documentElement.dir = current === "fa" ? "rtl" : "ltr";
  return current;
}

export function language() {
  return current;
}

/** The string for ``key`` with ``{name}`` placeholders filled in (as text). */
export function t(key, vars = {}) {
  const template = STRINGS[current][key] ?? STRINGS.en[key] ?? key;
  return template.replace(/\{(\w+)\}/g, (_, name) => (name in vars ? String(vars[name]) : `{${name}}`));
}

export function locale() {
  return current === "fa" ? "fa-IR" : "en";
}

export function formatTime(iso) {
  if (!iso) return "";
  const d = new Date(iso);
  const sameDay = d.toDateString() === new Date().toDateString();
  const options = sameDay ? { hour: "2-digit", minute: "2-digit" } : { month: "short", day: "numeric", hour: "2-digit", minute: "2-digit" };
  return new Intl.DateTimeFormat(locale(), options).format(d);
}

export function formatAgo(iso) {
  if (!iso) return "";
  const seconds = Math.round((Date.parse(iso) - Date.now()) / 1000);
  const rtf = new Intl.RelativeTimeFormat(locale(), { numeric: "auto" });
  const abs = Math.abs(seconds);
  if (abs < 60) return rtf.format(seconds, "second");
  if (abs < 3600) return rtf.format(Math.round(seconds / 60), "minute");
  if (abs < 86400) return rtf.format(Math.round(seconds / 3600), "hour");
  return rtf.format(Math.round(seconds / 86400), "day");
}

export function formatNumber(n) {
  return new Intl.NumberFormat(locale()).format(n);
}
