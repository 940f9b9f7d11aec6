// The page: signing in and out, and wiring the forms, the list and the socket together.

import * as api from "./api.js";
import { Chats, canonical } from "./chats.js";
import { Live } from "./socket.js";
import { $ } from "./view.js";

const TOKEN_KEY = "chatd.token";
const MAX_ID_BYTES = 128;

let session = null;

function setStatus(state, text) {
  const status = $("status");
  status.dataset.state = state;
  status.textContent = text;
}

function showError(id, error) {
  $(id).textContent = error ? String(error.message || error) : "";
}

/** Any failure: a refused token ends the session, anything else is shown. */
function failed(error) {
  if (error instanceof api.SignedOut) signOut(`Signed out: ${error.message}. Sign in again.`);
  else showError("send-error", error);
}

function expired(token) {
  const exp = api.claims(token)?.exp;
  return typeof exp === "number" && exp * 1000 <= Date.now();
}

function signIn(token) {
  const claims = api.claims(token);
  if (!claims) {
    showError("sign-in-error", "That is not a JWT with an id claim.");
    return;
  }
  if (expired(token)) {
    showError("sign-in-error", "That token has expired.");
    return;
  }
  sessionStorage.setItem(TOKEN_KEY, token);
  showError("sign-in-error", null);
  const current = { token, me: claims.id };
  const chats = new Chats(current, failed);
  const live = new Live({
    token: () => current.token,
    since: () => chats.lastSeen,
    message: (message) => chats.received(message),
    notice: (frame) => {
      const notice = $("notice");
      notice.hidden = false;
      notice.textContent = `More than ${frame.limit} messages arrived while this page was away: the conversations were read again from history.`;
      chats.reload().catch(failed);
    },
    state: setStatus,
    blind: () => chats.loadChannels(true, true).catch(failed),
    expired: () => {
      if (!expired(current.token)) return false;
      signOut("Your token has expired. Sign in again.");
      return true;
    },
  });
  session = { ...current, chats, live };
  $("me").textContent = current.me;
  $("sign-in").hidden = true;
  $("chat").hidden = false;
  $("sign-out").hidden = false;
  live.start();
  chats.loadChannels(true).catch(failed);
  $("new-ids").focus();
}

function signOut(why) {
  if (session) session.live.stop();
  session = null;
  sessionStorage.removeItem(TOKEN_KEY);
  setStatus("signed-out", "signed out");
  $("me").textContent = "";
  $("chat").hidden = true;
  $("sign-out").hidden = true;
  $("sign-in").hidden = false;
  $("channels").replaceChildren();
  $("messages").replaceChildren();
  $("title").textContent = "No conversation open";
  $("notice").hidden = true;
  $("compose").disabled = true;
  $("send").disabled = true;
  showError("sign-in-error", why);
}

/** The user ids typed in `text`, or an error naming the first bad one. */
function userIds(text) {
  const ids = text.split(",").map((id) => id.trim()).filter(Boolean);
  if (!ids.length) throw new Error("Type at least one user id.");
  for (const id of ids) {
    if (new TextEncoder().encode(id).length > MAX_ID_BYTES) throw new Error(`"${id}" is longer than 128 bytes.`);
    if (/\p{Cc}/u.test(id)) throw new Error("A user id cannot hold control characters.");
  }
  return ids;
}

function wire() {
  if (document.querySelector('meta[name="chatd-dev-sign-in"]')?.content === "on") {
    $("dev-form").hidden = false;
  }
  $("dev-form").addEventListener("submit", async (event) => {
    event.preventDefault();
    try {
      const [id] = userIds($("dev-id").value);
      const { token } = await api.devToken(id);
      signIn(token);
    } catch (error) {
      showError("sign-in-error", error);
    }
  });
  $("token-form").addEventListener("submit", (event) => {
    event.preventDefault();
    signIn($("token").value.trim());
    $("token").value = "";
  });
  $("sign-out").addEventListener("click", () => signOut(null));
  $("new-form").addEventListener("submit", (event) => {
    event.preventDefault();
    if (!session) return;
    try {
      const participants = canonical([session.me, ...userIds($("new-ids").value)]);
      $("new-ids").value = "";
      showError("send-error", null);
      session.chats.show(participants).catch(failed);
      $("compose").focus();
    } catch (error) {
      showError("send-error", error);
    }
  });
  $("channels").addEventListener("click", (event) => {
    const button = event.target.closest("button[data-key]");
    const channel = button && session?.chats.channels.get(button.dataset.key);
    if (channel) session.chats.show(channel.participants).catch(failed);
  });
  $("more-channels").addEventListener("click", () => session?.chats.loadChannels(false).catch(failed));
  $("compose").addEventListener("keydown", (event) => {
    if (event.key === "Enter" && !event.shiftKey && !event.isComposing) {
      event.preventDefault();
      $("send-form").requestSubmit();
    }
  });
  $("send-form").addEventListener("submit", async (event) => {
    event.preventDefault();
    const compose = $("compose");
    const content = compose.value;
    if (!session?.chats.open || !content.trim()) return;
    compose.value = "";
    try {
      await session.chats.send(content);
      showError("send-error", null);
    } catch (error) {
      // Not sent: the text comes back to be sent again.
      if (!compose.value) compose.value = content;
      failed(error);
    }
  });
  const token = sessionStorage.getItem(TOKEN_KEY);
  if (token) signIn(token);
}

wire();
