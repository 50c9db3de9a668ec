"""Resume after a dropped connection and the inbox channel (contract §4) with python-socketio.

Env: COLLOQUY_URL, TOKEN_ALICE, TOKEN_BOB, CONVERSATION_ID (alice's, with bob: the resume
flows), INBOX_CONVERSATION_ID (alice's, with bob, no messages yet: the inbox).
Exit 0 on success; on failure a message saying what was expected and what came.

python-socketio's threaded Client runs every incoming event's handler on a thread of its
own (one per packet, see miguelgrinberg/python-socketio#382), so the order its handlers
run in is not the order the packets came in. What the app's handlers saw is checked as a
set (every seq exactly once); the ORDER is checked on the wire: engine.io's read loop logs
each packet synchronously as it reads it, and a logging handler on the client's
`engineio_logger` records them in that order.
"""
import logging
import os
import socket
import sys
import threading

import requests
import socketio
from socketio import packet as sio_packet

URL = os.environ["COLLOQUY_URL"]
CID = os.environ["CONVERSATION_ID"]
INBOX_CID = os.environ["INBOX_CONVERSATION_ID"]
TOKEN_ALICE = os.environ["TOKEN_ALICE"]
TOKEN_BOB = os.environ["TOKEN_BOB"]
TIMEOUT = 15
API = f"{URL}/api/v1/communication"


class WireTap(logging.Handler):
    """Socket.IO packets in the order engine.io read them off the connection."""

    def __init__(self):
        super().__init__(logging.INFO)
        self.packets = []  # (packet_type, id, data)
        self.packets_lock = threading.Lock()  # (not `lock`: logging.Handler has its own)

    def emit(self, record):
        if record.msg != "Received packet %s data %s" or record.args[0] != "MESSAGE":
            return
        pkt = sio_packet.Packet(encoded_packet=record.args[1])
        with self.packets_lock:
            self.packets.append((pkt.packet_type, pkt.id, pkt.data))

    def snapshot(self):
        with self.packets_lock:
            return list(self.packets)


class Device:
    """A python-socketio Client whose handled events are recorded (in the order the
    handlers ran) next to the order its packets came off the wire."""

    def __init__(self, name, events, **options):
        self.name = name
        self.tap = WireTap()
        log = logging.getLogger(f"colloquy.wire.{name}")
        log.setLevel(logging.INFO)
        log.propagate = False
        log.addHandler(self.tap)
        self.sio = socketio.Client(engineio_logger=log, **options)
        self.cond = threading.Condition()
        self.handled = []  # (event, data)
        for event in events:
            self.sio.on(event, self._recorder(event))

    def _recorder(self, event):
        def record(*args):
            with self.cond:
                self.handled.append((event, args[0] if args else None))
                self.cond.notify_all()
        return record

    def wait(self, what, check, timeout=TIMEOUT):
        """`check()`'s first truthy value, re-checked after every handled event."""
        with self.cond:
            value = self.cond.wait_for(check, timeout)
        if not value:
            raise AssertionError(f"{self.name}: {what}: not within {timeout} s")
        return value

    def events(self, name):
        with self.cond:
            return [d for (e, d) in self.handled if e == name]

    def wire(self):
        """[(kind, data)] in wire order: ("event", [name, payload]) or ("ack", [payload])."""
        out = []
        for (ptype, _id, data) in self.tap.snapshot():
            if ptype == sio_packet.EVENT:
                out.append(("event", data))
            elif ptype == sio_packet.ACK:
                out.append(("ack", data))
        if not self.tap.snapshot():
            raise AssertionError(f"{self.name}: the wire tap saw no packets (did engineio's log format change?)")
        return out


http = requests.Session()
client_ids = iter(range(1, 10**9))


def rest(method, path, token, body=None):
    r = http.request(method, f"{API}{path}", json=body, headers={"Authorization": f"Bearer {token}"}, timeout=TIMEOUT)
    try:
        return r.status_code, r.json()
    except ValueError:
        return r.status_code, r.text


def send_rest(token, conversation, text):
    status, body = rest("POST", f"/messages/conversations/{conversation}", token,
                        {"text": text, "client_message_id": f"py-resume-{next(client_ids)}"})
    assert status == 201, f"send over REST: {status} {body}"
    return body["data"]


