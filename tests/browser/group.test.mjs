// A group of three, one window each; Carol uses the keyboard only (Tab and Enter).

import { test } from "node:test";

import * as ui from "./lib/browser.mjs";
import { testBed } from "./lib/bed.mjs";

const bed = testBed();

test("three people talk in one group, each in a window", { timeout: 240_000 }, async (t) => {
  const chatd = await bed.start(t, "group");
  const alice = await ui.openPage(bed.browser, chatd);
  const bob = await ui.openPage(bed.browser, chatd);
  const carol = await ui.openPage(bed.browser, chatd, { width: 360, height: 740 });
  await ui.devSignIn(alice, "alice");
  await ui.devSignIn(bob, "bob");

  // Carol signs in with the keyboard alone.
  await ui.tabTo(carol.page, "#dev-id");
  await carol.page.keyboard.type("carol");
  await carol.page.keyboard.press("Enter");
  await ui.online(carol.page);

  await ui.startConversation(alice.page, ["bob", "carol"]);
  await ui.send(alice.page, "Hello, both of you");

  await ui.openConversation(bob.page, "alice, carol");
  await ui.waitForShown(bob.page, ["Hello, both of you"]);
  await ui.send(bob.page, "Bob here");

  // Carol: Tab to the conversation in her list, Enter opens it, Tab on to the composer.
  await carol.page.locator("#channels .name", { hasText: "alice, bob" }).waitFor();
  await ui.tabTo(carol.page, "#channels button");
  await carol.page.keyboard.press("Enter");
  await ui.waitForShown(carol.page, ["Hello, both of you", "Bob here"]);
  await ui.tabTo(carol.page, "#compose");
  await carol.page.keyboard.type("Carol here");
  await carol.page.keyboard.press("Enter");

  const all = ["Hello, both of you", "Bob here", "Carol here"];
  for (const window of [alice, bob, carol]) await ui.waitForShown(window.page, all);
  for (const window of [alice, bob, carol]) ui.assertClean(window);
});
