// Servers for the browser tests: a throwaway redis-server, sse-notify instances (the debug binary
// cargo built), a page server on another loopback origin, and headless Debian Chromium.
import { spawn } from "node:child_process";
import crypto from "node:crypto";
import fs from "node:fs";
import http from "node:http";
import net from "node:net";
import path from "node:path";
import { fileURLToPath } from "node:url";
import { after, before } from "node:test";
import { chromium } from "playwright-core";

const here = path.dirname(fileURLToPath(import.meta.url));
export const root = path.resolve(here, "../..");
export const artifacts = path.join(root, "test-artifacts");
const binary = process.env.SSE_NOTIFY_BIN ?? path.join(root, "target/debug/sse-notify");
const chromiumPath = process.env.CHROMIUM_BIN ?? "/usr/bin/chromium";

export const JWT_SECRET = "browser-test-secret";

// Every server a test starts, so a failed test cannot leave one running (and the run hanging).
const children = new Set();
function track(proc) {
  children.add(proc);
  proc.once("exit", () => children.delete(proc));
  return proc;
}
/** Kills whatever is still running. */
export function killAll() {
  for (const proc of children) proc.kill("SIGKILL");
}
process.once("exit", killAll);
export const PUBLISH_TOKEN = "browser-test-publish";

/** A loopback port free right now. */
export function freePort() {
  return new Promise((resolve, reject) => {
    const server = net.createServer();
    server.once("error", reject);
    server.listen(0, "127.0.0.1", () => {
      const { port } = server.address();
      server.close(() => resolve(port));
    });
  });
}

/** Resolves when `predicate()` is truthy, polling; rejects after `ms` with `what`. */
export async function until(predicate, what, ms = 15000) {
  const deadline = Date.now() + ms;
  for (;;) {
    const value = await predicate();
    if (value) return value;
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}`);
    await new Promise((r) => setTimeout(r, 50));
  }
}

/** A redis-server without persistence on a free port; ready when it says so. */
export async function startRedis() {
  const port = await freePort();
  const proc = track(spawn("redis-server", ["--port", String(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"], {
    stdio: ["ignore", "pipe", "inherit"],
  }));
  await new Promise((resolve, reject) => {
    let log = "";
    proc.stdout.on("data", (chunk) => {
      log += chunk;
      if (log.includes("Ready to accept connections")) resolve();
    });
    proc.once("exit", (code) => reject(new Error(`redis-server exited (${code}): ${log}`)));
  });
  proc.stdout.resume();
  /** Sends one command (RESP) and resolves with the first reply line. */
  const command = (...args) =>
    new Promise((resolve, reject) => {
      const socket = net.connect(port, "127.0.0.1");
      socket.once("error", reject);
      socket.once("data", (reply) => {
        socket.end();
        resolve(reply.toString().split("\r\n")[0]);
      });
      socket.write(`*${args.length}\r\n` + args.map((a) => `$${Buffer.byteLength(a)}\r\n${a}\r\n`).join(""));
    });
  return { url: `redis://127.0.0.1:${port}`, command, stop: () => proc.kill("SIGKILL") };
}

/** An sse-notify process in jwt mode; `port` lets a restart come back on the same address. */
export async function startService({ redisUrl, port, env = {} }) {
  port ??= await freePort();
  const proc = track(spawn(binary, [], {
    env: {
      PATH: process.env.PATH,
      LISTEN_ADDR: `127.0.0.1:${port}`,
      REDIS_URL: redisUrl,
      AUTH_MODE: "jwt",
      JWT_SECRET,
      PUBLISH_TOKEN,
      RETRY_MS: "500",
      RUST_LOG: "warn",
      ...env,
    },
    stdio: ["ignore", "inherit", "inherit"],
  }));
  const url = `http://127.0.0.1:${port}`;
  const exited = new Promise((resolve) => proc.once("exit", resolve));
  await until(async () => {
    if (proc.exitCode !== null) throw new Error(`sse-notify exited with ${proc.exitCode} (is ${binary} built?)`);
    const response = await fetch(`${url}/readyz`).catch(() => null);
    return response?.ok;
  }, `sse-notify on ${url}`);
  return {
    url,
    port,
    /** SIGKILL: a crash, no goodbye to the streams. */
    kill: async () => {
      proc.kill("SIGKILL");
      await exited;
    },
    stop: async () => {
      proc.kill("SIGTERM");
      await exited;
    },
  };
}

