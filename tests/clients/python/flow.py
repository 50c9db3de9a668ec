"""Full client flow with python-socketio against a running Colloquy.

Env: COLLOQUY_URL, TOKEN_ALICE, TOKEN_BOB, CONVERSATION_ID. Exit 0 on success.
"""
import os
import queue
import sys

import socketio

URL = os.environ["COLLOQUY_URL"]
CID = os.environ["CONVERSATION_ID"]


def client(token, inbox):
    sio = socketio.Client(reconnection=False)
    for event in ("messageBroadcast", "typing", "messagesRead", "error"):
        sio.on(event, (lambda e: lambda data: inbox.put((e, data)))(event))
    sio.connect(URL, auth={"token": token}, wait_timeout=10)
    return sio


def expect(inbox, event, timeout=5):
    while True:
        name, data = inbox.get(timeout=timeout)
        if name == event:
            return data


def main():
    try:
        socketio.Client(reconnection=False).connect(URL, auth={"token": "bad"}, wait_timeout=5)
        raise AssertionError("a bad token must be refused")
    except socketio.exceptions.ConnectionError:
        pass

    a_in, b_in = queue.Queue(), queue.Queue()
    alice = client(os.environ["TOKEN_ALICE"], a_in)
    bob = client(os.environ["TOKEN_BOB"], b_in)

    assert alice.call("join", {"conversation_id": CID}, timeout=5)["success"]
    assert bob.call("join", {"conversation_id": CID}, timeout=5)["success"]

    ack = alice.call("chat_message", {"conversation_id": CID, "message": "hi from python", "messageId": "py-1"}, timeout=5)
    assert ack["success"], ack
    assert ack["data"]["seq"] == 1, ack
    b = expect(b_in, "messageBroadcast")
    assert b["text"] == "hi from python" and b["senderId"] == "alice" and b["seq"] == 1, b

    alice.emit("typing", {"conversation_id": CID, "is_typing": True})
    t = expect(b_in, "typing")
    assert t["user_id"] == "alice" and t["is_typing"] is True, t

    mr = bob.call("mark_read", {"conversation_id": CID}, timeout=5)
    assert mr["data"]["last_read_seq"] == 1, mr
    assert expect(a_in, "messagesRead")["user_id"] == "bob"

    bad = alice.call("chat_message", {"conversation_id": CID}, timeout=5)
    assert bad["success"] is False and bad["code"] == "VALIDATION_ERROR", bad

    bob.disconnect()
    for i in (2, 3, 4):
        a = alice.call("chat_message", {"conversation_id": CID, "message": f"missed {i}", "messageId": f"py-{i}"}, timeout=5)
        assert a["data"]["seq"] == i, a
    bob = client(os.environ["TOKEN_BOB"], b_in)
    rejoin = bob.call("join", {"conversation_id": CID, "since_seq": 1}, timeout=5)
    assert [m["seq"] for m in rejoin["data"]["messages"]] == [2, 3, 4], rejoin

    alice.disconnect()
    bob.disconnect()
    print("python flow ok")


if __name__ == "__main__":
    try:
        main()
    except Exception as e:  # noqa: BLE001 - report any failure to the Rust test
        print(f"python flow failed: {e!r}", file=sys.stderr)
        sys.exit(1)
