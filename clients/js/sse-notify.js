// sse-notify browser client (CLIENT.md v1): every notification once per tab, in order, across
// reloads, reconnects and tabs; tokens in headers; an exact unread badge. No dependencies.

const MAX_WAIT = 30000; // backoff cap, ms
const DEAD_AFTER = 45000; // no bytes for this long: three missed heartbeats

/** Stream ids compare as (ms, seq). */
function after(a, b) {
  const [am, as] = a.split("-").map(BigInt);
  const [bm, bs] = b.split("-").map(BigInt);
  return am > bm || (am === bm && as > bs);
}
const later = (a, b) => (after(a, b) ? a : b);

/** localStorage, or null where reading it throws (a sandboxed frame, blocked storage). */
function defaultStorage() {
  try {
    return globalThis.localStorage ?? null;
  } catch {
    return null;
  }
}

/** An Error with the HTTP status (0: the network failed). */
function failure(status, message) {
  return Object.assign(new Error(message), { status });
}

/** Incremental event-stream parser (WHATWG rules): lines end at CRLF, CR or LF. */
function parser(onEvent) {
  let buffer = "";
  let data = [];
  let event = "";
  let id = null; // the last event id persists, as in a browser
  const line = (text) => {
    if (text === "") {
      if (data.length) onEvent({ event: event || "message", data: data.join("\n"), id });
      data = [];
      event = "";
      return;
    }
    if (text[0] === ":") return;
    const at = text.indexOf(":");
    const field = at < 0 ? text : text.slice(0, at);
    let value = at < 0 ? "" : text.slice(at + 1);
    if (value[0] === " ") value = value.slice(1);
    if (field === "data") data.push(value);
    else if (field === "event") event = value;
    else if (field === "id" && !value.includes("\0")) id = value;
    else if (field === "retry" && /^\d+$/.test(value)) onEvent({ retry: Number(value) });
  };
  return (chunk) => {
    buffer += chunk;
    let start = 0;
    for (let i = 0; i < buffer.length; i++) {
      const c = buffer[i];
      if (c !== "\n" && c !== "\r") continue;
      if (c === "\r" && i + 1 === buffer.length) break; // a CRLF may be split across reads
      line(buffer.slice(start, i));
      if (c === "\r" && buffer[i + 1] === "\n") i++;
      start = i + 1;
    }
    buffer = buffer.slice(start);
  };
}

class Feed {
  constructor({ url, member, token, share = true, storage, debug = false }) {
    if (!member) throw new TypeError("connect: member is required");
    this.base = (url ?? globalThis.location?.origin ?? "").replace(/\/$/, "");
    this.member = String(member);
    this.token = token;
    this.storage = storage === undefined ? defaultStorage() : storage;
    this.debug = debug;
    this.key = `sse-notify:${this.base}:${this.member}`;
    this.listeners = {};
    this.state = "connecting";
    this.unread = 0;
    this.known = false; // whether a count has been received
    this.read = { read_up_to: "0-0", unread: 0, as_of: "0-0" };
    this.received = []; // ids shown after the read state's floor
    this.shown = this.saved(); // the newest id this tab has shown: nothing at or before it again
    this.closed = false;
    this.failures = 0;
    this.retryMs = 1000;
    const canShare = share && globalThis.navigator?.locks && globalThis.BroadcastChannel;
    this.leader = !canShare;
    // Back online, visible again, restored from the back/forward cache: reconnect at once.
    this.wake = () => this.state !== "open" && this.reconnect();
    this.onVisible = () => document.visibilityState === "visible" && this.wake();
    this.onShow = (e) => e.persisted && this.wake();
    globalThis.addEventListener?.("online", this.wake);
    globalThis.addEventListener?.("pageshow", this.onShow);
    globalThis.document?.addEventListener("visibilitychange", this.onVisible);
    if (canShare) this.join();
    else this.run();
  }

  log(...args) {
    if (this.debug) console.debug("[sse-notify]", ...args);
  }

  on(name, listener) {
    (this.listeners[name] ??= new Set()).add(listener);
    return () => this.listeners[name].delete(listener);
  }

