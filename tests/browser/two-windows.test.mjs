// Alice and Bob, each in a window of their own: a conversation started, answered and seen live
// on both sides, each message once. Leaves a screenshot of the two windows in target/browser/.

import assert from "node:assert/strict";
import { test } from "node:test";

import * as ui from "./lib/browser.mjs";
import { testBed } from "./lib/bed.mjs";
import { ROOT } from "./lib/chatd.mjs";

const bed = testBed();

test("alice and bob talk live in two windows", { timeout: 240_000 }, async (t) => {
  const chatd = await bed.start(t, "two-windows");
  const alice = await ui.openPage(bed.browser, chatd);
  const bob = await ui.openPage(bed.browser, chatd, { width: 360, height: 720 });
  await ui.devSignIn(alice, "alice");
  await ui.devSignIn(bob, "bob");

  await ui.startConversation(alice.page, ["bob"]);
  await ui.send(alice.page, "Hello Bob!");

  // Bob, without reloading: the conversation appears in his list, unread, and opens with it.
  const entry = bob.page.locator("#channels button", { has: bob.page.locator(".name", { hasText: "alice" }) });
  await entry.locator(".unread", { hasText: "1" }).waitFor();
  await entry.locator(".preview", { hasText: "alice: Hello Bob!" }).waitFor();
  await ui.openConversation(bob.page, "alice");
  await ui.waitForShown(bob.page, ["Hello Bob!"]);
  await assert.rejects(entry.locator(".unread").waitFor({ timeout: 1 }));

  await ui.send(bob.page, "Hi Alice, here I am.");
  await ui.waitForShown(alice.page, ["Hello Bob!", "Hi Alice, here I am."]);
  // Alice sends while Bob has the conversation open: it is added live there, not counted unread.
  await ui.send(alice.page, "Lovely. Shall we meet at noon?");
  const all = ["Hello Bob!", "Hi Alice, here I am.", "Lovely. Shall we meet at noon?"];
  await ui.waitForShown(bob.page, all);
  await ui.waitForShown(alice.page, all);
  assert.equal(await bob.page.locator("#channels .unread").count(), 0);

  // Each sees their own messages once: from the 202, never again from anywhere else.
  assert.equal(await alice.page.locator("#messages li.mine").count(), 2);
  assert.equal(await bob.page.locator("#messages li.mine").count(), 1);

  await screenshot([alice.page, bob.page]);
  ui.assertClean(alice);
  ui.assertClean(bob);
});

/** Both windows side by side in one image, each at its own width (desktop and 360 px). */
async function screenshot(pages) {
  const shots = await Promise.all(pages.map((page) => page.screenshot()));
  const sheet = await bed.browser.newPage({ viewport: { width: 1100 + 360 + 48, height: 760 } });
  await sheet.setContent(
    `<body style="margin:0;padding:16px;background:#888;display:flex;gap:16px;align-items:flex-start">
      ${shots.map((png) => `<img src="data:image/png;base64,${png.toString("base64")}">`).join("")}
    </body>`,
  );
  await sheet.locator("img").last().waitFor();
  await sheet.screenshot({ path: `${ui.screenshotDir(ROOT)}/two-windows.png`, fullPage: true });
  await sheet.close();
}
