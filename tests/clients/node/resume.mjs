// Resume after a dropped connection and the inbox channel (contract §4), with the official
// socket.io-client, against a running Colloquy.
// Env: COLLOQUY_URL, TOKEN_ALICE, TOKEN_BOB, CONVERSATION_ID (alice's, with bob: the resume
// flows), INBOX_CONVERSATION_ID (alice's, with bob, no messages yet: the inbox).
// Exit 0 on success; on failure a message saying what was expected and what came.
import { io } from "socket.io-client";
import assert from "node:assert/strict";

const url = process.env.COLLOQUY_URL;
const cid = process.env.CONVERSATION_ID;
const inboxCid = process.env.INBOX_CONVERSATION_ID;
const TOKEN_ALICE = process.env.TOKEN_ALICE;
const TOKEN_BOB = process.env.TOKEN_BOB;
for (const [k, v] of Object.entries({ url, cid, inboxCid, TOKEN_ALICE, TOKEN_BOB })) {
  assert.ok(v, `missing env ${k}`);
}

const TIMEOUT = 15000;
const range = (from, to) => Array.from({ length: Math.max(0, to - from + 1) }, (_, i) => from + i);

// ---------------------------------------------------------------------------------------
// Helpers

/** The next `event` on `socket` (rejects after `timeout`). */
function next(socket, event, timeout = TIMEOUT) {
  return new Promise((resolve, reject) => {
    const t = setTimeout(() => reject(new Error(`no ${event} within ${timeout} ms`)), timeout);
    socket.once(event, (data) => { clearTimeout(t); resolve(data); });
  });
}

/** Resolves with `check()`'s first truthy value, re-checked after every event the socket
 * receives (and on connect/disconnect); no polling, no sleeps. */
function until(socket, what, check, timeout = TIMEOUT) {
  return new Promise((resolve, reject) => {
    const listeners = [];
    const done = (f) => {
      clearTimeout(t);
      socket.offAny(probe);
      for (const [e, l] of listeners) socket.off(e, l);
      f();
    };
    const probe = () => {
      let v;
      try { v = check(); } catch (e) { return done(() => reject(e)); }
      if (v) done(() => resolve(v));
    };
    const t = setTimeout(() => done(() => reject(new Error(`${what}: not within ${timeout} ms`))), timeout);
    socket.onAny(probe);
    for (const e of ["connect", "disconnect"]) { listeners.push([e, probe]); socket.on(e, probe); }
    probe();
  });
}

function connect(token) {
  const socket = io(url, { auth: { token }, reconnection: false });
  return new Promise((resolve, reject) => {
    socket.once("connect", () => resolve(socket));
    socket.once("connect_error", (e) => reject(new Error(`connect: ${e.message}`)));
  });
}

let clientIds = 0;
async function rest(method, path, token, body) {
  const r = await fetch(`${url}/api/v1/communication${path}`, {
    method,
    headers: { authorization: `Bearer ${token}`, "content-type": "application/json" },
    body: body === undefined ? undefined : JSON.stringify(body),
  });
  const text = await r.text();
  let json;
  try { json = JSON.parse(text); } catch { json = text; }
  return { status: r.status, body: json };
}

async function sendRest(token, conversation, text) {
  const r = await rest("POST", `/messages/conversations/${conversation}`, token, {
    text, client_message_id: `node-resume-${++clientIds}`,
  });
  assert.equal(r.status, 201, `send over REST: ${JSON.stringify(r.body)}`);
  return r.body.data;
}

// ---------------------------------------------------------------------------------------
// 1. Resume

/** Alice is the only sender in `cid`: her seqs run 1, 2, 3… */
let lastSent = 0;
async function aliceSends() {
  const m = await sendRest(TOKEN_ALICE, cid, `msg ${lastSent + 1}`);
  assert.equal(m.seq, lastSent + 1, `alice's sends are numbered in order: ${JSON.stringify(m)}`);
  lastSent = m.seq;
  return m;
}

/** Sends a stream around a drop: 5 messages, `drop()`, messages until bob is back
 * (`back` resolves; at most 100), then 10 more right away — while the server is still
 * putting bob back. Returns how many went out before the client saw itself reconnected. */
