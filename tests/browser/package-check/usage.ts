// Compiled (never run) against the packed and installed client: every call of the README and
// CLIENT.md must type-check, and the mistakes below must not.
import { connect, type Feed, type FeedState, type HistoryPage, type Notification, type ReadState } from "sse-notify-client";

const feed: Feed = connect({
  url: "https://notify.example.com",
  member: "42",
  token: async () => "jwt",
  share: true,
  storage: localStorage,
  debug: false,
});
connect({ member: "42" }); // cookie auth, the page's origin
connect({ member: "42", storage: null, token: () => "jwt" });

const off: () => void = feed.on("notification", (n: Notification) => console.log(n.id, n.member_id, n.type, n.content, n.time));
off();
feed.on("unread", ({ unread, read_up_to }) => console.log(unread + 1, read_up_to.length));
feed.on("reset", () => {});
feed.on("state", (s: FeedState) => s === "unauthorized");
const count: number = feed.unread;
const state: FeedState = feed.state;

async function calls() {
  const read: ReadState = await feed.markRead();
  await feed.markRead("1732700000000-0");
  const page: HistoryPage = await feed.history({ before: "", limit: 20 });
  const next: string | null = page.next;
  await feed.history({ after: next ?? "" });
  await feed.history();
  feed.reconnect();
  feed.close();
  return [read.read_up_to, read.unread, read.as_of, count, state];
}
void calls;

// @ts-expect-error member is required
connect({ url: "https://notify.example.com" });
// @ts-expect-error no such event
feed.on("message", () => {});
// @ts-expect-error the unread payload is an object
feed.on("unread", (n: number) => n);
// @ts-expect-error states are a closed set
const wrong: FeedState = "error";
void wrong;
