// Building DOM nodes. Every text from chatd (contents, user ids) goes in as textContent,
// never as markup.

/** An element with attributes and children (strings become text nodes). */
export function el(tag, attributes = {}, ...children) {
  const node = document.createElement(tag);
  for (const [name, value] of Object.entries(attributes)) {
    if (value !== undefined && value !== null && value !== false) node.setAttribute(name, String(value));
  }
  for (const child of children) {
    if (child === null || child === undefined) continue;
    node.append(typeof child === "string" ? document.createTextNode(child) : child);
  }
  return node;
}

export const $ = (id) => document.getElementById(id);

const time = new Intl.DateTimeFormat(undefined, { hour: "2-digit", minute: "2-digit" });
const day = new Intl.DateTimeFormat(undefined, { dateStyle: "medium", timeStyle: "short" });

/** A message of the open conversation. */
export function messageItem(message, me) {
  const at = new Date(message.created_at);
  const sameDay = at.toDateString() === new Date().toDateString();
  return el(
    "li",
    { class: message.sender === me ? "mine" : "theirs", "data-id": message.id },
    el(
      "div",
      { class: "meta" },
      el("span", { class: "sender" }, message.sender),
      el("time", { datetime: message.created_at }, (sameDay ? time : day).format(at)),
    ),
    el("p", { class: "content" }, message.content),
  );
}

/** What a conversation is called: the others in it, or "notes to self". */
export function channelName(participants, me) {
  const others = participants.filter((p) => p !== me);
  return others.length ? others.join(", ") : `${me} (notes to self)`;
}

/** A conversation of the list. */
export function channelItem(channel, me, open) {
  const last = channel.last_message;
  const preview = last ? `${last.sender === me ? "you" : last.sender}: ${last.content}` : "no messages yet";
  const name = channelName(channel.participants, me);
  return el(
    "li",
    {},
    el(
      "button",
      {
        type: "button",
        "data-key": channel.key,
        "aria-current": open ? "true" : false,
        "aria-label": channel.unread ? `${name}, ${channel.unread} unread` : name,
      },
      el("span", { class: "name" }, name),
      channel.unread ? el("span", { class: "unread", "aria-hidden": "true" }, String(channel.unread)) : null,
      el("span", { class: "preview" }, preview),
    ),
  );
}
