// The browser client (clients/js/sse-notify.js, CLIENT.md) in a real headless Chromium, imported
// from the service (GET /client/sse-notify.js) by pages on another origin.
import assert from "node:assert/strict";
import { test } from "node:test";

import { publish, servers, startService, token, until } from "./support.mjs";

const shared = servers();

const service = () => startService({ redisUrl: shared.redis.url, env: { CORS_ORIGINS: shared.pages.origin } });

async function openStreams(svc) {
  const text = await (await fetch(`${svc.url}/metrics`)).text();
  return Number(/^sse_notify_open_streams (\d+)/m.exec(text)?.[1] ?? 0);
}

/**
 * A tab running the client for `member`. `tokens` (optional) mints the token each call asks for
 * and counts the calls; every request URL the tab makes is recorded.
 */
async function openTab(context, svc, member, { tokens, share = true } = {}) {
  const page = await context.newPage();
  const urls = [];
  page.on("request", (request) => urls.push(request.url()));
  if (tokens) await page.exposeFunction("mintToken", () => tokens.mint());
  await page.goto(`${shared.pages.origin}/client.html`);
  await page.evaluate(
    async ({ url, member, useToken, share }) => {
      const { connect } = await import(`${url}/client/sse-notify.js`);
      window.log = { ids: [], unread: [], states: [], resets: 0 };
      const feed = connect({ url, member, share, token: useToken ? () => window.mintToken() : undefined });
      feed.on("notification", (n) => window.log.ids.push(n.id));
      feed.on("unread", (u) => window.log.unread.push(u.unread));
      feed.on("state", (s) => window.log.states.push(s));
      feed.on("reset", () => (window.log.resets += 1));
      window.feed = feed;
    },
    { url: svc.url, member, useToken: Boolean(tokens), share },
  );
  return { page, urls, log: () => page.evaluate(() => window.log) };
}

/** Mints tokens for `member` valid `ttl` seconds (or bad ones), counting the calls. */
function minter(member, { ttl = 3600, bad = false } = {}) {
  return {
    calls: 0,
    mint() {
      this.calls += 1;
      return bad ? "not-a-token" : token(member, ttl);
    },
  };
}

test("three tabs share one stream and each shows every notification once, in order", async () => {
  const svc = await service();
  const context = await shared.browser.newContext();
  const tabs = [];
  for (let i = 0; i < 3; i++) tabs.push(await openTab(context, svc, "tabs", { tokens: minter("tabs") }));
  await until(async () => (await Promise.all(tabs.map((t) => t.log()))).every((l) => l.states.includes("open")), "every tab open");
  assert.equal(await openStreams(svc), 1, "one stream for the three tabs");
  const ids = [];
  for (let i = 0; i < 10; i++) ids.push(await publish(svc, "tabs", { i }));
  for (const tab of tabs) {
    await until(async () => (await tab.log()).ids.length >= ids.length, "every id in every tab");
    assert.deepEqual((await tab.log()).ids, ids);
  }
  // Closing the leader mid-burst: another tab takes the stream; nothing lost or doubled.
  const burst = (async () => {
    for (let i = 0; i < 20; i++) {
      ids.push(await publish(svc, "tabs", { burst: i }));
      await new Promise((r) => setTimeout(r, 25));
    }
  })();
  await new Promise((r) => setTimeout(r, 150));
  const leader = tabs.shift(); // the first tab to ask holds the lock
  await leader.page.close();
  await burst;
  for (const tab of tabs) {
    await until(async () => (await tab.log()).ids.length >= ids.length, "the burst in the remaining tabs", 10000);
    assert.deepEqual((await tab.log()).ids, ids, "nothing lost, nothing doubled");
  }
  await until(async () => (await openStreams(svc)) === 1, "one stream again");
  await context.close();
  await svc.stop();
});

test("a token that expires every 3 s loses nothing and never appears in a URL", async () => {
  const svc = await service();
  const context = await shared.browser.newContext();
  const tokens = minter("short", { ttl: 3 });
  const tab = await openTab(context, svc, "short", { tokens, share: false });
  await until(async () => (await tab.log()).states.includes("open"), "open");
  const ids = [];
  const end = Date.now() + 8000;
  while (Date.now() < end) {
    ids.push(await publish(svc, "short", { at: Date.now() }));
    await new Promise((r) => setTimeout(r, 200));
  }
  await until(async () => (await tab.log()).ids.length >= ids.length, "every notification across token expiries", 15000);
  assert.deepEqual((await tab.log()).ids, ids);
  assert.ok(tokens.calls >= 3, `a fresh token per connection (${tokens.calls} calls)`);
  assert.ok(tab.urls.every((u) => !u.includes("access_token") && !u.includes("eyJ")), tab.urls.join("\n"));
  await context.close();
  await svc.stop();
});

