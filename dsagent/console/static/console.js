// dsagent console: refresh fragments, confirm stop/restart, stream a chat. Vanilla, no build step.
"use strict";
const HEADERS = { "X-Dsagent-Console": "1" };

async function refresh(el) {
  const r = await fetch(el.dataset.refresh, { headers: HEADERS });
  if (r.ok) el.innerHTML = await r.text();
}
document.querySelectorAll("[data-refresh]").forEach((el) => setInterval(() => refresh(el), 2000));

document.addEventListener("click", async (ev) => {
  const b = ev.target.closest("button.stop, button.restart");
  if (!b) return;
  const verb = b.classList.contains("stop") ? "stop" : "restart";
  if (!confirm(`${verb} ${b.dataset.name}?`)) return;
  b.disabled = true;
  const r = await fetch(`/api/${verb}/${encodeURIComponent(b.dataset.name)}`, { method: "POST", headers: HEADERS });
  const out = await r.json();
  if (!r.ok || out.problem) alert(out.error || out.problem);
  const host = document.getElementById("deploy");
  if (host) refresh(host);
});

document.querySelectorAll("button.recipe").forEach((b) => b.addEventListener("click", () => {
  document.getElementById("prompt").value = b.dataset.prompt;
  document.getElementById("chat").requestSubmit();
}));

const chat = document.getElementById("chat");
if (chat) chat.addEventListener("submit", async (ev) => {
  ev.preventDefault();
  const answer = document.getElementById("answer"), reasoning = document.getElementById("reasoning");
  const box = document.getElementById("reasoning-box"), usage = document.getElementById("usage");
  answer.textContent = ""; reasoning.textContent = ""; usage.textContent = "";
  answer.dataset.chunks = "0"; answer.dataset.done = "0"; box.hidden = true;
  let chunks = 0, thoughts = 0, buffer = "";
  const temperature = document.getElementById("temperature").value.trim();
  const r = await fetch("/api/chat", {
    method: "POST", headers: { ...HEADERS, "Content-Type": "application/json" },
    body: JSON.stringify({ model: document.getElementById("model").value,
                           temperature: temperature === "" ? undefined : parseFloat(temperature),
                           messages: [{ role: "user", content: document.getElementById("prompt").value }] }),
  });
  if (!r.ok) { answer.textContent = (await r.json()).error; answer.dataset.done = "1"; return; }
  const reader = r.body.getReader(), decoder = new TextDecoder();
  for (;;) {
    const { value, done } = await reader.read();
    if (done) break;
    buffer += decoder.decode(value, { stream: true });
    let cut;
    while ((cut = buffer.indexOf("\n\n")) >= 0) {
      const event = buffer.slice(0, cut).trim(); buffer = buffer.slice(cut + 2);
      if (!event.startsWith("data:")) continue;
      const data = event.slice(5).trim();
      if (data === "[DONE]") continue;
      const msg = JSON.parse(data);
      if (msg.error) { answer.textContent += `\n[error] ${msg.error}`; continue; }
      const delta = (msg.choices && msg.choices[0] && msg.choices[0].delta) || {};
      const thought = delta.reasoning_content || delta.reasoning;
      if (thought) { box.hidden = false; reasoning.textContent += thought; thoughts += 1;
                     document.getElementById("reasoning-tokens").textContent = thoughts; }
      if (delta.content) { answer.textContent += delta.content; chunks += 1; answer.dataset.chunks = String(chunks); }
      if (msg.usage) usage.textContent = `${msg.usage.prompt_tokens} prompt + ${msg.usage.completion_tokens} completion tokens`;
    }
  }
  answer.dataset.done = "1";
});
