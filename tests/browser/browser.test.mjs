// sse-notify in a real headless Chromium: what browsers do, including the reconnect that is the
// reason the service exists. Pages come from another loopback origin than the service.
import assert from "node:assert/strict";
import fs from "node:fs";
import path from "node:path";
import { test } from "node:test";

import { JWT_SECRET, artifacts, publish, servers, startService, token, until } from "./support.mjs";

const shared = servers();

/** Two instances on one Redis that accept the page origin. */
async function twoInstances() {
  const env = { CORS_ORIGINS: shared.pages.origin };
  return [await startService({ redisUrl: shared.redis.url, env }), await startService({ redisUrl: shared.redis.url, env })];
}

/** A page on the page origin, recording the subscription requests it makes. */
async function openClient(context) {
  const page = await context.newPage();
  const requests = [];
  page.on("request", async (request) => {
    if (request.url().includes("/notification/subscribe") && request.method() === "GET") {
      // allHeaders(): the headers as sent, including those the network stack adds.
      requests.push({ url: request.url(), headers: await request.allHeaders() });
    }
  });
  await page.goto(`${shared.pages.origin}/client.html`);
  return { page, requests };
}

const received = (page) => page.evaluate(() => [...window.state.ids]);

/**
 * Waits for `expected.length` ids and asserts they are `expected`: exactly once, in order.
 * `expected` ends with a sentinel published after everything else, so nothing duplicated or
 * stray can hide behind it (per-member order); silence is never taken as proof.
 */
async function waitForIds(page, expected) {
  await until(async () => (await received(page)).length >= expected.length, `${expected.length} notifications in the page`);
  assert.deepEqual((await received(page)).slice(0, expected.length), expected);
}

/**
 * Publishes through `a`, crashes it, publishes through `b` while it is down, restarts `a` on the
 * same port and publishes through it again: the page must end with every id once, in order.
 */
async function crashAndRestart(page, member, a, b) {
  // A fresh subscription receives what is published once it is connected.
  await until(() => page.evaluate(() => window.state.connected.length === 1), "the first connected event");
  const ids = [];
  for (let i = 0; i < 3; i++) ids.push(await publish(a, member, { before: i }));
  ids.push(await publish(a, member, { sentinel: "before" }));
  await waitForIds(page, ids);
  const lastSeenBeforeCrash = ids.at(-1);

  await a.kill();
  for (let i = 0; i < 3; i++) ids.push(await publish(b, member, { during: i }));
  const restarted = await startService({ redisUrl: shared.redis.url, port: a.port, env: { CORS_ORIGINS: shared.pages.origin } });
  // The browser finds the instance back by itself, then catches up on what it missed.
  const missed = ids.length;
  await until(async () => (await received(page)).length >= missed, "the browser to reconnect and catch up", 20000);
  for (let i = 0; i < 2; i++) ids.push(await publish(restarted, member, { after: i }));
  ids.push(await publish(restarted, member, { sentinel: "after" }));
  await waitForIds(page, ids);
  return { restarted, lastSeenBeforeCrash };
}

test("native EventSource reconnects after a crash and resumes with Last-Event-ID, every id once", async () => {
  const [a, b] = await twoInstances();
  const context = await shared.browser.newContext();
  const { page, requests } = await openClient(context);
  await page.evaluate((url) => window.start({ url }), `${a.url}/notification/subscribe?access_token=${token("native")}`);

  const { restarted, lastSeenBeforeCrash } = await crashAndRestart(page, "native", a, b);
  const resumed = requests.filter((r) => r.headers["last-event-id"]);
  assert.ok(resumed.length >= 1, "the reconnect carried Last-Event-ID");
  assert.equal(resumed[0].headers["last-event-id"], lastSeenBeforeCrash);
  const connected = await page.evaluate(() => window.state.connected);
  assert.ok(connected.length >= 2 && connected.every((c) => c.recovered && c.member_id === "native"));

  await context.close();
  await restarted.stop();
  await b.stop();
});

test("event-source-polyfill with an Authorization header resumes through lastEventId", async () => {
  const [a, b] = await twoInstances();
  const context = await shared.browser.newContext();
  const { page, requests } = await openClient(context);
  await page.evaluate(
    ({ url, headers }) => window.start({ url, kind: "polyfill", headers }),
    { url: `${a.url}/notification/subscribe`, headers: { Authorization: `Bearer ${token("poly")}` } },
  );

  const { restarted, lastSeenBeforeCrash } = await crashAndRestart(page, "poly", a, b);
  assert.ok(requests.every((r) => r.headers.authorization?.startsWith("Bearer ")), "every request is authenticated by header");
  const resumed = requests.find((r) => new URL(r.url).searchParams.get("lastEventId"));
  assert.ok(resumed, "the reconnect carried lastEventId");
  assert.equal(new URL(resumed.url).searchParams.get("lastEventId"), lastSeenBeforeCrash);

  await context.close();
  await restarted.stop();
  await b.stop();
});