# ---------------------------------------------------------------------------------------
# 1. Resume

class Alice:
    """The only sender in CID: her seqs run 1, 2, 3…"""

    def __init__(self):
        self.last = 0

    def send(self):
        m = send_rest(TOKEN_ALICE, CID, f"msg {self.last + 1}")
        assert m["seq"] == self.last + 1, f"alice's sends are numbered in order: {m}"
        self.last = m["seq"]
        return m

    def stream_around(self, drop, back):
        """5 messages, `drop()`, messages until bob is back (`back` is set; at most 100),
        then 10 more right away, while the server is still putting bob back. Returns how
        many went out before the client saw itself reconnected."""
        for _ in range(5):
            self.send()
        drop()
        away = 0
        while not back.is_set() and away < 100:
            self.send()
            away += 1
        assert back.wait(TIMEOUT), "bob did not reconnect"
        for _ in range(10):
            self.send()
        return away


def seqs_on_wire(bob):
    return [d[1]["seq"] for (k, d) in bob.wire()
            if k == "event" and d[0] == "messageBroadcast" and d[1].get("conversationId") == CID]


def broadcasts_before(bob, is_it):
    """How many broadcasts of CID came off the wire before the first packet `is_it` accepts."""
    n = 0
    for (kind, data) in bob.wire():
        if is_it(kind, data):
            return n
        if kind == "event" and data[0] == "messageBroadcast" and data[1].get("conversationId") == CID:
            n += 1
    raise AssertionError("the packet is not on the wire")


def check_outcome(outcome, from_seq, what):
    assert outcome["failed"] == [], f"{what}: {outcome}"
    assert len(outcome["conversations"]) == 1, f"{what}: {outcome}"
    c = outcome["conversations"][0]
    assert c["conversation_id"] == CID, f"{what}: {c}"
    assert c["from_seq"] == from_seq, f"{what}: from_seq {c} (expected {from_seq})"
    assert c["complete"] is True, f"{what}: {c}"
    assert c["last_seq"] >= c["from_seq"] and c["delivered"] <= c["last_seq"] - c["from_seq"], f"{what}: {c}"
    return c