  emit(name, value) {
    for (const listener of this.listeners[name] ?? []) {
      try {
        listener(value);
      } catch (error) {
        queueMicrotask(() => {
          throw error; // the app's error, reported as uncaught; our stream goes on
        });
      }
    }
  }

  saved() {
    try {
      return this.storage?.getItem(this.key + ":last") ?? null;
    } catch {
      return null;
    }
  }

  save(id) {
    try {
      this.storage?.setItem(this.key + ":last", id);
    } catch (error) {
      this.log("cannot save the position", error);
    }
  }

  setState(state) {
    if (state === this.state) return;
    this.state = state;
    this.log("state", state);
    this.emit("state", state);
    if (this.leader) this.tell({ kind: "state", state });
  }

  // --- the badge -------------------------------------------------------------------------

  takeRead(state) {
    if (after(this.read.read_up_to, state.read_up_to)) return; // older than what we hold
    this.read = { read_up_to: state.read_up_to, unread: state.unread, as_of: state.as_of };
    const floor = later(this.read.as_of, this.read.read_up_to);
    this.received = this.received.filter((id) => after(id, floor));
    this.count();
  }

  count() {
    const unread = this.read.unread + this.received.length;
    if (this.known && unread === this.unread) return;
    this.known = true;
    this.unread = unread;
    this.emit("unread", { unread, read_up_to: this.read.read_up_to });
  }

  // --- what every tab shows --------------------------------------------------------------

  show(notification, id) {
    if (this.shown && !after(id, this.shown)) return false; // shown already (a resume, a new leader)
    this.shown = id;
    if (after(id, later(this.read.as_of, this.read.read_up_to))) this.received.push(id);
    this.emit("notification", notification);
    this.count();
    return true;
  }

  // --- sharing one stream between tabs ---------------------------------------------------

  join() {
    this.channel = new BroadcastChannel(this.key);
    this.channel.onmessage = ({ data }) => this.hear(data);
    this.tell({ kind: "hello" });
    navigator.locks.request(this.key, () => {
      if (this.closed) return undefined;
      this.log("leading the tabs of", this.member);
      this.leader = true;
      this.run();
      return new Promise((release) => (this.release = release));
    });
  }

  tell(message) {
    this.channel?.postMessage(message);
  }

  hear(message) {
    if (this.leader) {
      if (message.kind === "hello") {
        this.tell({ kind: "snapshot", state: this.state, read: this.read, received: this.received, known: this.known });
      } else if (message.kind === "reconnect") this.reconnect();
      return; // only the leader's stream speaks
    }
    if (message.kind === "notification") this.show(message.notification, message.id);
    else if (message.kind === "read") this.takeRead(message.read);
    else if (message.kind === "reset") this.emit("reset");
    else if (message.kind === "state") this.setState(message.state);
    else if (message.kind === "snapshot") {
      this.setState(message.state);
      this.received = [...new Set([...message.received, ...this.received])];
      if (message.known) this.takeRead(message.read);
    }
  }

  // --- the stream (the leader's, or every tab's without sharing) --------------------------

  async headers(extra = {}) {
    const headers = { ...extra };
    if (this.token) headers.authorization = "Bearer " + (await this.token());
    return headers;
  }

  async run() {
    let unauthorized = 0;
    while (!this.closed && this.leader) {
      this.setState(this.failures ? "retrying" : "connecting");
      this.opened = false;
      this.now = false;
      try {
        const last = this.saved() ?? this.shown;
        const headers = await this.headers({ accept: "text/event-stream" });
        if (last) headers["last-event-id"] = last;
        this.abort = new AbortController();
        const response = await fetch(this.base + "/notification/subscribe", {
          headers,
          credentials: this.token ? "same-origin" : "include",
          cache: "no-store",
          signal: this.abort.signal,
        });
        if (response.status === 401) {
          if (++unauthorized < 2) continue; // once more, with a fresh token
          this.setState("unauthorized");
          await new Promise((resume) => (this.resume = resume));
          unauthorized = 0;
          continue;
        }
        unauthorized = 0;
        if (!response.ok) throw failure(response.status, `subscribe answered ${response.status}`);
        await this.consume(response.body);
      } catch (error) {
        this.log("stream ended", error);
      }
      if (this.closed || !this.leader) break;
      // A stream that opened and ended (token exp, a drain) comes back after its `retry:`;
      // failures in a row wait longer, with full jitter, up to 30 s.
      this.failures = this.opened ? 0 : this.failures + 1;
      if (this.now) continue; // reconnect(): at once
      const wait =
        this.failures <= 1 ? this.retryMs : Math.random() * Math.min(MAX_WAIT, this.retryMs * 2 ** (this.failures - 1));
      this.setState("retrying");
      await new Promise((done) => {
        this.resume = done;
        this.timer = setTimeout(done, wait);
      });
      clearTimeout(this.timer);
    }
  }