async function streamAround(drop, back) {
  for (let i = 0; i < 5; i++) await aliceSends();
  drop();
  let isBack = false;
  back.then(() => { isBack = true; }, () => {});
  let away = 0;
  while (!isBack && away < 100) { await aliceSends(); away++; }
  await back;
  for (let i = 0; i < 10; i++) await aliceSends();
  return away;
}

async function resumeFlows() {
  // Bob's app: the seqs it has rendered, in arrival order, and how it resumes.
  const seen = [];
  const maxSeen = () => (seen.length ? Math.max(...seen) : 0);
  let mode = "none"; // how the next reconnect resumes: "handshake" | "event" | "none"
  const handshakes = []; // what each CONNECT's auth carried as resume position (or null)
  const resumedLog = []; // each `resumed` event with the seqs bob had rendered at that moment
  const errors = [];

  const bob = io(url, {
    // The function form: socket.io-client calls it for every (re)connect, so the resume
    // position is always the last seq the app has rendered.
    auth: (cb) => {
      const last = maxSeen();
      if (mode === "handshake" && last > 0) {
        handshakes.push(last);
        cb({ token: TOKEN_BOB, resume: { [cid]: last } });
      } else {
        handshakes.push(null);
        cb({ token: TOKEN_BOB });
      }
    },
    reconnectionDelay: 100,
    reconnectionDelayMax: 1000,
  });
  bob.on("messageBroadcast", (m) => {
    if (m.conversationId !== cid) return;
    seen.push(m.seq);
  });
  bob.on("resumed", (r) => resumedLog.push({ r, seenAt: [...seen] }));
  bob.on("error", (e) => errors.push(e));
  bob.on("connect_error", (e) => errors.push({ connect_error: e.message }));
  await next(bob, "connect");

  // -- Live, joined: 1..3 arrive in order with the documented fields.
  const joined = await bob.timeout(TIMEOUT).emitWithAck("join", { conversation_id: cid });
  assert.equal(joined.success, true, `join: ${JSON.stringify(joined)}`);
  const firstThree = [];
  bob.on("messageBroadcast", function keep(m) {
    firstThree.push(m);
    if (firstThree.length === 3) bob.off("messageBroadcast", keep);
  });
  for (let i = 0; i < 3; i++) await aliceSends();
  await until(bob, "bob receives seq 1..3 live", () => maxSeen() >= 3);
  assert.deepEqual(seen, [1, 2, 3], "live broadcasts before any drop");
  for (const [i, m] of firstThree.entries()) {
    assert.equal(m.conversationId, cid);
    assert.equal(m.seq, i + 1);
    assert.equal(m.text, `msg ${i + 1}`);
    assert.equal(m.senderId, "alice");
  }

  // -- A. The transport drops; alice sends 3 while bob is away; bob reconnects with
  //       auth.resume = {cid: 3} and gets 4, 5, 6, then `resumed`.
  mode = "handshake";
  bob.io.reconnection(false); // bob comes back when the test says (the messages go out first)
  const goneA = next(bob, "disconnect");
  bob.io.engine.close(); // the engine.io transport goes away under the socket
  const reasonA = await goneA;
  assert.equal(bob.connected, false);
  for (let i = 0; i < 3; i++) await aliceSends(); // seq 4, 5, 6
  const resumedA = next(bob, "resumed");
  bob.connect();
  const rA = await resumedA;
  bob.io.reconnection(true);
  assert.equal(handshakes.at(-1), 3, "the reconnect's auth carried resume {cid: 3}");
  assert.deepEqual(rA.failed, [], `resumed.failed: ${JSON.stringify(rA)}`);
  assert.equal(rA.conversations.length, 1, JSON.stringify(rA));
  assert.deepEqual(
    rA.conversations[0],
    { conversation_id: cid, from_seq: 3, last_seq: 6, delivered: 3, complete: true },
    "resumed after a drop with 3 missed",
  );
  assert.deepEqual(resumedLog.at(-1).seenAt, range(1, 6), "missed 4..6 arrive before `resumed`, in order, once each");
  // Back in the room: a new message arrives live.
  await aliceSends(); // 7
  await until(bob, "bob receives seq 7 live after the resume", () => maxSeen() >= 7);
  assert.deepEqual(seen, range(1, 7));

  // -- B. The transport drops in the middle of a stream; socket.io-client reconnects by
  //       itself, the auth function names the last seq bob saw; alice never stops.
  const droppedAtB = { seen: null };
  const backB = next(bob, "connect");
  const resumedB = next(bob, "resumed", 3 * TIMEOUT);
  const awayB = await streamAround(() => {
    droppedAtB.seen = [...seen];
    bob.io.engine.close();
  }, backB);
  const rB = await resumedB;
  await until(bob, `bob receives everything up to ${lastSent} after the mid-stream resume`, () => maxSeen() >= lastSent);
  const fromB = handshakes.at(-1);
  assert.equal(fromB, Math.max(...droppedAtB.seen), "the auth function named the last seq seen before the drop");
  assert.deepEqual(rB.failed, [], JSON.stringify(rB));
  assert.equal(rB.conversations.length, 1, JSON.stringify(rB));
  const cB = rB.conversations[0];
  assert.equal(cB.conversation_id, cid);
  assert.equal(cB.from_seq, fromB);
  assert.equal(cB.complete, true);
  assert.ok(cB.last_seq >= cB.from_seq && cB.delivered <= cB.last_seq - cB.from_seq, JSON.stringify(cB));
  const atB = resumedLog.at(-1).seenAt;
  assert.deepEqual(atB, range(1, atB.length), "before `resumed`: every seq once, in order");
  assert.ok(atB.length >= cB.last_seq, `\`resumed\` (last_seq ${cB.last_seq}) came after the missed messages (bob had ${atB.length})`);
  assert.deepEqual(seen, range(1, lastSent), "mid-stream handshake resume: exactly 1..N, once each, in order");

  // -- C. The event form: the app reconnects without resume in auth and emits
  //       `resume {conversations: {cid: last}}` from its connect handler; the ack comes
  //       after the missed broadcasts.
  mode = "event";
  const resumedEvents = resumedLog.length;
  const droppedAtC = { seen: null };
  const ackC = new Promise((resolve, reject) => {
    bob.once("connect", () => {
      const from = maxSeen();
      bob.timeout(TIMEOUT).emit("resume", { conversations: { [cid]: from } }, (err, ack) => {
        if (err) reject(new Error(`resume ack: ${err.message}`));
        else resolve({ from, ack, seenAt: [...seen] });
      });
    });
  });
  const backC = next(bob, "connect");
  const awayC = await streamAround(() => {
    droppedAtC.seen = [...seen];
    bob.io.engine.close();
  }, backC);
  const { from: fromC, ack, seenAt: atC } = await ackC;
  await until(bob, `bob receives everything up to ${lastSent} after the resume event`, () => maxSeen() >= lastSent);
  assert.equal(handshakes.at(-1), null, "the event-form reconnect carried no resume in auth");
  assert.equal(fromC, Math.max(...droppedAtC.seen));
  assert.equal(ack.success, true, `resume ack: ${JSON.stringify(ack)}`);
  assert.deepEqual(ack.data.failed, [], JSON.stringify(ack));
  assert.equal(ack.data.conversations.length, 1, JSON.stringify(ack));
  const cC = ack.data.conversations[0];
  assert.equal(cC.conversation_id, cid);
  assert.equal(cC.from_seq, fromC);
  assert.equal(cC.complete, true);
  assert.ok(cC.last_seq >= cC.from_seq && cC.delivered <= cC.last_seq - cC.from_seq, JSON.stringify(cC));
  assert.deepEqual(atC, range(1, atC.length), "before the resume ack: every seq once, in order");
  assert.ok(atC.length >= cC.last_seq, `the resume ack (last_seq ${cC.last_seq}) came after the missed messages (bob had ${atC.length})`);
  assert.equal(resumedLog.length, resumedEvents, "no `resumed` event for a reconnect without auth.resume");

  // Whole session: every message exactly once, in seq order, across three drops.
  assert.deepEqual(seen, range(1, lastSent), "bob's whole session: exactly 1..N, once each, in order");
  assert.deepEqual(errors, [], "no error events");
  bob.disconnect();
  return { reasonA, awayB, awayC, total: lastSent, fromB, lastB: cB.last_seq, deliveredB: cB.delivered, fromC, lastC: cC.last_seq, deliveredC: cC.delivered };
}

