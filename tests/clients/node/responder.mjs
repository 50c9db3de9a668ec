// An agent responder seen through the official socket.io-client: typing, then
// messageStream deltas, then the stored reply (messageBroadcast), then messageComplete.
// Env: COLLOQUY_URL, TOKEN_ALICE, CONVERSATION_ID (alice with agent "helper", whose
// responder streams a reply). Exit 0 on success.
import { io } from "socket.io-client";
import assert from "node:assert/strict";

const url = process.env.COLLOQUY_URL;
const conversation_id = process.env.CONVERSATION_ID;

const socket = io(url, { auth: { token: process.env.TOKEN_ALICE }, reconnection: false });
await new Promise((resolve, reject) => {
  socket.once("connect", resolve);
  socket.once("connect_error", reject);
});
const joined = await socket.emitWithAck("join", { conversation_id });
assert.equal(joined.success, true, JSON.stringify(joined));

const seen = [];
for (const event of ["typing", "messageStream", "messageBroadcast", "messageComplete", "error"]) {
  socket.on(event, (data) => seen.push([event, data]));
}
const complete = new Promise((resolve, reject) => {
  const t = setTimeout(() => reject(new Error(`no messageComplete: ${JSON.stringify(seen)}`)), 10000);
  socket.once("messageComplete", () => { clearTimeout(t); resolve(); });
});
const ack = await socket.emitWithAck("chat_message", { conversation_id, message: "hello agent", messageId: "node-r1" });
assert.equal(ack.success, true, JSON.stringify(ack));
await complete;

const names = seen.map(([e]) => e);
assert.equal(names[0], "typing", names.join(","));
assert.equal(seen[0][1].user_id, "helper");
assert.equal(seen[0][1].is_typing, true);
const deltas = seen.filter(([e]) => e === "messageStream").map(([, d]) => d);
assert.ok(deltas.length >= 3, names.join(","));
assert.ok(deltas.every((d) => d.stream_id === deltas[0].stream_id && d.conversation_id === conversation_id));
const text = deltas.map((d) => d.delta).join("");
const reply = seen.find(([e]) => e === "messageBroadcast")[1];
assert.equal(reply.senderId, "helper");
assert.equal(reply.text, text);
assert.ok(names.lastIndexOf("messageStream") < names.indexOf("messageBroadcast"), names.join(","));
assert.ok(names.indexOf("messageBroadcast") < names.indexOf("messageComplete"), names.join(","));
assert.ok(!names.includes("error"), names.join(","));
console.log(`responder: ${deltas.length} deltas, reply "${text}"`);
socket.close();