def resume_flows():
    alice = Alice()
    bob = Device("bob", ["messageBroadcast", "resumed", "error", "connect", "disconnect", "connect_error"],
                 reconnection=True, reconnection_delay=0.2, reconnection_delay_max=1, randomization_factor=0)
    state = {"mode": "none", "handshakes": []}

    def seen():
        return [m["seq"] for m in bob.events("messageBroadcast") if m.get("conversationId") == CID]

    def max_seen():
        return max(seen(), default=0)

    def auth():
        # Called by python-socketio for every (re)connect: the resume position is always
        # the last seq the app has rendered.
        last = max_seen()
        if state["mode"] == "handshake" and last > 0:
            state["handshakes"].append(last)
            return {"token": TOKEN_BOB, "resume": {CID: last}}
        state["handshakes"].append(None)
        return {"token": TOKEN_BOB}

    bob.sio.connect(URL, auth=auth, wait_timeout=TIMEOUT)
    assert bob.sio.eio.current_transport == "websocket", bob.sio.eio.current_transport

    # -- Live, joined: 1..3 arrive with the documented fields.
    joined = bob.sio.call("join", {"conversation_id": CID}, timeout=TIMEOUT)
    assert joined["success"], f"join: {joined}"
    for _ in range(3):
        alice.send()
    bob.wait("bob receives seq 1..3 live", lambda: max_seen() >= 3)
    assert sorted(seen()) == [1, 2, 3], seen()
    for m in bob.events("messageBroadcast"):
        assert m["conversationId"] == CID and m["text"] == f"msg {m['seq']}" and m["senderId"] == "alice", m

    # -- A. Bob disconnects; alice sends 3 while bob is away; bob reconnects with
    #       auth.resume = {CID: 3} and gets 4, 5, 6, then `resumed`.
    state["mode"] = "handshake"
    bob.sio.disconnect()
    for _ in range(3):
        alice.send()  # 4, 5, 6
    bob.sio.connect(URL, auth=auth, wait_timeout=TIMEOUT)
    r_a = bob.wait("`resumed` after the reconnect", lambda: bob.events("resumed"))[-1]
    bob.wait("bob's handlers see 4..6", lambda: len(seen()) >= 6)
    assert state["handshakes"][-1] == 3, state
    assert r_a == {"conversations": [{"conversation_id": CID, "from_seq": 3, "last_seq": 6, "delivered": 3,
                                      "complete": True}], "failed": []}, f"resumed: {r_a}"
    assert sorted(seen()) == list(range(1, 7)), seen()
    assert seqs_on_wire(bob) == list(range(1, 7)), seqs_on_wire(bob)
    assert broadcasts_before(bob, lambda k, d: k == "event" and d[0] == "resumed") == 6, \
        "`resumed` comes after the missed 4..6"
    alice.send()  # 7: bob is back in the room
    bob.wait("bob receives seq 7 live after the resume", lambda: max_seen() >= 7)

    # -- B. The transport drops mid-stream (the TCP connection is cut under the websocket);
    #       python-socketio reconnects by itself, the auth callable names the last seq bob
    #       saw; alice never stops.
    back = threading.Event()
    connects = len(bob.events("connect"))
    resumed_before = len(bob.events("resumed"))
    watcher = threading.Thread(target=lambda: bob.wait(
        "reconnect", lambda: len(bob.events("connect")) > connects, 3 * TIMEOUT) and back.set(), daemon=True)
    watcher.start()
    dropped = {}

    def drop():
        dropped["seen"] = seen()
        assert bob.sio.eio.current_transport == "websocket"
        bob.sio.eio.ws.sock.shutdown(socket.SHUT_RDWR)

    away_b = alice.stream_around(drop, back)
    r_b = bob.wait("`resumed` after the mid-stream reconnect",
                   lambda: len(bob.events("resumed")) > resumed_before and bob.events("resumed"), 3 * TIMEOUT)[-1]
    bob.wait(f"bob receives everything up to {alice.last}", lambda: max_seen() >= alice.last)
    from_b = state["handshakes"][-1]
    # (Handlers of packets read just before the cut may run after it: at least what the
    # handlers had seen then; exactly-once below shows it was not too low or too high.)
    assert from_b >= max(dropped["seen"]), f"auth named {from_b}, bob had seen {max(dropped['seen'])}"
    c_b = check_outcome(r_b, from_b, "mid-stream handshake resume")
    wire = seqs_on_wire(bob)
    assert wire == list(range(1, alice.last + 1)), f"on the wire: exactly 1..N, once each, in order: {wire}"
    before = broadcasts_before(bob, lambda k, d: k == "event" and d[0] == "resumed" and d[1] == r_b)
    assert before >= c_b["last_seq"], f"`resumed` (last_seq {c_b['last_seq']}) after the missed messages ({before})"

    # -- C. The event form: reconnect without resume in auth, then
    #       `resume {conversations: {CID: last}}` with an ack that comes after the missed
    #       broadcasts.
    state["mode"] = "event"
    back_c = threading.Event()
    connects = len(bob.events("connect"))
    resumed_before = len(bob.events("resumed"))
    result = {}

    def resume_when_back():
        try:
            bob.wait("reconnect", lambda: len(bob.events("connect")) > connects, 3 * TIMEOUT)
            back_c.set()
            result["from"] = max_seen()
            result["ack"] = bob.sio.call("resume", {"conversations": {CID: result["from"]}}, timeout=TIMEOUT)
        except Exception as e:  # noqa: BLE001 - reported by the main thread
            result["error"] = e
            back_c.set()

    resumer = threading.Thread(target=resume_when_back, daemon=True)
    resumer.start()
    away_c = alice.stream_around(drop, back_c)
    resumer.join(3 * TIMEOUT)
    assert "error" not in result, f"resume event: {result.get('error')!r}"
    ack = result["ack"]
    assert state["handshakes"][-1] is None, "the event-form reconnect carried no resume in auth"
    assert result["from"] >= max(dropped["seen"]), (result, max(dropped["seen"]))
    assert ack["success"] is True, f"resume ack: {ack}"
    c_c = check_outcome(ack["data"], result["from"], "resume event")
    bob.wait(f"bob receives everything up to {alice.last}", lambda: max_seen() >= alice.last)
    before = broadcasts_before(bob, lambda k, d: k == "ack" and d == [ack])
    assert before >= c_c["last_seq"], f"the resume ack (last_seq {c_c['last_seq']}) after the missed messages ({before})"
    assert len(bob.events("resumed")) == resumed_before, "no `resumed` for a reconnect without auth.resume"

    # Whole session: every message exactly once (handlers) and in seq order (wire).
    everything = list(range(1, alice.last + 1))
    assert sorted(seen()) == everything and len(seen()) == alice.last, f"handled: {seen()}"
    assert seqs_on_wire(bob) == everything, f"on the wire: {seqs_on_wire(bob)}"
    assert bob.events("error") == [] and bob.events("connect_error") == [], \
        (bob.events("error"), bob.events("connect_error"))
    bob.sio.disconnect()
    return {"awayB": away_b, "awayC": away_c, "total": alice.last, "resumeB": c_b, "resumeC": c_c}


