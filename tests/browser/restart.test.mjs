// chatd killed (kill -9) and started again under two open pages: both reconnect by
// themselves, and what was sent while one of them was away shows up there, once.

import assert from "node:assert/strict";
import { test } from "node:test";

import * as ui from "./lib/browser.mjs";
import { testBed } from "./lib/bed.mjs";

const bed = testBed();

/** Keeps `page`'s new sockets from reaching chatd while `away()` says so. */
async function keepAway(page, away) {
  await page.routeWebSocket(/\/ws\?/, (socket) => {
    if (away()) socket.close({ code: 4000, reason: "away" });
    else socket.connectToServer();
  });
}

test("both pages reconnect after a restart, missing nothing and doubling nothing", { timeout: 300_000 }, async (t) => {
  const chatd = await bed.start(t, "restart");
  const alice = await ui.openPage(bed.browser, chatd);
  const bob = await ui.openPage(bed.browser, chatd);
  await ui.devSignIn(alice, "alice");
  await ui.devSignIn(bob, "bob");
  await ui.startConversation(alice.page, ["bob"]);
  await ui.send(alice.page, "before the crash");
  await ui.openConversation(bob.page, "alice");
  await ui.waitForShown(bob.page, ["before the crash"]);

  // Bob's page is kept away from chatd (its sockets are refused) until he comes back.
  let away = true;
  await keepAway(bob.page, () => away);

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
});

test("after a gap too long to replay the page says so and reads history again", { timeout: 300_000 }, async (t) => {
  const chatd = await bed.start(t, "recovery-limit", { RECOVERY_LIMIT: "2" });
  const bob = await ui.openPage(bed.browser, chatd);
  await ui.devSignIn(bob, "bob");
  const alice = await chatd.devToken("alice");
  await chatd.send(alice, ["alice", "bob"], "first");
  await bob.page.locator("#channels .unread", { hasText: "1" }).waitFor();
  await ui.openConversation(bob.page, "alice");
  await ui.waitForShown(bob.page, ["first"]);

  let away = true;
  await keepAway(bob.page, () => away);
  await chatd.crashAndRestart();
  const missed = ["missed 1", "missed 2", "missed 3", "missed 4"];
  for (const text of missed) await chatd.send(alice, ["alice", "bob"], text);
  // The page reads history again from the store: let the relay put them there first.
  await chatd.stored(alice, "alice,bob", 1 + missed.length);
  away = false;

  await bob.page.locator("#notice", { hasText: "More than 2 messages" }).waitFor();
  await ui.waitForShown(bob.page, ["first", ...missed]);
  ui.assertClean(bob);
});