test("a bad token ends in unauthorized after exactly two token calls", async () => {
  const svc = await service();
  const context = await shared.browser.newContext();
  const tokens = minter("bad", { bad: true });
  const tab = await openTab(context, svc, "bad", { tokens, share: false });
  await until(async () => (await tab.log()).states.includes("unauthorized"), "unauthorized");
  await new Promise((r) => setTimeout(r, 1500)); // no retries behind our back
  assert.equal(tokens.calls, 2);
  await context.close();
  await svc.stop();
});

test("the badge follows a mark-read from another tab and from a backend", async () => {
  const svc = await service();
  const context = await shared.browser.newContext();
  const tabs = [await openTab(context, svc, "badge2", { tokens: minter("badge2") }), await openTab(context, svc, "badge2", { tokens: minter("badge2") })];
  await until(async () => (await Promise.all(tabs.map((t) => t.log()))).every((l) => l.states.includes("open")), "tabs open");
  for (let i = 0; i < 4; i++) await publish(svc, "badge2", { i });
  const unread = () => Promise.all(tabs.map((t) => t.page.evaluate(() => window.feed.unread)));
  await until(async () => (await unread()).every((u) => u === 4), "4 unread everywhere");
  await tabs[1].page.evaluate(() => window.feed.markRead());
  await until(async () => (await unread()).every((u) => u === 0), "cleared everywhere");
  const id = await publish(svc, "badge2", { more: 1 });
  await publish(svc, "badge2", { more: 2 });
  await until(async () => (await unread()).every((u) => u === 2), "2 unread everywhere");
  const response = await fetch(`${svc.url}/notifications/read`, {
    method: "POST",
    headers: { authorization: "Bearer browser-test-publish", "content-type": "application/json" },
    body: JSON.stringify({ member_id: "badge2", up_to: id }),
  });
  assert.equal(response.status, 200);
  await until(async () => (await unread()).every((u) => u === 1), "a backend's mark-read reaches every tab");
  await context.close();
  await svc.stop();
});

test("without Web Locks and BroadcastChannel each tab connects on its own and works the same", async () => {
  const svc = await service();
  const context = await shared.browser.newContext();
  await context.addInitScript(() => {
    delete Navigator.prototype.locks;
    delete window.BroadcastChannel;
  });
  const tabs = [];
  for (let i = 0; i < 2; i++) tabs.push(await openTab(context, svc, "solo", { tokens: minter("solo") }));
  await until(async () => (await Promise.all(tabs.map((t) => t.log()))).every((l) => l.states.includes("open")), "tabs open");
  assert.equal(await openStreams(svc), 2, "a stream per tab");
  const ids = [];
  for (let i = 0; i < 5; i++) ids.push(await publish(svc, "solo", { i }));
  for (const tab of tabs) {
    await until(async () => (await tab.log()).ids.length >= ids.length, "every id");
    assert.deepEqual((await tab.log()).ids, ids);
  }
  await context.close();
  await svc.stop();
});

test("a reload resumes where the page left off, and a crashed service is survived", async () => {
  const svc = await service();
  const context = await shared.browser.newContext();
  const tab = await openTab(context, svc, "reload", { tokens: minter("reload") });
  await until(async () => (await tab.log()).states.includes("open"), "open");
  const ids = [await publish(svc, "reload", { before: 1 })];
  await until(async () => (await tab.log()).ids.length === 1, "the first one");
  // Published while the page is away (its feed closed, then the page reloaded): the reloaded
  // page resumes from the saved id and shows exactly what it missed.
  await tab.page.evaluate(() => window.feed.close());
  ids.push(await publish(svc, "reload", { during: 1 }));
  await tab.page.close();
  const again = await openTab(context, svc, "reload", { tokens: minter("reload") });
  await until(async () => (await again.log()).ids.length >= 1, "the missed one after the reload");
  assert.deepEqual((await again.log()).ids, [ids[1]], "nothing shown twice, nothing missed");

  // kill -9 and a restart on the same port: the client reconnects by itself and catches up.
  await svc.kill();
  const missed = await (async () => {
    const other = await startService({ redisUrl: shared.redis.url, env: { CORS_ORIGINS: shared.pages.origin } });
    const id = await publish(other, "reload", { while: "down" });
    await other.stop();
    return id;
  })();
  const restarted = await startService({ redisUrl: shared.redis.url, port: svc.port, env: { CORS_ORIGINS: shared.pages.origin } });
  const last = await publish(restarted, "reload", { after: "restart" });
  await until(async () => (await again.log()).ids.length >= 3, "caught up after the restart", 40000);
  assert.deepEqual((await again.log()).ids, [ids[1], missed, last]);
  await context.close();
  await restarted.stop();
});

test("reset fires when the service says recovered: false", async () => {
  const svc = await service();
  const context = await shared.browser.newContext();
  // A position from long ago (before this Redis's history began): something may be missing.
  await context.addInitScript(({ key }) => localStorage.setItem(key, "1-0"), { key: `sse-notify:${svc.url}:gone:last` });
  const tab = await openTab(context, svc, "gone", { tokens: minter("gone") });
  await until(async () => (await tab.log()).resets === 1, "a reset");
  await context.close();
  await svc.stop();
});
