// Replays the seed 000 web client's real-time side (elizaOS `socket-io-manager-v0` with the
// seed's §5.2 conversation changes) with the official socket.io-client, against a running
// Colloquy. An agent on a second socket answers, as the agent runtime would.
// Env: COLLOQUY_URL, TOKEN_USER (empty: connect without a token, SOCKET_ALLOW_ANONYMOUS),
// TOKEN_AGENT, ENTITY_ID, AGENT_ID, ROOM_ID, CONVERSATION_ID.
// Prints one JSON line {user_message, agent_message} (the broadcasts) and exits 0 on success.
import { io } from "socket.io-client";
import assert from "node:assert/strict";
import { randomUUID } from "node:crypto";

const env = process.env;
const url = env.COLLOQUY_URL;
const entityId = env.ENTITY_ID;
const agentId = env.AGENT_ID;
const roomId = env.ROOM_ID;
const conversationId = env.CONVERSATION_ID;

// `SOCKET_MESSAGE_TYPE` from @elizaos/core and the web client's constants.
const SOCKET_MESSAGE_TYPE = { ROOM_JOINING: 1, SEND_MESSAGE: 2 };
const USER_NAME = "User";
const CHAT_SOURCE = "client_chat";
const SERVER_ID = "00000000-0000-0000-0000-000000000000";
const worldId = randomUUID(); // WorldManager.getWorldId(): a UUID kept in localStorage

const sleep = (ms) => new Promise((r) => setTimeout(r, ms));

/** Connects like the seed (`io(url, {autoConnect, reconnection})`, default transports:
 * long-polling, then upgrade) plus the token of contract §2; records every event. */
function connect(token) {
  const socket = io(url, {
    autoConnect: true,
    reconnection: false,
    ...(token ? { auth: { token } } : {}),
  });
  const seen = [];
  socket.onAny((event, data) => seen.push({ event, data }));
  return new Promise((resolve, reject) => {
    socket.once("connect", () => resolve({ socket, seen }));
    socket.once("connect_error", (e) => reject(e));
  });
}

/** The first recorded `event` matching `pred`, waiting up to `timeout` ms for it. */
async function waitFor(client, event, pred = () => true, timeout = 5000) {
  const until = Date.now() + timeout;
  for (;;) {
    const hit = client.seen.find((e) => e.event === event && pred(e.data));
    if (hit) return hit.data;
    if (Date.now() > until) {
      throw new Error(`no ${event} within ${timeout} ms; saw ${JSON.stringify(client.seen)}`);
    }
    await sleep(20);
  }
}

/** What the seed reads from a `messageBroadcast`: the v0 manager keeps only broadcasts
 * whose `roomId` is an active room and logs senderId/senderName/text/createdAt/source; the
 * seed's own local broadcast (§5.2) adds channelId, serverId and conversationId. */
function assertSeedBroadcast(b, senderId, text) {
  const shown = JSON.stringify(b);
  assert.equal(b.roomId, roomId, `roomId must be the active room: ${shown}`);
  assert.equal(b.channelId, roomId, `channelId: ${shown}`);
  assert.equal(b.serverId, SERVER_ID, `serverId: ${shown}`);
  assert.equal(b.conversationId, conversationId, `conversationId: ${shown}`);
  assert.equal(b.senderId, senderId, `senderId: ${shown}`);
  assert.equal(typeof b.senderName, "string", `senderName: ${shown}`);
  assert.equal(b.text, text, `text: ${shown}`);
  assert.equal(typeof b.createdAt, "number", `createdAt (ms): ${shown}`);
  assert.ok("source" in b, `source: ${shown}`);
  assert.equal(typeof b.id, "string", `id: ${shown}`);
}

async function main() {
  const user = await connect(env.TOKEN_USER);
  const agent = await connect(env.TOKEN_AGENT);
  const joined = await agent.socket.emitWithAck("join", { conversation_id: conversationId });
  assert.equal(joined.success, true, JSON.stringify(joined));

  // socketIOManager.joinRoom(roomId): no ack callback.
  user.socket.emit("message", {
    type: SOCKET_MESSAGE_TYPE.ROOM_JOINING,
    payload: {
      roomId,
      entityId,
    },
  });
  await sleep(300); // the user reads the page before typing

  // socketIOManager.sendMessage(input, roomId, CHAT_SOURCE, conversationId), exactly.
  const text = "Hello agent! What can you do?";
  const messageId = randomUUID();
  user.socket.emit("message", {
    type: SOCKET_MESSAGE_TYPE.SEND_MESSAGE,
    payload: {
      senderId: entityId,
      senderName: USER_NAME,
      message: text,
      roomId,
      channelId: roomId,
      serverId: "00000000-0000-0000-0000-000000000000",
      worldId,
      messageId,
      source: CHAT_SOURCE,
      conversationId,
    },
  });

  // The other member hears it with what the seed's broadcast carries.
  const heard = await waitFor(agent, "messageBroadcast", (d) => d.text === text);
  assertSeedBroadcast(heard, entityId, text);
  assert.equal(heard.senderName, USER_NAME);
  assert.equal(heard.source, CHAT_SOURCE);
  assert.equal(heard.clientMessageId, messageId);

  // Contract §4: a type-2 send with a messageId also comes back to the sending socket,
  // marked with its clientMessageId (so a client can match it to its local echo).
  const own = await waitFor(user, "messageBroadcast", (d) => d.text === text);
  assert.equal(own.clientMessageId, messageId, JSON.stringify(own));
  assert.equal(own.id, heard.id);

  // The agent answers; the seed renders it and, on messageComplete for its room, marks read.
  const replyText = "I can search, summarise and schedule.";
  const ack = await agent.socket.emitWithAck("chat_message", {
    conversation_id: conversationId,
    message: replyText,
    messageId: randomUUID(),
  });
  assert.equal(ack.success, true, JSON.stringify(ack));
  const reply = await waitFor(user, "messageBroadcast", (d) => d.text === replyText);
  assertSeedBroadcast(reply, agentId, replyText);
  const done = await waitFor(user, "messageComplete");
  assert.equal(done.channelId, roomId, JSON.stringify(done)); // extractChannelId(data) === roomId
  assert.equal(done.roomId, roomId, JSON.stringify(done));

  await sleep(200);
  const texts = user.seen.filter((e) => e.event === "messageBroadcast").map((e) => e.data.text);
  assert.deepEqual(texts, [text, replyText], "the user's socket sees each message once");
  const errors = user.seen.filter((e) => e.event === "error");
  assert.deepEqual(errors, [], "the seed's payloads raise no error event");

  user.socket.disconnect();
  agent.socket.disconnect();
  console.log(JSON.stringify({ user_message: heard, agent_message: reply }));
}

main().then(() => process.exit(0), (e) => { console.error(e); process.exit(1); });
