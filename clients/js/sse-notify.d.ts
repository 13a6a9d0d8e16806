// Types of the sse-notify browser client (CLIENT.md v1).

/** A notification as the service sends it (the SSE `data` of `event: notification`). */
export interface Notification {
  id: string;
  member_id: string;
  type: string;
  content: unknown;
  /** Epoch milliseconds. */
  time: number;
  [field: string]: unknown;
}

/** A member's read state as the service reports it. */
export interface ReadState {
  read_up_to: string;
  unread: number;
  as_of: string;
}

export interface HistoryPage extends ReadState {
  notifications: Notification[];
  /** The id to pass as the same parameter for the next page; null when there is none. */
  next: string | null;
}

export type FeedState = "connecting" | "open" | "retrying" | "unauthorized" | "closed";

export interface ConnectOptions {
  /** The service's base URL; default: the page's origin. */
  url?: string;
  /** Required: keys the saved position and the tab group. */
  member: string;
  /** Called for every (re)connection and request; omitted = cookie or gateway auth. */
  token?: () => string | Promise<string>;
  /** One connection per browser for this member across tabs (default true). */
  share?: boolean;
  /** Where the last id is kept (default localStorage); null = keep nothing. */
  storage?: Pick<Storage, "getItem" | "setItem"> | null;
  /** Log what happens to the console. */
  debug?: boolean;
}

export interface FeedEvents {
  notification: Notification;
  unread: { unread: number; read_up_to: string };
  reset: void;
  state: FeedState;
}

/** An `Error` from a request: `status` is the HTTP status, or 0 when the network failed. */
export interface FeedError extends Error {
  status: number;
}

export interface Feed {
  /** Adds a listener; returns a function that removes it. */
  on<K extends keyof FeedEvents>(event: K, listener: (value: FeedEvents[K]) => void): () => void;
  /** The current unread count. */
  readonly unread: number;
  readonly state: FeedState;
  /** Marks read up to `id` (default: what the badge counts: the newest id this tab has received, or the
   * position the service counted at, whichever is later; never `all`). */
  markRead(id?: string): Promise<ReadState>;
  /** A page of history: `before` (newest first, "" = the newest) or `after` (oldest first). */
  history(page?: { before?: string; after?: string; limit?: number }): Promise<HistoryPage>;
  /** Connects now: after `unauthorized`, or to skip a backoff wait. */
  reconnect(): void;
  /** Final for this feed; the last tab closing ends the shared stream. */
  close(): void;
}

export function connect(options: ConnectOptions): Feed;