/** An HS256 member token, valid for an hour. */
export function token(member, ttl = 3600) {
  const encode = (value) => Buffer.from(JSON.stringify(value)).toString("base64url");
  const input = `${encode({ alg: "HS256", typ: "JWT" })}.${encode({ sub: member, exp: Math.floor(Date.now() / 1000) + ttl })}`;
  return `${input}.${crypto.createHmac("sha256", JWT_SECRET).update(input).digest("base64url")}`;
}

/** Publishes one notification through `service` and returns its id. */
export async function publish(service, member, content) {
  const response = await fetch(`${service.url}/notifications`, {
    method: "POST",
    headers: { authorization: `Bearer ${PUBLISH_TOKEN}`, "content-type": "application/json" },
    body: JSON.stringify({ member_id: member, type: "test", content }),
  });
  if (response.status !== 201) throw new Error(`publish answered ${response.status}: ${await response.text()}`);
  return (await response.json()).ids[0];
}

/**
 * Serves the test page and the polyfill from its own loopback origin, so every subscription is a
 * cross-origin request, as from a real application.
 */
export async function startPageServer() {
  const polyfill = fs.readFileSync(path.join(here, "node_modules/event-source-polyfill/src/eventsource.js"));
  const page = fs.readFileSync(path.join(here, "client.html"));
  const server = http.createServer((request, response) => {
    const [body, type] = request.url === "/polyfill.js" ? [polyfill, "text/javascript"] : [page, "text/html"];
    response.writeHead(200, { "content-type": type });
    response.end(body);
  });
  const port = await freePort();
  await new Promise((resolve) => server.listen(port, "127.0.0.1", resolve));
  return { origin: `http://127.0.0.1:${port}`, stop: () => new Promise((resolve) => server.close(resolve)) };
}

/** Headless Debian Chromium, with the flags this machine needs (no network beyond loopback). */
export function launchBrowser() {
  return chromium.launch({
    executablePath: chromiumPath,
    headless: true,
    args: [
      "--no-sandbox",
      "--disable-gpu",
      "--disable-quic",
      "--no-first-run",
      "--disable-background-networking",
      "--disable-component-update",
      "--disable-sync",
    ],
  });
}

/**
 * What a test file shares: a Redis, the page server and Chromium, started before its tests and
 * stopped after them (with any service a test left running).
 */
export function servers() {
  const env = {};
  before(async () => {
    env.redis = await startRedis();
    env.pages = await startPageServer();
    env.browser = await launchBrowser();
  });
  after(async () => {
    await env.browser?.close();
    await env.pages?.stop();
    killAll();
  });
  return env;
}

/**
 * A TCP proxy in front of `target` (host:port) that can go silent: `stall()` stops forwarding the
 * service's bytes on every connection whose latest request is a subscribe, leaving it open, as a
 * dead NAT or a sleeping laptop's socket would. Later connections pass normally.
 */
export async function startStallingProxy(target) {
  const [host, port] = target.split(":");
  const connections = new Set();
  let opened = 0;
  const server = net.createServer((client) => {
    opened += 1;
    const upstream = net.connect(Number(port), host);
    const connection = { client, upstream, subscribe: false, stalled: false };
    connections.add(connection);
    client.on("data", (chunk) => {
      const text = chunk.toString("latin1");
      if (/^[A-Z]+ \//.test(text)) connection.subscribe = text.startsWith("GET /notification/subscribe");
      upstream.write(chunk);
    });
    upstream.on("data", (chunk) => connection.stalled || client.write(chunk));
    const end = () => {
      connections.delete(connection);
      client.destroy();
      upstream.destroy();
    };
    client.on("close", end).on("error", end);
    upstream.on("close", end).on("error", end);
  });
  const listenPort = await freePort();
  await new Promise((resolve) => server.listen(listenPort, "127.0.0.1", resolve));
  return {
    url: `http://127.0.0.1:${listenPort}`,
    /** How many connections the browser has made through the proxy. */
    opened: () => opened,
    stall() {
      for (const connection of connections) if (connection.subscribe) connection.stalled = true;
    },
    stop() {
      for (const connection of connections) connection.client.destroy();
      return new Promise((resolve) => server.close(resolve));
    },
  };
}
