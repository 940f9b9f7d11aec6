// Scrolling back through a long conversation loads it page by page (before= cursor), in
// order, each message once.

import assert from "node:assert/strict";
import { test } from "node:test";

import * as ui from "./lib/browser.mjs";
import { testBed } from "./lib/bed.mjs";

/** Three pages of the page's 25, and some. */
const COUNT = 80;

const bed = testBed();

test("scrolling back loads the whole history, in order, once", { timeout: 240_000 }, async (t) => {
  const chatd = await bed.start(t, "history");
  const alice = await chatd.devToken("alice");
  const texts = Array.from({ length: COUNT }, (_, i) => `message ${String(i + 1).padStart(3, "0")}`);
  for (const text of texts) await chatd.send(alice, ["alice", "bob"], text);
  // History is read from the store, which the relay fills just after each 202.
  await chatd.stored(alice, "alice,bob", COUNT);

  const bob = await ui.openPage(bed.browser, chatd);
  await ui.devSignIn(bob, "bob");
  const pages = [];
  bob.page.on("request", (request) => {
    if (request.url().includes("/api/messages/get")) pages.push(new URL(request.url()).searchParams.get("before"));
  });
  await ui.startConversation(bob.page, ["alice"]);
  const messages = bob.page.locator("#messages .content");
  await messages.last().waitFor();
  assert.equal(await messages.last().textContent(), texts.at(-1));
  const first = await messages.count();
  assert.ok(first < COUNT, `the first page showed ${first} of ${COUNT}`);

  // Scroll to the top until the first message is there; each scroll loads a page more.
  while (!(await bob.page.locator("#messages .content", { hasText: texts[0] }).count())) {
    const before = await messages.count();
    await bob.page.locator("#messages").evaluate((list) => { list.scrollTop = 0; });
    await bob.page.waitForFunction(
      (n) => document.querySelectorAll("#messages .content").length > n,
      before,
      { timeout: ui.WAIT_MS, polling: 100 },
    );
  }
  await ui.waitForShown(bob.page, texts);
  assert.ok(pages.length >= 4, `history was read in ${pages.length} pages`);
  assert.equal(new Set(pages).size, pages.length, "a page was asked for twice");
  ui.assertClean(bob);
});
