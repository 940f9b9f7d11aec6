// The live stream: one WebSocket, reconnected with growing pauses when it drops, each time
// with ?since= the last message id seen, so that chatd replays what came meanwhile.

const FIRST_PAUSE_MS = 500;
const LONGEST_PAUSE_MS = 10000;

export class Live {
  /**
   * @param {object} hooks
   *   token(): the JWT; since(): the last message id seen, or null;
   *   message(m): a message frame; notice(frame): a recovery notice;
   *   state(name, detail): "connecting" | "online" | "reconnecting"; expired(): the token ran out;
   *   blind(): reconnected without a `since` (nothing seen yet), so a gap may have gone unseen.
   */
  constructor(hooks) {
    this.hooks = hooks;
    this.failures = 0;
    this.socket = null;
    this.timer = null;
    this.stopped = false;
  }

  start() {
    this.stopped = false;
    this.open();
  }

  stop() {
    this.stopped = true;
    clearTimeout(this.timer);
    if (this.socket) this.socket.close(1000);
    this.socket = null;
  }

  open() {
    const { hooks } = this;
    const params = new URLSearchParams({ token: hooks.token() });
    const since = hooks.since();
    if (since) params.set("since", since);
    const scheme = location.protocol === "https:" ? "wss" : "ws";
    hooks.state(this.failures ? "reconnecting" : "connecting", "connecting…");
    const socket = new WebSocket(`${scheme}://${location.host}/ws?${params}`);
    this.socket = socket;
    const again = this.failures > 0;
    socket.addEventListener("open", () => {
      if (again && !since) hooks.blind();
      this.failures = 0;
      hooks.state("online", "connected");
    });
    socket.addEventListener("message", (event) => {
      let frame;
      try {
        frame = JSON.parse(event.data);
      } catch {
        return;
      }
      if (frame.type === "recovery_limit_exceeded") hooks.notice(frame);
      else if (typeof frame.id === "string") hooks.message(frame);
    });
    socket.addEventListener("close", () => {
      if (this.socket !== socket || this.stopped) return;
      this.socket = null;
      if (hooks.expired()) return;
      // 500 ms, 1 s, 2 s … up to 10 s, each with some jitter so that a restarted chatd is not
      // met by every page at the same instant.
      const pause = Math.min(LONGEST_PAUSE_MS, FIRST_PAUSE_MS * 2 ** this.failures);
      this.failures += 1;
      const wait = pause / 2 + Math.random() * (pause / 2);
      hooks.state("reconnecting", `reconnecting in ${Math.ceil(wait / 1000)} s`);
      this.timer = setTimeout(() => this.open(), wait);
    });
  }
}
