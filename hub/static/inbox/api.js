// The hub's REST API and its live events websocket, as the inbox uses them.

export class ApiError extends Error {
  /** ``details``: the hub's list of ``{field, message}`` for a refused body
   * (a 422), so a form can point at the field. */
  constructor(status, code, message, details = null) {
    super(message);
    this.status = status;
    this.code = code;
    this.details = Array.isArray(details) ? details : [];
  }
}

export class Api {
  constructor(token, onUnauthorized) {
    this.token = token;
    this.onUnauthorized = onUnauthorized;
  }

  async request(method, path, body) {
    const headers = { Accept: "application/json" };
    if (this.token) headers.Authorization = `Bearer ${this.token}`;
    let payload;
    if (body instanceof FormData) payload = body;
    else if (body !== undefined) {
      headers["Content-Type"] = "application/json";
      payload = JSON.stringify(body);
    }
    let response;
    try {
      response = await fetch(`/api/v1${path}`, { method, headers, body: payload });
    } catch (err) {
      throw new ApiError(0, "network", String(err.message || err));
    }
    if (response.status === 204) return null;
    const data = await response.json().catch(() => ({}));
    if (!response.ok) {
      const error = data.error || {};
      if (response.status === 401 && this.token && this.onUnauthorized) this.onUnauthorized();
      throw new ApiError(response.status, error.code || "http_error", error.message || response.statusText, error.details);
    }
    return data;
  }

  get(path) { return this.request("GET", path); }
  post(path, body = {}) { return this.request("POST", path, body); }
  put(path, body) { return this.request("PUT", path, body); }
  patch(path, body) { return this.request("PATCH", path, body); }
  del(path) { return this.request("DELETE", path); }

  upload(file) {
    const form = new FormData();
    form.append("file", file, file.name);
    return this.request("POST", "/attachments", form);
  }
}

/**
 * The live feed. Reconnects by itself with backoff and jitter. The hub sends a
 * ``hello`` frame once it has subscribed the socket to the feed: from then on
 * nothing is missed, so ``onHello()`` runs on every one (the first connect
 * included: the caller reads the list then, not before) and the caller reloads
 * what it may have missed before it. ``onEvent(frame)`` runs for every other
 * frame, ``onState(state)`` with "live" (after hello) or "reconnecting",
 * ``onUnauthorized()`` once the hub closes it because the token is no longer
 * valid (logged out elsewhere, expired): then it stops, as reconnecting with
 * that token would only be refused forever. Any other close, the hub's own
 * included (say, its pub/sub link to Redis was lost and events with it), is
 * followed by a reconnect and a catch-up. The backoff starts again only after
 * a hello: a hub that accepts the upgrade and then fails (its database or
 * Redis down) is not retried twice a second forever.
 */
export class EventsSocket {
  constructor(token, { onHello, onEvent, onState, onUnauthorized }) {
    this.token = token;
    this.onHello = onHello;
    this.onEvent = onEvent;
    this.onState = onState;
    this.onUnauthorized = onUnauthorized;
    this.backoff = 1000;
    this.connected = false;
    this.stopped = false;
    this.connect();
  }

  connect() {
    if (this.stopped) return;
    const scheme = location.protocol === "https:" ? "wss" : "ws";
    const ws = new WebSocket(`${scheme}://${location.host}/api/v1/events?token=${encodeURIComponent(this.token)}`);
    this.ws = ws;
    ws.onopen = () => {
      this.connected = true;
      clearInterval(this.pinger);
      // Proxies drop idle sockets; a ping also notices a dead one sooner.
      this.pinger = setInterval(() => this.send({ type: "ping" }), 25000);
    };
    ws.onmessage = (e) => {
      if (ws !== this.ws) return;
      let frame;
      try { frame = JSON.parse(e.data); } catch { return; }
      if (frame.type === "hello") {
        this.backoff = 1000;
        this.onState("live");
        this.onHello();
      } else this.onEvent(frame);
    };
    ws.onclose = (e) => {
      if (ws !== this.ws) return;
      clearInterval(this.pinger);
      this.connected = false;
      if (this.stopped) return;
      if (e.code === 4401) {
        this.stopped = true;
        if (this.onUnauthorized) this.onUnauthorized();
        return;
      }
      this.onState("reconnecting");
      // Jittered, so a hub's restart is not met by every inbox at the same moment.
      const delay = this.backoff * (0.5 + Math.random() * 0.5);
      this.backoff = Math.min(this.backoff * 2, 30000);
      setTimeout(() => this.connect(), delay);
    };
  }

  send(frame) {
    if (this.ws && this.ws.readyState === WebSocket.OPEN) this.ws.send(JSON.stringify(frame));
  }

  stop() {
    this.stopped = true;
    clearInterval(this.pinger);
    if (this.ws) this.ws.close();
  }
}
