// Chromium (Debian's, at /usr/bin/chromium) driven by playwright-core, and what the tests do
// on the page: sign in, open or start a conversation, send, read what is shown.

import assert from "node:assert/strict";
import { mkdirSync } from "node:fs";
import { chromium } from "playwright-core";

export const CHROMIUM = process.env.CHROMIUM || "/usr/bin/chromium";
/** Generous: CI has two shared, busy cores. */
export const WAIT_MS = 45_000;

export function launch() {
  return chromium.launch({ executablePath: CHROMIUM, headless: true, args: ["--no-sandbox"] });
}

/** A window of its own (context: its own sessionStorage) with the page of `chatd` open. */
export async function openPage(browser, chatd, viewport = { width: 1100, height: 720 }) {
  const context = await browser.newContext({ viewport });
  const page = await context.newPage();
  page.setDefaultTimeout(WAIT_MS);
  const problems = [];
  page.on("pageerror", (error) => problems.push(`page error: ${error.message}`));
  page.on("console", (message) => {
    if (message.type() === "error" && !isExpectedNetworkError(message.text())) {
      problems.push(`console error: ${message.text()}`);
    }
  });
  page.on("dialog", (dialog) => {
    problems.push(`dialog opened: ${dialog.type()} ${dialog.message()}`);
    dialog.dismiss().catch(() => {});
  });
  await page.goto(chatd.url);
  return { page, context, problems };
}

/** While chatd is down or restarting, the socket's failures are logged by Chromium itself. */
function isExpectedNetworkError(text) {
  return /WebSocket connection to .* failed|Failed to load resource|ERR_CONNECTION_REFUSED/.test(text);
}

/** Nothing went wrong on the page: no script error, no CSP violation, no dialog. */
export function assertClean(window) {
  assert.deepEqual(window.problems, []);
}

/** Signs in with the development sign-in and waits for the socket to be open. */
export async function devSignIn(window, user) {
  const { page } = window;
  await page.getByLabel("User id", { exact: true }).fill(user);
  await page.getByRole("button", { name: "Sign in as this user" }).click();
  await online(page);
}

export async function online(page) {
  await page.locator('#status[data-state="online"]').waitFor();
}

/** Starts (or opens) the conversation with `others`. */
export async function startConversation(page, others) {
  await page.getByLabel(/New conversation with/).fill(others.join(", "));
  await page.getByRole("button", { name: "Start" }).click();
  await page.locator("#compose:not([disabled])").waitFor();
}

/** Types `text` in the composer and sends it with Enter; waits for it to be shown. */
export async function send(page, text) {
  await page.getByRole("textbox", { name: /^Message/ }).fill(text);
  await page.getByRole("textbox", { name: /^Message/ }).press("Enter");
  await page.locator("#messages li.mine .content", { hasText: text }).last().waitFor();
}

/** Opens the conversation called `name` in the list. */
export async function openConversation(page, name) {
  await page.locator("#channels button", { has: page.locator(".name", { hasText: name }) }).click();
  await page.locator("#title", { hasText: name }).waitFor();
}

/** The contents of the open conversation, in the order shown. */
export function shown(page) {
  return page.locator("#messages .content").allTextContents();
}

/** Waits until the open conversation shows exactly `expected`, in that order. */
export async function waitForShown(page, expected) {
  await page.waitForFunction(
    (want) => {
      const got = [...document.querySelectorAll("#messages .content")].map((n) => n.textContent);
      return JSON.stringify(got) === JSON.stringify(want);
    },
    expected,
    { timeout: WAIT_MS, polling: 100 },
  ).catch(async (error) => {
    assert.deepEqual(await shown(page), expected, error.message);
  });
}

export function screenshotDir(root) {
  const dir = `${root}/target/browser`;
  mkdirSync(dir, { recursive: true });
  return dir;
}

/** Presses Tab until the element matching `selector` has the focus (as a keyboard user would). */
export async function tabTo(page, selector, most = 30) {
  for (let i = 0; i < most; i += 1) {
    if (await page.evaluate((s) => document.activeElement?.matches(s) ?? false, selector)) return;
    await page.keyboard.press("Tab");
  }
  assert.fail(`${selector} cannot be reached with Tab`);
}
