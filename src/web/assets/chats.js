// The signed-in user's conversations: the list (with unread counts) and the open one (with
// its history, loaded page by page as it is scrolled back). Every message is keyed by its id,
// so one that arrives twice (the 202, the socket, a replay, a history page) is shown once.

import * as api from "./api.js";
import { $, channelItem, channelName, messageItem } from "./view.js";

const HISTORY_PAGE = 25;
const CHANNEL_PAGE = 20;
/** How close to an edge of the messages (in pixels) counts as being at it. */
const EDGE = 48;
const UUID_V7 = /^[0-9a-f]{8}-[0-9a-f]{4}-7[0-9a-f]{3}-[0-9a-f]{4}-[0-9a-f]{12}$/;

const encoder = new TextEncoder();
function byteOrder(a, b) {
  const x = encoder.encode(a);
  const y = encoder.encode(b);
  for (let i = 0; i < Math.min(x.length, y.length); i += 1) if (x[i] !== y[i]) return x[i] - y[i];
  return x.length - y.length;
}

/** A channel's canonical form, as chatd writes it: sorted by bytes, without duplicates. */
export const canonical = (ids) => [...new Set(ids)].sort(byteOrder);

/** chatd's order of messages: by created_at, ties by id. */
const before = (a, b) => a.created_at < b.created_at || (a.created_at === b.created_at && a.id < b.id);

export class Chats {
  /** @param {{token: string, me: string}} session; @param {(error) => void} failed */
  constructor(session, failed) {
    this.session = session;
    this.failed = failed;
    this.channels = new Map();
    this.moreChannels = null;
    this.open = null;
    /** The newest message id seen, for the socket's ?since=. */
    this.lastSeen = null;
    $("messages").addEventListener("scroll", () => {
      if ($("messages").scrollTop < EDGE) this.loadOlder().catch(this.failed);
    });
  }

  see(id) {
    if (UUID_V7.test(id) && (!this.lastSeen || id > this.lastSeen)) this.lastSeen = id;
  }

  /**
   * The list's first page (`reset`) or its next one. `catchUp`: the list is read again after
   * a gap, and a conversation with a newer last message (not the open one) counts one unread.
   */
  async loadChannels(reset, catchUp = false) {
    const page = await api.channels(this.session.token, reset ? null : this.moreChannels);
    for (const item of page) {
      this.see(item.last_message.id);
      const isOpen = this.open?.key === item.participants.join(",");
      this.upsert(item.participants, item.last_message, catchUp && !isOpen);
    }
    this.moreChannels = page.length === CHANNEL_PAGE ? page.at(-1).last_message.id : null;
    this.renderChannels();
  }

  /** A message from the socket: into the open conversation, or counted as unread. */
  received(message) {
    this.see(message.id);
    const isOpen = this.open && this.open.key === message.participants.join(",");
    this.upsert(message.participants, message, !isOpen);
    if (isOpen) this.add(this.open, message, true);
    this.renderChannels();
  }

  /** A message the user sent, from the 202. */
  sent(message) {
    this.upsert(message.participants, message, false);
    if (this.open && this.open.key === message.participants.join(",")) this.add(this.open, message, true);
    this.renderChannels();
  }

  upsert(participants, message, unread) {
    const key = participants.join(",");
    let channel = this.channels.get(key);
    if (!channel) {
      channel = { key, participants, last_message: null, unread: 0 };
      this.channels.set(key, channel);
    }
    if (message && (!channel.last_message || before(channel.last_message, message))) {
      channel.last_message = message;
      if (unread) channel.unread += 1;
    }
    return channel;
  }

  renderChannels() {
    const list = $("channels");
    const focused = document.activeElement?.dataset?.key;
    const sorted = [...this.channels.values()].sort((a, b) => {
      if (!a.last_message) return -1;
      if (!b.last_message) return 1;
      return before(a.last_message, b.last_message) ? 1 : -1;
    });
    list.replaceChildren(
      ...sorted.map((channel) => channelItem(channel, this.session.me, this.open?.key === channel.key)),
    );
    $("more-channels").hidden = !this.moreChannels;
    if (focused) list.querySelector(`button[data-key="${CSS.escape(focused)}"]`)?.focus();
  }

  /** Opens the conversation of `participants` (canonical), new or not. */
  async show(participants) {
    const channel = this.upsert(participants, null, false);
    channel.unread = 0;
    const conversation = { key: channel.key, participants, ids: new Set(), items: [], cursor: null, done: false, loading: false };
    this.open = conversation;
    $("title").textContent = channelName(participants, this.session.me);
    $("messages").replaceChildren();
    $("compose").disabled = false;
    $("send").disabled = false;
    this.renderChannels();
    await this.loadOlder();
  }

  /** The next page back of the open conversation's history, until the list can scroll. */
  async loadOlder() {
    const conversation = this.open;
    if (!conversation || conversation.loading || conversation.done) return;
    conversation.loading = true;
    try {
      const page = await api.history(this.session.token, conversation.participants, HISTORY_PAGE, conversation.cursor);
      if (this.open !== conversation) return;
      const list = $("messages");
      const first = conversation.cursor === null;
      const fromBottom = list.scrollHeight - list.scrollTop;
      for (const message of page) {
        this.see(message.id);
        this.add(conversation, message, false);
      }
      if (page.length) conversation.cursor = page.at(-1).id;
      conversation.done = page.length < HISTORY_PAGE;
      // Older messages go above: keep what the reader was looking at where it was.
      list.scrollTop = first ? list.scrollHeight : list.scrollHeight - fromBottom;
    } finally {
      conversation.loading = false;
    }
    const list = $("messages");
    if (this.open === conversation && !conversation.done && list.scrollTop < EDGE) await this.loadOlder();
  }

  /** Puts `message` in its place in the open conversation, once. */
  add(conversation, message, live) {
    if (conversation.ids.has(message.id)) return;
    conversation.ids.add(message.id);
    const { items } = conversation;
    let at = items.length;
    while (at > 0 && before(message, items[at - 1])) at -= 1;
    items.splice(at, 0, message);
    const list = $("messages");
    const atBottom = list.scrollHeight - list.scrollTop - list.clientHeight < EDGE;
    list.insertBefore(messageItem(message, this.session.me), list.children[at] ?? null);
    if (live && (atBottom || message.sender === this.session.me)) list.scrollTop = list.scrollHeight;
  }

  /** After a gap too long to replay: the list and the open conversation, read again. */
  async reload() {
    await this.loadChannels(true);
    if (this.open) await this.show(this.open.participants);
  }

  async send(content) {
    const { participants } = this.open;
    const answer = await api.send(this.session.token, participants, content);
    this.sent(answer.message);
  }
}
