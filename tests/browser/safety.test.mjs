// What the page must never do: run a message as markup, keep a token in its URL, or offer the
// development sign-in on a chatd with a real secret.

import assert from "node:assert/strict";
import { test } from "node:test";

import * as ui from "./lib/browser.mjs";
import { testBed } from "./lib/bed.mjs";

const bed = testBed();

test("markup in a message is shown as text and runs nothing", { timeout: 180_000 }, async (t) => {
  const chatd = await bed.start(t, "markup");
  const alice = await ui.openPage(bed.browser, chatd);
  const bob = await ui.openPage(bed.browser, chatd);
  await ui.devSignIn(alice, "alice");
  await ui.devSignIn(bob, "bob");
  const hostile = "<img src=x onerror=alert(1)>";
  await ui.startConversation(alice.page, ["bob"]);
  await ui.send(alice.page, hostile);
  await bob.page.locator("#channels .preview", { hasText: `alice: ${hostile}` }).waitFor();
  await ui.openConversation(bob.page, "alice");
  await ui.waitForShown(bob.page, [hostile]);
  for (const window of [alice, bob]) {
    assert.equal(await window.page.locator("main img").count(), 0);
    ui.assertClean(window); // no dialog opened, no CSP violation, no script error
  }

  // The page is served under a CSP without inline script, and keeps the token out of its URL.
  const response = await alice.page.request.get(chatd.url);
  const csp = response.headers()["content-security-policy"];
  assert.match(csp, /script-src 'self';/);
  assert.doesNotMatch(csp, /unsafe-inline|unsafe-eval/);
  assert.equal(response.headers()["x-content-type-options"], "nosniff");
  for (const window of [alice, bob]) {
    assert.equal(new URL(window.page.url()).search, "");
    const stored = await window.page.evaluate(() => sessionStorage.getItem("chatd.token"));
    assert.match(stored, /^ey/);
  }
});

test("with JWT_SECRET set there is no development sign-in, and a token signs in", { timeout: 180_000 }, async (t) => {
  const chatd = await bed.start(t, "jwt-secret", { JWT_SECRET: "a-real-secret-of-at-least-32-bytes-for-hs256" });
  const window = await ui.openPage(bed.browser, chatd);
  const { page } = window;
  await page.getByRole("button", { name: "Sign in with this token" }).waitFor();
  assert.equal(await page.locator("#dev-form").isVisible(), false);
  const refused = await page.request.post(`${chatd.url}/api/dev/token`, { data: { id: "alice" } });
  assert.equal(refused.status(), 404);

  await page.getByLabel("Token").fill(chatd.cliToken("alice"));
  await page.getByRole("button", { name: "Sign in with this token" }).click();
  await ui.online(page);
  await page.locator("#me", { hasText: "alice" }).waitFor();
  ui.assertClean(window);
});
