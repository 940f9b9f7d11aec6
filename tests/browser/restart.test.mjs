// chatd killed (kill -9) and started again under two open pages: both reconnect by
// themselves, and what was sent while one of them was away shows up there, once.

import assert from "node:assert/strict";
import { after, before, test } from "node:test";

import * as ui from "./lib/browser.mjs";
import { Chatd } from "./lib/chatd.mjs";

let browser;
let chatd;
let passed = false;
before(async () => {
  browser = await ui.launch();
  chatd = await Chatd.start("restart");
});
after(async () => {
  await browser?.close();
  await chatd?.close(passed);
});

test("both pages reconnect after a restart, missing nothing and doubling nothing", { timeout: 300_000 }, async () => {
  const alice = await ui.openPage(browser, chatd);
  const bob = await ui.openPage(browser, chatd);
  await ui.devSignIn(alice, "alice");
  await ui.devSignIn(bob, "bob");
  await ui.startConversation(alice.page, ["bob"]);
  await ui.send(alice.page, "before the crash");
  await ui.openConversation(bob.page, "alice");
  await ui.waitForShown(bob.page, ["before the crash"]);

  // Bob's page is kept away from chatd (its sockets are refused) until he comes back.
  let away = true;
  await bob.page.routeWebSocket(/\/ws\?/, (socket) => {
    if (away) socket.close({ code: 4000, reason: "away" });
    else socket.connectToServer();
  });

  await chatd.crashAndRestart();
  await alice.page.locator('#status[data-state="reconnecting"]').or(alice.page.locator('#status[data-state="online"]')).waitFor();
  await ui.online(alice.page);
  const meanwhile = ["sent while bob was away 1", "sent while bob was away 2", "sent while bob was away 3"];
  for (const text of meanwhile) await ui.send(alice.page, text);

  away = false;
  await ui.waitForShown(bob.page, ["before the crash", ...meanwhile]);
  await ui.online(bob.page);
  await ui.send(bob.page, "back, and I read everything");
  const all = ["before the crash", ...meanwhile, "back, and I read everything"];
  await ui.waitForShown(alice.page, all);
  await ui.waitForShown(bob.page, all);
  assert.equal(await bob.page.locator("#channels .unread").count(), 0);

  ui.assertClean(alice);
  ui.assertClean(bob);
  passed = true;
});
