// A chatd of its own for each test: the debug binary on a free port, with its own DATA_DIR
// under target/tmp, killed after the test (or with kill -9 and started again, same port and
// DATA_DIR, for the restart test).

import assert from "node:assert/strict";
import { spawn, execFileSync } from "node:child_process";
import { mkdirSync, rmSync, openSync } from "node:fs";
import { createServer } from "node:net";
import { join, resolve } from "node:path";
import { setTimeout as pause } from "node:timers/promises";

export const ROOT = resolve(import.meta.dirname, "../../..");
export const BIN = process.env.CHATD_BIN || join(ROOT, "target/debug/chatd");
/** How long chatd may take to answer /health after it was started (busy CI machines). */
const START_DEADLINE_MS = 60_000;

function freePort() {
  return new Promise((resolvePort, reject) => {
    const server = createServer();
    server.unref();
    server.on("error", reject);
    server.listen(0, "127.0.0.1", () => {
      const { port } = server.address();
      server.close(() => resolvePort(port));
    });
  });
}

export class Chatd {
  /** Starts chatd with `env` on top of the test defaults (no rate limit, no JWT_SECRET). */
  static async start(name, env = {}) {
    const dataDir = join(ROOT, "target/tmp/browser", `${name}-${process.pid}-${Date.now()}`);
    mkdirSync(dataDir, { recursive: true });
    for (let attempt = 0; ; attempt += 1) {
      const chatd = new Chatd(name, dataDir, await freePort(), env);
      try {
        await chatd.launch();
        return chatd;
      } catch (error) {
        // Another process may have taken the port between freePort() and chatd's bind.
        if (attempt >= 3) throw error;
      }
    }
  }

  constructor(name, dataDir, port, env) {
    this.name = name;
    this.dataDir = dataDir;
    this.port = port;
    this.url = `http://127.0.0.1:${port}`;
    this.env = {
      ...process.env,
      HOST: "127.0.0.1",
      PORT: String(port),
      DATA_DIR: dataDir,
      RATE_LIMIT_RPS: "0",
      RUST_LOG: "warn",
      JWT_SECRET: "",
      ...env,
    };
    this.child = null;
    this.launches = 0;
  }

  async launch() {
    this.launches += 1;
    const log = openSync(join(this.dataDir, `chatd-${this.launches}.log`), "a");
    const child = spawn(BIN, [], { env: this.env, stdio: ["ignore", log, log] });
    this.child = child;
    const exited = new Promise((resolveExit) => child.once("exit", (code) => resolveExit(code)));
    const deadline = Date.now() + START_DEADLINE_MS;
    for (;;) {
      const code = await Promise.race([exited, this.healthy().then((ok) => (ok ? "up" : null))]);
      if (code === "up") return;
      if (code !== null) throw new Error(`chatd exited (${code}); see ${this.dataDir}`);
      if (Date.now() > deadline) throw new Error(`chatd did not answer /health; see ${this.dataDir}`);
      await pause(100); // polling /health: there is no event to await from another process
    }
  }

  async healthy() {
    try {
      return (await fetch(`${this.url}/health`)).ok;
    } catch {
      return false;
    }
  }

  /** Stops chatd: gracefully, or with `signal` (SIGKILL: no shutdown at all). */
  async stop(signal = "SIGTERM") {
    const child = this.child;
    if (!child || child.exitCode !== null || child.signalCode !== null) return;
    const exited = new Promise((resolveExit) => child.once("exit", resolveExit));
    child.kill(signal);
    await exited;
  }

  /** kill -9, then the same binary on the same port and DATA_DIR. */
  async crashAndRestart() {
    await this.stop("SIGKILL");
    await this.launch();
  }

  /** Stops chatd and removes its DATA_DIR (kept when the test failed, to read its logs). */
  async close(passed) {
    await this.stop();
    if (passed) rmSync(this.dataDir, { recursive: true, force: true });
  }

  /** A token from `chatd token` (which signs with the same secret as this chatd). */
  cliToken(user) {
    return execFileSync(BIN, ["token", user, "--ttl", "1h"], { env: this.env }).toString().trim();
  }

  /** A token from the development sign-in's endpoint. */
  async devToken(user) {
    const response = await fetch(`${this.url}/api/dev/token`, {
      method: "POST",
      headers: { "Content-Type": "application/json" },
      body: JSON.stringify({ id: user }),
    });
    assert.equal(response.status, 200);
    return (await response.json()).token;
  }

  async call(token, method, path, body) {
    const response = await fetch(`${this.url}${path}`, {
      method,
      headers: { Authorization: `Bearer ${token}`, "Content-Type": "application/json" },
      body: body === undefined ? undefined : JSON.stringify(body),
    });
    const text = await response.text();
    if (!response.ok) throw new Error(`${method} ${path}: ${response.status} ${text}`);
    return JSON.parse(text);
  }

  /** Waits until the store holds `count` messages of the channel `participants` ("a,b"). */
  async stored(token, participants, count) {
    for (;;) {
      const path = `/api/messages/get?participants=${participants}&size=100`;
      if ((await this.call(token, "GET", path)).length >= count) return;
      await pause(100); // polling the store: there is nothing to await from outside chatd
    }
  }

  send(token, participants, content) {
    return this.call(token, "POST", "/api/messages", { participants, content });
  }
}
