// The REST calls, with the token in a header (never in the page's URL) and 429/503 answered
// by waiting as long as Retry-After says.

/** The token was refused (expired, or signed with another secret): sign in again. */
export class SignedOut extends Error {}

const MAX_WAITS = 5;

const pause = (ms) => new Promise((resolve) => setTimeout(resolve, ms));

/** The JSON of a call, or an Error whose message is chatd's `error`. */
export async function call(token, method, path, body, headers = {}) {
  for (let attempt = 0; ; attempt += 1) {
    const response = await fetch(path, {
      method,
      headers: {
        ...(token ? { Authorization: `Bearer ${token}` } : {}),
        ...(body === undefined ? {} : { "Content-Type": "application/json" }),
        ...headers,
      },
      body: body === undefined ? undefined : JSON.stringify(body),
      cache: "no-store",
    });
    const retryAfter = Number(response.headers.get("retry-after"));
    if ((response.status === 429 || response.status === 503) && retryAfter > 0 && attempt < MAX_WAITS) {
      await pause(retryAfter * 1000);
      continue;
    }
    const answer = await response.json().catch(() => ({}));
    if (response.status === 401) throw new SignedOut(answer.error || "the token was refused");
    if (!response.ok) throw new Error(answer.error || `${method} ${path}: ${response.status}`);
    return answer;
  }
}

/** A fresh idempotency key, so that a send retried after a 429 is stored once. */
export function idempotencyKey() {
  const bytes = crypto.getRandomValues(new Uint8Array(16));
  return Array.from(bytes, (b) => b.toString(16).padStart(2, "0")).join("");
}

export const devToken = (id) => call(null, "POST", "/api/dev/token", { id });

export const channels = (token, before) =>
  call(token, "GET", `/api/channels?limit=20${before ? `&before=${encodeURIComponent(before)}` : ""}`);

export const history = (token, participants, size, before) =>
  call(
    token,
    "GET",
    `/api/messages/get?participants=${encodeURIComponent(participants.join(","))}&size=${size}` +
      (before ? `&before=${encodeURIComponent(before)}` : ""),
  );

export const send = (token, participants, content) =>
  call(token, "POST", "/api/messages", { participants, content }, { "Idempotency-Key": idempotencyKey() });

/** The claims of a JWT, unverified: only to show who is signed in and when it expires. */
export function claims(token) {
  try {
    const payload = token.split(".")[1].replace(/-/g, "+").replace(/_/g, "/");
    const json = new TextDecoder().decode(Uint8Array.from(atob(payload), (c) => c.charCodeAt(0)));
    const parsed = JSON.parse(json);
    return typeof parsed.id === "string" ? parsed : null;
  } catch {
    return null;
  }
}
