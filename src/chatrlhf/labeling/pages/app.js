// Shared helpers of the labeling pages: fetch JSON with the session cookie, small DOM builders.
async function api(method, path, body) {
  const opts = { method, headers: {}, credentials: "same-origin" };
  if (body !== undefined) { opts.headers["Content-Type"] = "application/json"; opts.body = JSON.stringify(body); }
  const res = await fetch(path, opts);
  if (res.status === 401) { location.href = "/login"; throw new Error("not logged in"); }
  const type = res.headers.get("content-type") || "";
  const data = type.includes("json") ? await res.json() : await res.text();
  if (!res.ok) {
    let detail = data && data.detail !== undefined ? data.detail : data;
    if (Array.isArray(detail)) detail = detail.map(d => (d.loc || []).join(".") + ": " + d.msg).join("\n");
    throw new Error(res.status + ": " + detail);
  }
  return data;
}
function el(tag, attrs, ...children) {
  const e = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) {
    if (k.startsWith("on")) e.addEventListener(k.slice(2), v); else if (v !== null && v !== undefined) e.setAttribute(k, v);
  }
  for (const c of children) e.append(c instanceof Node ? c : document.createTextNode(String(c)));
  return e;
}
function messageList(messages) {
  return el("div", {}, ...messages.map(m => el("div", { class: "msg" }, el("b", {}, m.role), m.content)));
}
async function header() {
  const me = await api("GET", "/api/me");
  const h = el("header", {}, el("strong", {}, "chatrlhf labeling"), el("a", { href: "/" }, "Queue"),
    el("a", { href: "/mine" }, "My answers"));
  if (me.role === "admin") h.append(el("a", { href: "/admin" }, "Admin"));
  h.append(el("span", { class: "who" }, me.name + " (" + me.role + ")"),
    el("a", { href: "#", onclick: async (ev) => { ev.preventDefault(); await api("POST", "/api/logout"); location.href = "/login"; } }, "Log out"));
  document.body.prepend(h);
  return me;
}
