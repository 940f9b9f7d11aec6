// What every test file sets up: one Chromium for the file, and the chatds its tests start,
// closed after the file's last test. A chatd's data directory is removed only when every test
// of the file passed, so that a failure leaves its logs to read.

import { after, before } from "node:test";

import { launch } from "./browser.mjs";
import { Chatd } from "./chatd.mjs";

export function testBed() {
  const servers = [];
  let failures = 0;
  const bed = {
    /** The file's Chromium, launched before its first test. */
    browser: undefined,
    /** A chatd of its own for test `t`, which counts as failed unless it passes. */
    async start(t, name, env) {
      t.after(() => { failures += t.passed ? 0 : 1; });
      const chatd = await Chatd.start(name, env);
      servers.push(chatd);
      return chatd;
    },
  };
  before(async () => {
    bed.browser = await launch();
  });
  after(async () => {
    await bed.browser?.close();
    for (const chatd of servers) await chatd.close(failures === 0);
  });
  return bed;
}