# ---------------------------------------------------------------------------------------
# 2. Inbox channel

def inbox_flow():
    devices = []
    for name in ("phone", "laptop"):
        d = Device(name, ["inboxUpdated", "conversationAdded", "messageBroadcast"], reconnection=False)
        d.sio.connect(URL, auth={"token": TOKEN_ALICE}, wait_timeout=TIMEOUT)
        devices.append(d)

    def updates(d, wire=False):
        if wire:
            return [data[1] for (k, data) in d.wire() if k == "event" and data[0] == "inboxUpdated"
                    and data[1]["conversation_id"] == INBOX_CID]
        return [u for u in d.events("inboxUpdated") if u["conversation_id"] == INBOX_CID]

    send_rest(TOKEN_BOB, INBOX_CID, "inbox one")
    send_rest(TOKEN_BOB, INBOX_CID, "inbox two")
    for d in devices:
        d.wait("inboxUpdated for seq 2",
               lambda: any((u.get("last_message") or {}).get("seq") == 2 for u in updates(d)))
        u = updates(d, wire=True)
        # Coalesced (at most one per conversation every 100 ms), each describing the state
        # as it was: last_message and last_seq agree, and it ends at 2.
        for x in u:
            assert x["last_message"]["seq"] == x["last_seq"], f"{d.name}: {x}"
            assert x["unread_count"] == x["last_seq"], f"{d.name}: alice read nothing yet: {x}"
        last = u[-1]
        assert (last["last_seq"], last["unread_count"]) == (2, 2), f"{d.name}: {u}"
        assert last["last_message"]["text"] == "inbox two", u
        assert last["last_message"]["sender_id"] == "bob", u
        assert d.events("messageBroadcast") == [], f"{d.name} is not joined: no broadcasts"

    phone, laptop = devices
    mr = phone.sio.call("mark_read", {"conversation_id": INBOX_CID}, timeout=TIMEOUT)
    assert mr["success"] is True, f"mark_read: {mr}"
    assert mr["data"]["last_read_seq"] == 2 and mr["data"]["unread_count"] == 0, mr
    for d in (laptop, phone):
        d.wait("inboxUpdated with unread_count 0 after the read on the phone",
               lambda: any(u["unread_count"] == 0 for u in updates(d)))
        synced = next(u for u in updates(d, wire=True) if u["unread_count"] == 0)
        assert (synced["last_seq"], synced["unread_count"]) == (2, 0), f"{d.name}: {synced}"

    status, body = rest("POST", "/conversations", TOKEN_BOB, {"name": "inbox: added", "participants": ["alice"]})
    assert status == 201, f"create: {status} {body}"
    added = body["conversation_id"]
    for d in devices:
        e = d.wait("conversationAdded", lambda: next(
            (x for x in d.events("conversationAdded") if x["conversation_id"] == added), None))
        assert e["conversation"]["id"] == added, e
        assert "alice" in e["conversation"]["participants"], e
        assert e["conversation"]["name"] == "inbox: added", e
    for d in devices:
        d.sio.disconnect()


def main():
    r = resume_flows()
    print(f"python resume ok: {r}")
    inbox_flow()
    print("python inbox ok")


if __name__ == "__main__":
    try:
        main()
    except Exception as e:  # noqa: BLE001 - report any failure to the Rust test
        import traceback
        traceback.print_exc()
        print(f"python resume failed: {e!r}", file=sys.stderr)
        sys.exit(1)
