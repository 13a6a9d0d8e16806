// sse-notify browser client (CLIENT.md v1): every notification once per tab, in order, across
// reloads, reconnects and tabs; tokens in headers; an exact unread badge. No dependencies.

const MAX_WAIT = 30000; // backoff cap, ms
const DEAD_AFTER = 45000; // no bytes for this long: three missed heartbeats
const MAX_RECEIVED = 1000; // ids counted on top of the service's count; beyond, ask it anew

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

/** `promise`, or a status-0 failure after `DEAD_AFTER` (a token function that never answers). */
function within(promise, what) {
  let timer;
  const late = new Promise((_, reject) => (timer = setTimeout(() => reject(failure(0, what + " timed out")), DEAD_AFTER)));
  return Promise.race([promise, late]).finally(() => clearTimeout(timer));
}

/** sessionStorage (the tab's own, kept across its reloads), or null where it cannot be read. */
function tabStorage() {
  try {
    return globalThis.sessionStorage ?? null;
  } catch {
    return null;
  }
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
    this.tab = storage === null ? null : tabStorage();
    this.debug = debug;
    this.key = `sse-notify:${this.base}:${this.member}:last`;
    this.listeners = {};
    this.state = "connecting";
    this.unread = 0;
    this.known = false; // whether the service's count has been received
    this.told = false; // whether `unread` has been emitted
    this.read = { read_up_to: "0-0", unread: 0, as_of: "0-0" };
    this.received = []; // ids shown after the read state's floor, counted on top of it
    // The tab's position: the newest id it has shown (nothing at or before it again), or where its
    // first stream began. A reloaded tab starts from its own (sessionStorage), a new page from the
    // browser's (storage). "0-0" means the member had nothing then (`empty`: what appears later
    // is caught up from history).
    this.shown = this.load(this.tab) ?? this.load(this.storage);
    this.empty = this.shown === "0-0";
    if (this.empty) this.shown = null;
    this.queue = null; // notifications held back while a catch-up runs
    this.closed = false;
    this.failures = 0;
    this.retryMs = 1000;
    const canShare = share && globalThis.navigator?.locks && globalThis.BroadcastChannel;
    this.leader = !canShare;
    // Visible again, restored from the back/forward cache: reconnect at once unless open. Back
    // online: the stream's tab reconnects even if open, as the network under it has changed.
    // Never behind an `unauthorized`: only reconnect() ends that.
    const waiting = () => this.state !== "unauthorized";
    this.wake = () => this.state !== "open" && waiting() && this.reconnect();
    this.onOnline = () => this.leader && waiting() && this.reconnect();
    this.onVisible = () => document.visibilityState === "visible" && this.wake();
    this.onShow = (e) => e.persisted && this.wake();
    globalThis.addEventListener?.("online", this.onOnline);
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

  load(storage) {
    try {
      return storage?.getItem(this.key) ?? null;
    } catch {
      return null;
    }
  }

  keep(storage, id) {
    try {
      storage?.setItem(this.key, id);
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

  /**
   * Takes a read state unless it is older than the one held. A position further back with a newer
   * count is newer: the position expired (a retention window without a move) or Redis lost it;
   * `force` takes it after a `recovered: false`.
   */
  takeRead(state, force = false) {
    const held = this.read;
    if (!force && after(held.read_up_to, state.read_up_to) && !after(state.as_of, held.as_of)) return;
    this.read = { read_up_to: state.read_up_to, unread: state.unread, as_of: state.as_of };
    this.known = true;
    this.count();
  }

  count() {
    const floor = later(this.read.as_of, this.read.read_up_to);
    this.received = this.received.filter((id) => after(id, floor));
    const unread = this.read.unread + this.received.length;
    if (!this.known || (this.told && unread === this.unread)) return;
    this.told = true;
    this.unread = unread;
    this.emit("unread", { unread, read_up_to: this.read.read_up_to });
  }

  /** Takes the service's exact count anew, so `received` (ids after its `as_of`) stays bounded. */
  recount() {
    if (this.recounting) return;
    this.recounting = this.request("/notifications/unread")
      .then((state) => this.takeRead(state), (error) => this.log("cannot recount", error))
      .finally(() => (this.recounting = null));
  }

  // --- what every tab shows --------------------------------------------------------------

  show(notification, id) {
    if (this.closed || (this.shown && !after(id, this.shown))) return false; // shown already
    this.shown = id;
    this.keep(this.tab, id);
    if (after(id, later(this.read.as_of, this.read.read_up_to)) && !this.received.includes(id)) this.received.push(id);
    this.emit("notification", notification);
    this.count();
    if (this.received.length > MAX_RECEIVED) this.recount();
    return true;
  }

  /** Shows a notification from the stream or a relay, unless a catch-up holds them back. */
  deliver(notification, id) {
    if (this.queue) this.queue.push([notification, id]);
    else this.pass(notification, id);
  }

  /** Shows a notification; the leader then relays it, and saves its id once the others have it. */
  pass(notification, id) {
    if (this.show(notification, id) && this.leader) {
      this.tell({ kind: "notification", notification, id });
      this.keep(this.storage, id);
    }
  }

  /** The tab's position is `id` without a notification (where a stream or a catch-up began). */
  mark(id) {
    if (this.shown && !after(id, this.shown)) return;
    this.shown = id;
    this.keep(this.tab, id);
    if (this.leader) this.keep(this.storage, id);
  }

  /**
   * A fresh stream began at `as_of`: the tab's position from now on. If the member had nothing
   * when the tab last connected (`empty`), what was published since, up to `as_of`, is caught
   * up from history first.
   */
  begin(asOf) {
    if (this.empty && asOf !== "0-0") return this.fill("", asOf);
    if (asOf === "0-0") {
      this.empty = true;
      this.keep(this.tab, asOf);
      if (this.leader) this.keep(this.storage, asOf);
    } else this.mark(asOf);
    this.tell({ kind: "position", shown: this.shown, empty: this.empty });
  }

  /**
   * Shows what history holds after `from` up to `target` before anything the stream or the
   * leader sends meanwhile (held in `queue`); a second gap while one is filled widens it. Three
   * failures in a row give up with a `reset`: the app reloads its state.
   */
  fill(from, target) {
    if (this.queue) return void (this.target = later(this.target, target));
    this.queue = [];
    this.target = target;
    (async () => {
      for (let attempt = 1; ; attempt++) {
        try {
          return await this.catchUp(from);
        } catch (error) {
          if (attempt === 3 || this.closed) throw error;
          from = this.shown ?? from;
          await new Promise((r) => setTimeout(r, 1000 * attempt));
        }
      }
    })()
      .catch((error) => {
        this.log("cannot catch up", error);
        this.emit("reset");
        if (this.leader) this.tell({ kind: "reset" });
      })
      .finally(() => {
        const queue = this.queue;
        this.queue = null;
        this.empty = false;
        for (const [notification, id] of queue) this.pass(notification, id);
        this.mark(this.target);
        if (this.leader) this.tell({ kind: "position", shown: this.shown, empty: false });
      });
  }

  /** Shows, oldest first, what history holds after `from` up to `target` (which may move on). */
  async catchUp(from) {
    for (;;) {
      const target = this.target;
      const page = await this.history({ after: from, limit: 1000 });
      for (const notification of page.notifications) {
        if (after(notification.id, this.target)) return;
        this.pass(notification, notification.id);
        from = notification.id;
      }
      if (!page.next && target === this.target) return;
    }
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
    const { kind } = message;
    if (this.leader) {
      if (kind === "hello") {
        const { state, read, received, known, shown, empty } = this;
        this.tell({ kind: "snapshot", state, read, received, known, shown, empty });
      } else if (kind === "reconnect") this.reconnect();
      return; // only the leader's stream speaks
    }
    if (kind === "notification") this.deliver(message.notification, message.id);
    else if (kind === "read") this.takeRead(message.read, message.force);
    else if (kind === "reset") this.emit("reset");
    else if (kind === "state") this.setState(message.state);
    else if (kind === "position" || kind === "snapshot") {
      // A tab with no position yet starts where the stream it joins is; one behind it (a reload
      // while another tab held the stream) first catches up from history.
      if (!this.shown) [this.shown, this.empty] = [message.shown, message.empty];
      else if (message.shown && after(message.shown, this.shown)) this.fill(this.shown, message.shown);
      if (kind === "position") return;
      this.setState(message.state);
      this.received = [...new Set([...message.received, ...this.received])];
      if (message.known) this.takeRead(message.read);
      else this.count();
    }
  }

  // --- the stream (the leader's, or every tab's without sharing) --------------------------

  async headers(extra = {}) {
    const headers = { ...extra };
    if (this.token) headers.authorization = "Bearer " + (await within(this.token(), "token()"));
    return headers;
  }

  async run() {
    let unauthorized = 0;
    while (!this.closed && this.leader) {
      this.setState(this.failures ? "retrying" : "connecting");
      this.opened = false;
      this.now = false;
      const abort = (this.abort = new AbortController());
      // No bytes for DEAD_AFTER, from the request on: a dead connection.
      this.watch = () => {
        clearTimeout(this.dead);
        this.dead = setTimeout(() => abort.abort(), DEAD_AFTER);
      };
      try {
        const last = this.shown; // the tab's own: the saved one may be another tab's, further on
        const headers = await this.headers({ accept: "text/event-stream" });
        if (abort.signal.aborted || this.closed || !this.leader) continue;
        if (last) headers["last-event-id"] = last;
        this.watch();
        const response = await fetch(this.base + "/notification/subscribe", {
          headers,
          credentials: this.token ? "same-origin" : "include",
          cache: "no-store",
          signal: abort.signal,
        });
        if (response.status === 401) {
          if (++unauthorized < 2) continue; // once more, with a fresh token
          clearTimeout(this.dead);
          this.setState("unauthorized");
          await new Promise((resume) => (this.resume = resume));
          unauthorized = 0;
          continue;
        }
        unauthorized = 0;
        if (response.status === 400 && last) {
          // A position the service cannot read (a corrupted saved id): start afresh, and say so.
          this.log("position refused", last);
          [this.shown, this.empty] = [null, false];
          this.emit("reset");
          this.tell({ kind: "reset" });
          continue;
        }
        if (!response.ok) throw failure(response.status, `subscribe answered ${response.status}`);
        await this.consume(response.body);
      } catch (error) {
        this.log("stream ended", error);
      } finally {
        clearTimeout(this.dead);
      }
      if (this.closed || !this.leader) break;
      // A stream that opened and ended (token exp, a drain) comes back after its `retry:`;
      // failures in a row wait longer, with full jitter, up to 30 s.
      this.failures = this.opened ? 0 : this.failures + 1;
      if (this.now) continue; // reconnect(): at once
      const base = Math.max(this.retryMs, 1000);
      const wait = this.failures <= 1 ? this.retryMs : Math.random() * Math.min(MAX_WAIT, base * 2 ** (this.failures - 1));
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
        this.takeRead(data, !data.recovered);
        this.tell({ kind: "read", read: this.read, force: !data.recovered });
        if (!this.shown) this.begin(data.as_of);
      } else if (e.event === "read") {
        this.takeRead(JSON.parse(e.data));
        this.tell({ kind: "read", read: this.read });
      } else if (e.event === "notification" && e.id) {
        this.deliver(JSON.parse(e.data), e.id);
      }
    });
    for (;;) {
      const { value, done } = await reader.read();
      if (done) return;
      this.watch();
      feed(value);
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
          signal: AbortSignal.timeout?.(DEAD_AFTER),
        });
      } catch (error) {
        throw error.status === undefined ? failure(0, String(error)) : error;
      }
      if (response.status === 401 && attempt === 0) continue; // once more, with a fresh token
      if (!response.ok) throw failure(response.status, `${path} answered ${response.status}`);
      return response.json();
    }
  }

  async markRead(id) {
    // No id: up to what the badge counts (the newest shown, or the service's count's `as_of`).
    const counted = this.known && this.read.as_of !== "0-0" ? this.read.as_of : null;
    const up_to = id ?? (this.shown && counted ? later(this.shown, counted) : this.shown ?? counted);
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
    globalThis.removeEventListener?.("online", this.onOnline);
    globalThis.removeEventListener?.("pageshow", this.onShow);
    globalThis.document?.removeEventListener("visibilitychange", this.onVisible);
    this.setState("closed");
  }
}

/** Opens a member's feed (CLIENT.md). */
export function connect(options) {
  return new Feed(options);
}