test("cookie auth across origins works with withCredentials, and only with it", async () => {
  const [a, b] = await twoInstances();
  await b.stop();
  const context = await shared.browser.newContext();
  // An HttpOnly cookie for the service's host, as an auth server on the same site would set it.
  await context.addCookies([{ name: "access_token", value: token("cookie"), url: a.url, httpOnly: true, sameSite: "Lax" }]);

  const withCredentials = await openClient(context);
  await withCredentials.page.evaluate((url) => window.start({ url, withCredentials: true }), `${a.url}/notification/subscribe`);
  await until(() => withCredentials.page.evaluate(() => window.state.connected.length === 1), "connected");
  const ids = [await publish(a, "cookie", { hello: "cookie" }), await publish(a, "cookie", { sentinel: true })];
  await waitForIds(withCredentials.page, ids);
  assert.match(withCredentials.requests.at(-1).headers.cookie ?? "", /access_token=/, "the cookie went along");
  assert.equal(await withCredentials.page.evaluate(() => document.cookie), "", "HttpOnly: page scripts cannot read it");

  // Without credentials the cookie stays home: 401, and a native EventSource gives up for good.
  const anonymous = await openClient(context);
  await anonymous.page.evaluate((url) => window.start({ url }), `${a.url}/notification/subscribe`);
  await until(() => anonymous.page.evaluate(() => window.state.readyState === EventSource.CLOSED), "the refused stream to close");
  assert.deepEqual(await received(anonymous.page), []);
  assert.equal(anonymous.requests.at(-1).headers.cookie, undefined, "no credentials, no cookie");

  await context.close();
  await a.stop();
});

test("the demo page renders, publishes, shows the notification and survives a restart", async () => {
  const service = await startService({ redisUrl: shared.redis.url });
  const context = await shared.browser.newContext({ viewport: { width: 1200, height: 900 } });
  const page = await context.newPage();
  const urls = [];
  page.on("request", (request) => urls.push(request.url()));
  // As scripts/dev.sh opens it: the page signs its own member tokens with the dev secret.
  await page.goto(`${service.url}/?member=demo#publish_token=browser-test-publish&dev_jwt_secret=${JWT_SECRET}`);
  await until(async () => (await page.textContent("#state")) === "open", "the demo page to connect");
  assert.equal(await page.textContent("#recovered"), "true");
  assert.match(await page.textContent("#auth-note"), /Dev token auth/);

  await page.click("#publish-form button[type=submit]");
  await until(() => page.$("#notifications li[data-id]"), "the published notification in the list");
  assert.match(await page.textContent("#notifications"), /Hello from the demo page/);
  assert.match(await page.textContent("#publish-result"), /^Published \d+-\d+$/);

  // Crash and restart on the same port: the page reconnects by itself and keeps receiving.
  await service.kill();
  const restarted = await startService({ redisUrl: shared.redis.url, port: service.port });
  const id = await publish(restarted, "demo", { text: "After the restart" });
  await until(() => page.$(`#notifications li[data-id="${id}"]`), "a notification after the restart", 20000);
  assert.equal(await page.textContent("#state"), "open");
  assert.equal(await page.textContent("#received"), "2");
  assert.ok(urls.every((u) => !u.includes("eyJ") && !u.includes("access_token")), "no token in a URL");

  // A reload shows the inbox from history, newest first, and the stream resumes quietly.
  await page.reload();
  await until(async () => (await page.$$("#notifications li[data-id]")).length === 2, "the inbox after a reload");
  const listed = await page.$$eval("#notifications li[data-id]", (items) => items.map((li) => li.dataset.id));
  assert.equal(listed[0], id, "newest first");
  await until(async () => (await page.textContent("#state")) === "open", "open after the reload");
  assert.equal(await page.textContent("#received"), "0", "nothing shown twice by the resumed stream");
  assert.equal(await page.textContent("#unread"), "2 unread");
  await page.click("#mark-all-read");
  await until(async () => (await page.textContent("#unread")) === "0 unread", "the badge cleared");
  assert.equal(await page.$$eval("#notifications li.unread", (items) => items.length), 0, "no item marked new");

  fs.mkdirSync(artifacts, { recursive: true });
  await page.screenshot({ path: path.join(artifacts, "demo-page.png"), fullPage: true });
  await context.close();
  await restarted.stop();
});

test("the demo page's unread badge follows a mark-all-read made in another tab", async () => {
  const service = await startService({ redisUrl: shared.redis.url });
  const context = await shared.browser.newContext();
  const url = `${service.url}/#token=${token("badge")}`;
  const tabs = [await context.newPage(), await context.newPage()];
  for (const tab of tabs) {
    await tab.goto(url);
    await until(async () => (await tab.textContent("#state")) === "open", "a tab to connect");
  }
  const badges = () => Promise.all(tabs.map((tab) => tab.textContent("#unread")));
  for (let i = 0; i < 3; i++) await publish(service, "badge", { n: i });
  await until(async () => (await badges()).every((b) => b === "3 unread"), "both badges at 3");

  await tabs[0].click("#mark-all-read");
  await until(async () => (await badges()).every((b) => b === "0 unread"), "both badges cleared");
  // A fresh page shows the same count: it comes from the server, not from what a tab saw.
  await publish(service, "badge", { n: 3 });
  const third = await context.newPage();
  await third.goto(url);
  await until(async () => (await third.textContent("#unread")) === "1 unread", "a new tab's badge");
  await until(async () => (await badges()).every((b) => b === "1 unread"), "the open tabs count the new one");

  fs.mkdirSync(artifacts, { recursive: true });
  await tabs[1].screenshot({ path: path.join(artifacts, "demo-badge.png") });
  await context.close();
  await service.stop();
});
