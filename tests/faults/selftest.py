#!/usr/bin/env python3
"""Checks the fault run's bookkeeping (faults.evaluate) on made-up data, without any
server: a checker that cannot see a lost, doubled or reordered message would report
`RESULT: ok` forever. scripts/faults runs this first; it takes well under a second.

    .venv/bin/python tests/faults/selftest.py
"""

import sys
from pathlib import Path
from types import SimpleNamespace

sys.path.insert(0, str(Path(__file__).resolve().parent))
import faults  # noqa: E402


def listener(name, received, after_join=0, cut=(), dropped=False):
    """A stand-in for faults.Listener with just what evaluate() reads."""
    return SimpleNamespace(
        name=name, received={"X": received}, after_join={"X": after_join}, cut=set(cut),
        dropped=dropped, path=["A"], connections=1, lagged=0, unexpected=0, disconnects=[],
        replayed=lambda: 0)


def sent(cmid, acked=True, ack_seq=None, phase="steady"):
    return faults.Sent(cmid=cmid, conversation="X", phase=phase, acked=acked, ack_seq=ack_seq)


def main() -> None:
    # Stored: seq 1..8 with seq 4 missing (a gap); m2 stored twice (at 2 and at 8).
    stored = [("X", 1, "m1"), ("X", 2, "m2"), ("X", 3, "m3"), ("X", 5, "m5"),
              ("X", 6, "m6"), ("X", 7, "m7"), ("X", 8, "m2")]
    messages = [
        sent("m1", ack_seq=1), sent("m2", ack_seq=2), sent("m3", ack_seq=3),
        sent("m5", ack_seq=50),  # acknowledged as 50, stored as 5: moved
        sent("m6", ack_seq=6, phase="kill-A"), sent("m7", ack_seq=7, phase="kill-A"),
        sent("m9", ack_seq=9, phase="kill-A"),  # acknowledged, never stored: missing
        sent("m10", acked=False, phase="kill-A"),  # never acknowledged: not a failure
    ]
    everything = [(1, "m1"), (2, "m2"), (3, "m3"), (5, "m5"), (6, "m6"), (7, "m7"), (8, "m2")]
    listeners = [
        listener("clean", everything),
        # 2 after 3 (out of order), 2 again (dup), 6 and 8 never (missed), 99 is not
        # stored and 7 is not m9 (phantoms).
        listener("bad", [(1, "m1"), (3, "m3"), (2, "m2"), (2, "m2"), (5, "m5"), (7, "m9"),
                         (99, "m99")]),
        # Joined when 5 was the last seq and got everything after it: clean.
        listener("late", [(6, "m6"), (7, "m7"), (8, "m2")], after_join=5),
        # Joined when 5 was the last seq but never got 6: missed, whatever it got later.
        listener("late-hole", [(7, "m7"), (8, "m2")], after_join=5),
        # Joined at 3, first got 6: 5 was committed after its join, so missed.
        listener("early-hole", [(6, "m6"), (7, "m7"), (8, "m2")], after_join=3),
        # Cut off (process killed, no resume) after 2: held only up to 2.
        listener("cut", [(1, "m1"), (2, "m2")], cut=["X"]),
        # Cut off with a hole below its highest seq: still a miss.
        listener("cut-hole", [(1, "m1"), (3, "m3")], cut=["X"]),
        # Disconnected by a process nobody faulted.
        listener("dropped", everything, dropped=True),
    ]
    run = SimpleNamespace(senders=SimpleNamespace(sent=messages), stored=stored,
                          conversations=["X"], label=lambda c: c, listeners=listeners)
    ev = faults.evaluate(run)

    def check(what, got, want):
        if got != want:
            raise AssertionError(f"{what}: got {got}, want {want}")

    steady, kill = ev.rows["steady"], ev.rows["kill-A"]
    check("steady acked/stored", (steady.acked, steady.stored), (4, 4))
    check("kill-A acked/stored/unacked", (kill.acked, kill.stored, kill.unacked), (3, 2, 1))
    check("missing", ev.total.missing, 1)
    check("duplicate", ev.total.duplicate, 1)
    check("moved", ev.total.moved, 1)
    check("gaps (charged to the next stored message's phase)", steady.gaps, 1)
    per = {lis.name: t for lis, t, _ in ev.listeners}
    zero = (0, 0, 0, 0)
    quad = lambda t: (t.missed, t.dup, t.out_of_order, t.phantom)  # noqa: E731
    check("clean", quad(per["clean"]), zero)
    check("bad missed/dup/ooo/phantom", quad(per["bad"]), (2, 1, 1, 2))
    check("late", quad(per["late"]), zero)
    check("late-hole", quad(per["late-hole"]), (1, 0, 0, 0))
    check("early-hole", quad(per["early-hole"]), (1, 0, 0, 0))
    check("cut", quad(per["cut"]), zero)
    check("cut-hole", quad(per["cut-hole"]), (1, 0, 0, 0))
    check("dropped", ev.dropped, ["dropped"])
    check("failed fields", sorted(ev.failed),
          sorted(["missing", "duplicate", "gaps", "moved", "missed", "dup", "out_of_order",
                  "phantom"]))
    check("ok", ev.ok, False)

    # And a clean run is ok.
    clean = SimpleNamespace(
        senders=SimpleNamespace(sent=[sent("m1", ack_seq=1), sent("m2", ack_seq=2)]),
        stored=[("X", 1, "m1"), ("X", 2, "m2")], conversations=["X"], label=lambda c: c,
        listeners=[listener("l", [(1, "m1"), (2, "m2")])])
    check("clean run ok", faults.evaluate(clean).ok, True)
    print("faults selftest: ok", file=sys.stderr)


if __name__ == "__main__":
    main()
