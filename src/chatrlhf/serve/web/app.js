// The chatrlhf web chat: keeps the conversation (also across reloads, in localStorage), streams
// replies from /v1/chat/completions (server-sent events) and shows the server's errors.
"use strict";

const $ = (id) => document.getElementById(id);
const STORE = "chatrlhf.conversation";
let messages = JSON.parse(localStorage.getItem(STORE) || "[]");
let controller = null;

function bubble(role, text) {
  const div = document.createElement("div");
  div.className = `msg ${role}`;
  const label = document.createElement("span");
  label.className = "role";
  label.textContent = role === "user" ? "you" : "assistant";
  const body = document.createElement("span");
  body.className = "content";
  body.textContent = text;
  div.append(label, body);
  $("log").append(div);
  $("log").scrollTop = $("log").scrollHeight;
  return body;
}

function render() {
  $("log").replaceChildren();
  for (const m of messages) bubble(m.role, m.content);
}

function showError(text) {
  $("error").textContent = text;
  $("error").hidden = !text;
}

function save() { localStorage.setItem(STORE, JSON.stringify(messages)); }

function busy(on) {
  $("send").disabled = on;
  $("stop").hidden = !on;
}

// Parse an SSE byte stream into JSON events ("data: {...}\n\n"), ending at [DONE].
async function* events(response) {
  const reader = response.body.getReader();
  const decoder = new TextDecoder();
  let buf = "";
  for (;;) {
    const { value, done } = await reader.read();
    if (done) return;
    buf += decoder.decode(value, { stream: true });
    let cut;
    while ((cut = buf.indexOf("\n\n")) >= 0) {
      const block = buf.slice(0, cut);
      buf = buf.slice(cut + 2);
      for (const line of block.split("\n")) {
        if (!line.startsWith("data: ")) continue;
        const data = line.slice(6).trim();
        if (data === "[DONE]") return;
        yield JSON.parse(data);
      }
    }
  }
}

async function send(text) {
  showError("");
  messages.push({ role: "user", content: text });
  save();
  bubble("user", text);
  const system = $("system").value.trim();
  const body = {
    messages: system ? [{ role: "system", content: system }, ...messages] : messages,
    stream: true,
    temperature: parseFloat($("temperature").value),
    max_tokens: parseInt($("max-tokens").value, 10),
  };
  const out = bubble("assistant", "");
  out.parentElement.classList.add("streaming");
  controller = new AbortController();
  busy(true);
  let reply = "";
  try {
    const res = await fetch("/v1/chat/completions", {
      method: "POST", headers: { "Content-Type": "application/json" },
      body: JSON.stringify(body), signal: controller.signal,
    });
    if (!res.ok) {
      const err = await res.json().catch(() => ({}));
      const e = err.error || {};
      throw new Error(`${res.status}: ${e.message || res.statusText}${e.param ? ` (field: ${e.param})` : ""}`);
    }
    for await (const ev of events(res)) {
      if (ev.error) throw new Error(ev.error.message);
      const delta = ev.choices && ev.choices[0] && ev.choices[0].delta;
      if (delta && delta.content) {
        reply += delta.content;
        out.textContent = reply;
        $("log").scrollTop = $("log").scrollHeight;
      }
    }
    messages.push({ role: "assistant", content: reply });
    save();
  } catch (e) {
    if (e.name === "AbortError" && reply) {
      messages.push({ role: "assistant", content: reply });  // keep what was shown
      save();
    } else {
      messages.pop();  // the question was not answered: put it back in the box to retry
      save();
      render();
      $("input").value = text;
      showError(e.name === "AbortError" ? "stopped" : `Error ${e.message}`);
    }
  } finally {
    out.parentElement.classList.remove("streaming");
    controller = null;
    busy(false);
  }
}

$("composer").addEventListener("submit", (ev) => {
  ev.preventDefault();
  const text = $("input").value.trim();
  if (!text || controller) return;
  $("input").value = "";
  send(text);
});
$("input").addEventListener("keydown", (ev) => {
  if (ev.key === "Enter" && !ev.shiftKey) { ev.preventDefault(); $("composer").requestSubmit(); }
});
$("stop").addEventListener("click", () => controller && controller.abort());
$("new-chat").addEventListener("click", () => { messages = []; save(); render(); showError(""); });

// settings survive a reload too
const SETTINGS = "chatrlhf.settings";
const saved = JSON.parse(localStorage.getItem(SETTINGS) || "{}");
for (const id of ["system", "temperature", "max-tokens"]) {
  if (saved[id] !== undefined) $(id).value = saved[id];
  $(id).addEventListener("input", () => {
    saved[id] = $(id).value;
    localStorage.setItem(SETTINGS, JSON.stringify(saved));
  });
}

fetch("/v1/models").then((r) => r.json()).then((j) => { $("model").textContent = `model: ${j.data[0].id}`; })
  .catch(() => { $("model").textContent = "server unreachable"; });
render();
