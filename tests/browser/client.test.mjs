// The browser client (CLIENT.md; its build clients/js/dist/sse-notify.js) in a real headless Chromium, imported
// from the service (GET /client/sse-notify.js) by pages on another origin. The whole suite runs
// twice: with tabs sharing one stream (Web Locks, BroadcastChannel), and with those APIs removed,
// where every tab connects on its own and must behave the same.
import assert from "node:assert/strict";
import { describe, test } from "node:test";

import { publish as publishAs, servers, startRedis, startService, startStallingProxy, token, until } from "./support.mjs";

const shared = servers();

const service = (env = {}) => startService({ redisUrl: shared.redis.url, env: { CORS_ORIGINS: shared.pages.origin, ...env } });

async function openStreams(svc) {
  const text = await (await fetch(`${svc.url}/metrics`)).text();
  return Number(/^sse_notify_open_streams (\d+)/m.exec(text)?.[1] ?? 0);
}

const sleep = (ms) => new Promise((r) => setTimeout(r, ms));


const modes = [
  { name: "tabs sharing one stream", sharing: true },
  { name: "a stream per tab (no Web Locks, no BroadcastChannel)", sharing: false },
];

for (const mode of modes) {
  describe(mode.name, () => {
    // Each mode has its own members: the suites share one Redis.
    const memberId = (name) => `${name}-${mode.sharing ? "shared" : "solo"}`;
    const publish = (svc, member, content) => publishAs(svc, memberId(member), content);

    /** Mints tokens for `member` valid `ttl` seconds (or bad ones), counting the calls. */
    function minter(member, { ttl = 3600, bad = false, delayMs = 0 } = {}) {
      return {
        calls: 0,
        async mint() {
          this.calls += 1;
          if (delayMs) await sleep(delayMs);
          return bad ? "not-a-token" : token(memberId(member), ttl);
        },
      };
    }

    /** A browser context (one profile: tabs of it share storage, locks and channels). */
    async function browserContext() {
      const context = await shared.browser.newContext();
      if (!mode.sharing) {
        await context.addInitScript(() => {
          delete Navigator.prototype.locks;
          delete window.BroadcastChannel;
        });
      }
      return context;
    }

    /** The streams `tabs` tabs of one member hold: one shared, or one each. */
    const streamsFor = (tabs) => (mode.sharing ? 1 : tabs);

    /**
     * A tab running the client for `member` against `url`. `tokens` (optional) mints the token
     * each call asks for and counts the calls; every request URL the tab makes is recorded.
     */
    async function openTab(context, url, member, { tokens, share = true } = {}) {
      const page = await context.newPage();
      const urls = [];
      page.on("request", (request) => urls.push(request.url()));
      if (tokens) await page.exposeFunction("mintToken", () => tokens.mint());
      await page.goto(`${shared.pages.origin}/client.html`);
      await start(page, url, member, { tokens, share });
      return {
        page,
        urls,
        log: () => page.evaluate(() => window.log),
        /** Reloads the page and starts the client again, as an app does on load. */
        reopen: async () => {
          await page.reload();
          await start(page, url, member, { tokens, share });
        },
      };
    }

    async function start(page, url, member, { tokens, share }) {
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
        { url, member: memberId(member), useToken: Boolean(tokens), share },
      );
    }

    /** `count` tabs of `member`, each minting its own tokens. */
    async function openTabs(context, url, member, count) {
      const tabs = [];
      for (let i = 0; i < count; i++) tabs.push(await openTab(context, url, member, { tokens: minter(member) }));
      return tabs;
    }

    /** Every tab's badge. */
    const unreadIn = (tabs) => Promise.all(tabs.map((t) => t.page.evaluate(() => window.feed.unread)));

    const allOpen = (tabs) => until(async () => (await Promise.all(tabs.map((t) => t.page.evaluate(() => window.feed.state)))).every((s) => s === "open"), "every tab open");

    /** Waits until every tab has shown `ids`, then checks it showed exactly those, in order. */
    async function everyTabShows(tabs, ids, what, ms = 15000) {
      for (const tab of tabs) {
        await until(async () => (await tab.log()).ids.length >= ids.length, what, ms);
        assert.deepEqual((await tab.log()).ids, ids, `${what}: nothing lost, nothing doubled, in order`);
      }
    }

    test("three tabs each show every notification once, in order, also when the leader closes mid-burst", async (t) => {
      const svc = await service();
      const context = await browserContext();
      const tabs = await openTabs(context, svc.url, "tabs", 3);
      await allOpen(tabs);
      assert.equal(await openStreams(svc), streamsFor(3));
      const ids = [];
      for (let i = 0; i < 10; i++) ids.push(await publish(svc, "tabs", { i }));
      await everyTabShows(tabs, ids, "every id in every tab");

      // Close the first tab (the leader: it asked for the lock first) during a burst.
      const burst = (async () => {
        for (let i = 0; i < 20; i++) {
          ids.push(await publish(svc, "tabs", { burst: i }));
          await sleep(25);
        }
      })();
      await sleep(150);
      const closedAt = Date.now();
      await tabs.shift().page.close();
      if (mode.sharing) {
        await until(async () => (await Promise.all(tabs.map((tab) => tab.page.evaluate(() => window.feed.leader)))).some(Boolean), "a new leader");
        t.diagnostic(`a new leader ${Date.now() - closedAt} ms after the close`);
      }
      await burst;
      await everyTabShows(tabs, ids, "the burst in the remaining tabs");
      await until(async () => (await openStreams(svc)) === streamsFor(2), "the remaining tabs' streams");
      await context.close();
      await svc.stop();
    });

    test("a token that expires every 3 s loses nothing and never appears in a URL", async () => {
      const svc = await service();
      const context = await browserContext();
      const tokens = minter("short", { ttl: 3 });
      const tabs = [await openTab(context, svc.url, "short", { tokens }), await openTab(context, svc.url, "short", { tokens })];
      await allOpen(tabs);
      const ids = [];
      const end = Date.now() + 8000;
      while (Date.now() < end) {
        ids.push(await publish(svc, "short", { at: Date.now() }));
        await sleep(200);
      }
      await everyTabShows(tabs, ids, "every notification across token expiries");
      assert.ok(tokens.calls >= 3 * streamsFor(2), `a fresh token per connection (${tokens.calls} calls)`);
      for (const tab of tabs) assert.ok(tab.urls.every((u) => !u.includes("access_token") && !u.includes("eyJ")), tab.urls.join("\n"));
      await context.close();
      await svc.stop();
    });

    test("a bad token ends in unauthorized after exactly two token calls, until reconnect()", async () => {
      const svc = await service();
      const context = await browserContext();
      const tokens = minter("bad", { bad: true });
      const tab = await openTab(context, svc.url, "bad", { tokens });
      await until(async () => (await tab.log()).states.includes("unauthorized"), "unauthorized");
      await sleep(1500); // no retries behind our back, not even on a wake-up
      await tab.page.evaluate(() => {
        document.dispatchEvent(new Event("visibilitychange"));
        window.dispatchEvent(new PageTransitionEvent("pageshow", { persisted: true }));
        window.dispatchEvent(new Event("online"));
      });
      await sleep(500);
      assert.equal(tokens.calls, 2);
      await tab.page.evaluate(() => window.feed.reconnect());
      await until(async () => tokens.calls === 4 && (await tab.log()).states.filter((s) => s === "unauthorized").length === 2, "two more calls after reconnect()");
      await context.close();
      await svc.stop();
    });

    test("the badge follows a mark-read from another tab and from a backend", async () => {
      const svc = await service();
      const context = await browserContext();
      const tabs = await openTabs(context, svc.url, "badge2", 2);
      await allOpen(tabs);
      for (let i = 0; i < 4; i++) await publish(svc, "badge2", { i });
      const unread = () => unreadIn(tabs);
      await until(async () => (await unread()).every((u) => u === 4), "4 unread everywhere");
      await tabs[1].page.evaluate(() => window.feed.markRead());
      await until(async () => (await unread()).every((u) => u === 0), "cleared everywhere");
      const id = await publish(svc, "badge2", { more: 1 });
      await publish(svc, "badge2", { more: 2 });
      await until(async () => (await unread()).every((u) => u === 2), "2 unread everywhere");
      const response = await fetch(`${svc.url}/notifications/read`, {
        method: "POST",
        headers: { authorization: "Bearer browser-test-publish", "content-type": "application/json" },
        body: JSON.stringify({ member_id: memberId("badge2"), up_to: id }),
      });
      assert.equal(response.status, 200);
      await until(async () => (await unread()).every((u) => u === 1), "a backend's mark-read reaches every tab");
      // A new tab knows the count from the service, not from what it saw; markRead() there
      // clears what its badge counts, though the tab has received nothing itself.
      tabs.push(await openTab(context, svc.url, "badge2", { tokens: minter("badge2"), share: false }));
      await until(async () => (await unread()).every((u) => u === 1), "the new tab counts 1");
      await tabs[2].page.evaluate(() => window.feed.markRead());
      await until(async () => (await unread()).every((u) => u === 0), "the new tab's mark-read clears every tab");
      await context.close();
      await svc.stop();
    });

    test("the badge stays exact past a thousand notifications without a read move, holding at most a thousand ids", async () => {
      const svc = await service();
      const context = await browserContext();
      const tabs = await openTabs(context, svc.url, "many", 2);
      await allOpen(tabs);
      const total = 1100;
      for (let i = 0; i < total; i++) await publish(svc, "many", { i });
      for (const tab of tabs) {
        await until(async () => (await tab.log()).ids.length === total, "every notification", 30000);
        await until(() => tab.page.evaluate((total) => window.feed.unread === total && window.feed.received.length <= 1000, total), "an exact badge with a bounded id list");
      }
      await context.close();
      await svc.stop();
    });

    test("a reload resumes where the page left off, and a crashed service is survived", async () => {
      const svc = await service();
      const context = await browserContext();
      const tab = await openTab(context, svc.url, "reload", { tokens: minter("reload") });
      await allOpen([tab]);
      const ids = [await publish(svc, "reload", { before: 1 })];
      await until(async () => (await tab.log()).ids.length === 1, "the first one");
      // Published while the page is away (its feed closed, then the page reloaded): the reloaded
      // page resumes from the saved id and shows exactly what it missed.
      await tab.page.evaluate(() => window.feed.close());
      ids.push(await publish(svc, "reload", { during: 1 }));
      await tab.page.close();
      const again = await openTab(context, svc.url, "reload", { tokens: minter("reload") });
      await until(async () => (await again.log()).ids.length >= 1, "the missed one after the reload");
      assert.deepEqual((await again.log()).ids, [ids[1]], "nothing shown twice, nothing missed");

      // kill -9 and a restart on the same port: the client reconnects by itself and catches up.
      await svc.kill();
      const missed = await (async () => {
        const other = await service();
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

    test("reset fires in every tab when the service says recovered: false", async () => {
      // Redis loses what it had acknowledged (here: FLUSHALL; in life, a restart without
      // persistence or a failover to a lagging replica): positions from before are not recovered.
      const redis = await startRedis();
      const svc = await startService({ redisUrl: redis.url, env: { CORS_ORIGINS: shared.pages.origin } });
      const context = await browserContext();
      const tabs = await openTabs(context, svc.url, "gone", 2);
      await allOpen(tabs);
      await everyTabShows(tabs, [await publish(svc, "gone", { before: "the loss" })], "before the loss");
      await tabs[0].page.evaluate(() => window.feed.markRead());
      await until(async () => (await unreadIn(tabs)).every((u) => u === 0), "read before the loss");
      await svc.kill();
      await redis.command("FLUSHALL");
      const restarted = await startService({ redisUrl: redis.url, port: svc.port, env: { CORS_ORIGINS: shared.pages.origin } });
      await until(async () => (await Promise.all(tabs.map((t) => t.log()))).every((l) => l.resets === 1), "a reset in every tab", 20000);
      await allOpen(tabs);
      // The read position went back with the loss (0-0): the badge follows it, not the old one.
      for (let i = 0; i < 2; i++) await publish(restarted, "gone", { after: i });
      await until(async () => (await unreadIn(tabs)).every((u) => u === 2), "2 unread after the loss");
      await context.close();
      await restarted.stop();
      redis.stop();
    });

    test("a tab reloaded while another holds the stream shows what was published during its reload", async () => {
      const svc = await service();
      const context = await browserContext();
      const tabs = await openTabs(context, svc.url, "reload2", 2);
      await allOpen(tabs);
      const first = await publish(svc, "reload2", { n: 1 });
      await everyTabShows(tabs, [first], "the first one");
      await tabs[1].page.evaluate(() => window.feed.close()); // the page goes away...
      const during = await publish(svc, "reload2", { n: 2 });
      await everyTabShows(tabs.slice(0, 1), [first, during], "the other tab shows it");
      await tabs[1].reopen(); // ...and comes back
      const later = await publish(svc, "reload2", { n: 3 });
      await everyTabShows(tabs.slice(1), [during, later], "the reloaded tab, from where it was");
      await context.close();
      await svc.stop();
    });

    test("a tab that takes over the stream before it showed anything loses nothing published in the handover", async () => {
      for (const prior of [true, false]) {
        // With a prior notification the fresh stream began at it; without, the member had nothing.
        const member = prior ? "handover" : "handover-empty";
        const svc = await service();
        if (prior) await publish(svc, member, { prior: true });
        const context = await browserContext();
        // The second tab joins while the first is still waiting for its token, so what it is told
        // on joining has no position yet; its own token comes late, so the handover has a gap.
        const first = await openTab(context, svc.url, member, { tokens: minter(member, { delayMs: 1000 }) });
        const second = await openTab(context, svc.url, member, { tokens: minter(member, { delayMs: 1500 }) });
        await allOpen([first, second]);
        await first.page.close();
        const id = await publish(svc, member, { during: "the handover" });
        await everyTabShows([second], [id], `the handover (${member})`);
        await context.close();
        await svc.stop();
      }
    });

    test("close() while the token is being fetched opens no stream", async () => {
      const svc = await service();
      const context = await browserContext();
      const tab = await openTab(context, svc.url, "closing", { tokens: minter("closing", { delayMs: 1000 }) });
      await tab.page.evaluate(() => window.feed.close());
      await sleep(2000); // the token came back a second ago
      assert.deepEqual((await tab.log()).states, ["closed"]);
      // Sentinel: a tab opened after it holds a stream, and it is the only one.
      const other = await openTab(context, svc.url, "closing", { tokens: minter("closing") });
      await allOpen([other]);
      assert.equal(await openStreams(svc), 1, "the closed feed opened no stream of its own");
      await context.close();
      await svc.stop();
    });

    test("a saved position the service cannot read starts afresh with a reset", async () => {
      const svc = await service();
      const context = await browserContext();
      await context.addInitScript(({ key }) => localStorage.setItem(key, "garbage"), { key: `sse-notify:${svc.url}:${memberId("garbled")}:last` });
      const tab = await openTab(context, svc.url, "garbled", { tokens: minter("garbled") });
      await allOpen([tab]);
      assert.equal((await tab.log()).resets, 1);
      const id = await publish(svc, "garbled", { n: 1 });
      await everyTabShows([tab], [id], "live after the fresh start");
      await context.close();
      await svc.stop();
    });

    test("back online, visible again, or restored from the back/forward cache: reconnects at once", async () => {
      // The service asks for a minute between reconnects, so only a wake-up brings the stream back
      // within the test's wait.
      const svc = await service({ RETRY_MS: "60000" });
      const context = await browserContext();
      const tabs = await openTabs(context, svc.url, "wake", 2);
      await allOpen(tabs);
      const ids = [];
      let current = svc;
      const wakeUps = {
        online: async () => {
          await context.setOffline(true);
          await context.setOffline(false);
        },
        // In a shared feed the follower tab wakes: it asks the leader's stream to come back.
        visible: () => Promise.all((mode.sharing ? tabs.slice(1) : tabs).map((tab) => tab.page.evaluate(() => document.dispatchEvent(new Event("visibilitychange"))))),
        pageshow: () => Promise.all((mode.sharing ? tabs.slice(1) : tabs).map((tab) => tab.page.evaluate(() => window.dispatchEvent(new PageTransitionEvent("pageshow", { persisted: true }))))),
      };
      for (const [name, wake] of Object.entries(wakeUps)) {
        await current.kill();
        current = await startService({ redisUrl: shared.redis.url, port: svc.port, env: { CORS_ORIGINS: shared.pages.origin, RETRY_MS: "60000" } });
        // Every tab, the follower included, reports the shared stream's retrying state.
        await until(async () => (await Promise.all(tabs.map((t) => t.page.evaluate(() => window.feed.state)))).every((s) => s === "retrying"), `retrying before ${name}`);
        ids.push(await publish(current, "wake", { missed: name }));
        await wake();
        await everyTabShows(tabs, ids, `caught up after ${name}`, 20000);
        await allOpen(tabs);
      }
      await context.close();
      await current.stop();
    });

    test("45 s without a byte is a dead connection: the client drops it and resumes", async () => {
      const svc = await service();
      const proxy = await startStallingProxy(`127.0.0.1:${svc.port}`);
      const context = await browserContext();
      const tabs = await openTabs(context, proxy.url, "stall", 2);
      await allOpen(tabs);
      const ids = [await publish(svc, "stall", { before: 1 })];
      await everyTabShows(tabs, ids, "before the stall");
      const before = proxy.opened();
      proxy.stall(); // the sockets stay open; the service's heartbeats no longer arrive
      ids.push(await publish(svc, "stall", { during: 1 }));
      await sleep(30000);
      assert.equal((await tabs[0].log()).ids.length, 1, "nothing arrives over the stalled socket");
      await everyTabShows(tabs, ids, "resumed after the dead connection was dropped", 40000);
      assert.ok(proxy.opened() > before, "a new connection");
      await context.close();
      await proxy.stop();
      await svc.stop();
    });
  });
}