// ---------------------------------------------------------------------------------------
// 2. Inbox channel

async function inboxFlow() {
  const devices = [];
  for (const name of ["phone", "laptop"]) {
    const s = await connect(TOKEN_ALICE);
    const events = [];
    s.onAny((event, data) => events.push({ event, data }));
    devices.push({ name, s, events });
  }
  const updates = (d) => d.events.filter((e) => e.event === "inboxUpdated" && e.data.conversation_id === inboxCid).map((e) => e.data);

  // Bob writes twice; neither of alice's sockets joined anything.
  await sendRest(TOKEN_BOB, inboxCid, "inbox one");
  await sendRest(TOKEN_BOB, inboxCid, "inbox two");
  for (const d of devices) {
    await until(d.s, `${d.name}: inboxUpdated for message 2`, () => updates(d).some((u) => u.last_message?.seq === 2));
    const u = updates(d);
    // Coalesced (at most one per conversation every 100 ms), each describing the state
    // as it was: [last_message.seq, last_seq, unread_count] agree, and it ends at 2.
    for (const x of u) {
      assert.equal(x.last_message?.seq, x.last_seq, `${d.name}: last_message and last_seq agree: ${JSON.stringify(x)}`);
      assert.equal(x.unread_count, x.last_seq, `${d.name}: alice read nothing yet: ${JSON.stringify(x)}`);
    }
    const last = u[u.length - 1];
    assert.deepEqual([last.last_seq, last.unread_count], [2, 2], `${d.name}: ${JSON.stringify(u)}`);
    assert.equal(last.last_message.text, "inbox two");
    assert.equal(last.last_message.sender_id, "bob");
    assert.equal(d.events.filter((e) => e.event === "messageBroadcast").length, 0, `${d.name} is not joined: no broadcasts`);
  }

  // A read on the phone: the laptop's unread count follows (and the phone's own).
  const [phone, laptop] = devices;
  const mr = await phone.s.timeout(TIMEOUT).emitWithAck("mark_read", { conversation_id: inboxCid });
  assert.equal(mr.success, true, `mark_read: ${JSON.stringify(mr)}`);
  assert.equal(mr.data.last_read_seq, 2);
  assert.equal(mr.data.unread_count, 0);
  for (const d of [laptop, phone]) {
    await until(d.s, `${d.name}: inboxUpdated with unread_count 0 after the read on the phone`, () => updates(d).some((u) => u.unread_count === 0));
    const synced = updates(d).find((u) => u.unread_count === 0);
    assert.deepEqual([synced.last_seq, synced.unread_count], [2, 0], `${d.name}: ${JSON.stringify(synced)}`);
  }

  // Bob adds alice to a new conversation: both devices hear of it.
  const created = await rest("POST", "/conversations", TOKEN_BOB, { name: "inbox: added", participants: ["alice"] });
  assert.equal(created.status, 201, JSON.stringify(created.body));
  const added = created.body.conversation_id;
  assert.ok(added);
  for (const d of devices) {
    const e = await until(d.s, `${d.name}: conversationAdded`, () =>
      d.events.find((x) => x.event === "conversationAdded" && x.data.conversation_id === added));
    assert.equal(e.data.conversation.id, added, JSON.stringify(e.data));
    assert.ok(e.data.conversation.participants.includes("alice"), JSON.stringify(e.data.conversation));
    assert.equal(e.data.conversation.name, "inbox: added");
  }
  for (const d of devices) d.s.disconnect();
}

async function main() {
  const r = await resumeFlows();
  console.log(`node resume ok: ${JSON.stringify(r)}`);
  await inboxFlow();
  console.log("node inbox ok");
}

main().then(() => process.exit(0), (e) => { console.error(e); process.exit(1); });