  /** Reads one response body until it ends; `this.opened` once `connected` arrived. */
  async consume(body) {
    const reader = body.pipeThrough(new TextDecoderStream()).getReader();
    const feed = parser((e) => {
      if (e.retry !== undefined) this.retryMs = e.retry;
      if (e.event === "connected") {
        const data = JSON.parse(e.data);
        this.opened = true;
        this.failures = 0;
        this.setState("open");
        if (!data.recovered) {
          this.emit("reset");
          this.tell({ kind: "reset" });
        }
        this.takeRead(data);
        this.tell({ kind: "read", read: this.read });
      } else if (e.event === "read") {
        this.takeRead(JSON.parse(e.data));
        this.tell({ kind: "read", read: this.read });
      } else if (e.event === "notification" && e.id) {
        const notification = JSON.parse(e.data);
        if (this.show(notification, e.id)) {
          this.tell({ kind: "notification", notification, id: e.id });
          this.save(e.id); // after the other tabs have it
        }
      }
    });
    let dead;
    const watch = () => {
      clearTimeout(dead);
      dead = setTimeout(() => this.abort?.abort(), DEAD_AFTER);
    };
    try {
      for (watch(); ; watch()) {
        const { value, done } = await reader.read();
        if (done) return;
        feed(value);
      }
    } finally {
      clearTimeout(dead);
    }
  }

  // --- requests ---------------------------------------------------------------------------

  async request(path, init = {}) {
    for (let attempt = 0; ; attempt++) {
      let response;
      try {
        response = await fetch(this.base + path, {
          ...init,
          headers: await this.headers(init.headers),
          credentials: this.token ? "same-origin" : "include",
        });
      } catch (error) {
        throw failure(0, String(error));
      }
      if (response.status === 401 && attempt === 0) continue; // once more, with a fresh token
      if (!response.ok) throw failure(response.status, `${path} answered ${response.status}`);
      return response.json();
    }
  }

  async markRead(id) {
    const up_to = id ?? this.shown;
    if (!up_to) return { ...this.read };
    const state = await this.request("/notifications/read", {
      method: "POST",
      headers: { "content-type": "application/json" },
      body: JSON.stringify({ up_to }),
    });
    this.takeRead(state);
    this.tell({ kind: "read", read: this.read });
    return state;
  }

  history({ before, after: from, limit } = {}) {
    const query = new URLSearchParams();
    if (before !== undefined) query.set("before", before ?? "");
    if (from !== undefined) query.set("after", from ?? "");
    if (limit !== undefined) query.set("limit", String(limit));
    return this.request("/notifications?" + query);
  }

  reconnect() {
    if (this.closed) return;
    if (!this.leader) return this.tell({ kind: "reconnect" }); // the leader's stream is ours
    this.now = true;
    this.failures = 0;
    this.abort?.abort(); // an open stream is replaced by a fresh one
    this.resume?.();
  }

  close() {
    this.closed = true;
    this.abort?.abort();
    this.resume?.();
    this.release?.(); // another tab takes the stream over: the others are not told "closed"
    this.channel?.close();
    this.channel = null;
    globalThis.removeEventListener?.("online", this.wake);
    globalThis.removeEventListener?.("pageshow", this.onShow);
    globalThis.document?.removeEventListener("visibilitychange", this.onVisible);
    this.setState("closed");
  }
}

/** Opens a member's feed (CLIENT.md). */
export function connect(options) {
  return new Feed(options);
}
