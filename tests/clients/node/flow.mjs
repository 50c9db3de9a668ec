// Full client flow with the official socket.io-client, against a running Colloquy.
// Env: COLLOQUY_URL, TOKEN_ALICE, TOKEN_BOB, CONVERSATION_ID. Exit 0 on success.
import { io } from "socket.io-client";
import assert from "node:assert/strict";

const url = process.env.COLLOQUY_URL;
const conversation_id = process.env.CONVERSATION_ID;
const sleep = (ms) => new Promise((r) => setTimeout(r, ms));

function connect(token) {
  const socket = io(url, { auth: { token }, reconnection: false });
  return new Promise((resolve, reject) => {
    socket.once("connect", () => resolve(socket));
    socket.once("connect_error", (e) => reject(e));
  });
}

function next(socket, event, timeout = 5000) {
  return new Promise((resolve, reject) => {
    const t = setTimeout(() => reject(new Error(`no ${event} within ${timeout} ms`)), timeout);
    socket.once(event, (data) => { clearTimeout(t); resolve(data); });
  });
}

async function main() {
  // A bad token is refused at the handshake with a clear message.
  await assert.rejects(connect("not-a-token"), (e) => /token/.test(e.message));

  const alice = await connect(process.env.TOKEN_ALICE);
  let bob = await connect(process.env.TOKEN_BOB);

  const aj = await alice.emitWithAck("join", { conversation_id });
  assert.equal(aj.success, true, JSON.stringify(aj));
  assert.equal(aj.data.conversation.id, conversation_id);
  const bj = await bob.emitWithAck("join", { conversation_id });
  assert.equal(bj.success, true);

  // Send with ack; the other member receives the broadcast, the sender does not.
  let aliceGotOwn = false;
  alice.on("messageBroadcast", () => { aliceGotOwn = true; });
  const incoming = next(bob, "messageBroadcast");
  const ack = await alice.emitWithAck("chat_message", { conversation_id, message: "hello bob", messageId: "node-1" });
  assert.equal(ack.success, true, JSON.stringify(ack));
  assert.equal(ack.data.seq, 1);
  const b = await incoming;
  assert.equal(b.text, "hello bob");
  assert.equal(b.senderId, "alice");
  assert.equal(b.seq, 1);
  assert.equal(b.roomId, b.channelId);
  assert.equal(b.serverId, "00000000-0000-0000-0000-000000000000");
  assert.equal(typeof b.createdAt, "number");
  assert.equal(b.clientMessageId, "node-1");

  // Retrying the same messageId returns the same message.
  const again = await alice.emitWithAck("chat_message", { conversation_id, message: "hello bob", messageId: "node-1" });
  assert.equal(again.data.id, ack.data.id);

  // Typing is relayed to others.
  const typing = next(bob, "typing");
  alice.emit("typing", { conversation_id, is_typing: true });
  const t = await typing;
  assert.equal(t.user_id, "alice");
  assert.equal(t.is_typing, true);

  // mark_read acks the horizon and tells the room.
  const read = next(alice, "messagesRead");
  const mr = await bob.emitWithAck("mark_read", { conversation_id });
  assert.equal(mr.data.last_read_seq, 1);
  const r = await read;
  assert.equal(r.user_id, "bob");

  // Errors: an ack when asked for, an `error` event otherwise.
  const bad = await alice.emitWithAck("chat_message", { conversation_id, message: 42 });
  assert.equal(bad.success, false);
  assert.equal(bad.code, "VALIDATION_ERROR");
  const err = next(alice, "error");
  alice.emit("chat_message", { conversation_id: "00000000-0000-0000-0000-000000000000", message: "x" });
  assert.equal((await err).code, "NOT_FOUND");

  // Bob drops; Alice sends three; Bob reconnects and fills exactly the gap.
  bob.disconnect();
  for (const i of [2, 3, 4]) {
    const a = await alice.emitWithAck("chat_message", { conversation_id, message: `missed ${i}`, messageId: `node-${i}` });
    assert.equal(a.data.seq, i);
  }
  bob = await connect(process.env.TOKEN_BOB);
  const rejoin = await bob.emitWithAck("join", { conversation_id, since_seq: 1 });
  assert.deepEqual(rejoin.data.messages.map((m) => m.seq), [2, 3, 4]);
  assert.deepEqual(rejoin.data.messages.map((m) => m.text), ["missed 2", "missed 3", "missed 4"]);

  await sleep(200);
  assert.equal(aliceGotOwn, false, "the sender must not receive its own broadcast");
  alice.disconnect();
  bob.disconnect();
  console.log("node flow ok");
}

main().then(() => process.exit(0), (e) => { console.error(e); process.exit(1); });
