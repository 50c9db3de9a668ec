#!/usr/bin/env python3
"""Fault-injection run against two Colloquy processes sharing one Postgres.

Started by `scripts/faults`, which creates a throwaway Postgres cluster and passes it in
through FAULTS_* environment variables (see there). This file does the rest:

1. starts `colloquy serve` twice (A and B) on that database, mints tokens, creates a few
   conversations whose participants are the senders and one listening principal;
2. joins listeners to every conversation on both processes, over Socket.IO and `/ws`;
3. runs sender threads that POST messages over REST, round-robin to A and B, each with a
   unique `client_message_id`, retrying the same id on 503 / connection errors (and on
   the other process) until it is acknowledged or a deadline passes;
4. walks through the phases while the load runs:
     steady    nothing happens
     kill-A    `kill -9` A, restart it after a while, join new listeners to it
     pg-crash  `pg_ctl -m immediate stop` (a Postgres crash), then start it again
     term-B    SIGTERM B (graceful drain), wait for it to exit, restart it, new listeners
     recover   nothing happens
5. stops the load, waits for delivery to settle, reads the stored truth with psql, and
   prints one table: per phase what was acknowledged / stored / missing (acked, not
   stored) / duplicated / left as a seq gap / moved (stored at another seq than acked),
   and per listener what it was delivered / missed / got twice / got out of order / got
   that is not what is stored there ("phantom").

Exit status: 0 when all of those failure counts are zero and no listener was dropped;
1 otherwise (`RESULT: FAILED (…)`); 2 when the run itself could not be carried out
(`RESULT: ERROR`). Messages never acknowledged ("unacked": the outage outlasted the
send deadline) are reported but are not failures.

What a listener is held to (contract §4 "Delivery guarantees"): every stored message of
each conversation with a seq above the point where it joined, exactly once, in strictly
increasing seq order. The join point is exact even under load: it is the seq before the
first message the listener received, but never above the conversation's last seq read
*after* the join was acknowledged (anything committed after that read must reach it).

A listener whose process is killed or stopped is disconnected. With resume (the
default) it reconnects to the other process (Socket.IO: `auth: {token, resume: {cid: last_seq}}`;
`/ws`: `&since_seq=last_seq`) and stays held to the whole stream across connections.
With `--no-resume` the listener is "cut": it is then only checked up to the highest seq it got
(holes below that are still misses; duplicates and disorder still count). A listener
that is disconnected while its process was NOT being faulted is a failure ("dropped").
"""

from __future__ import annotations

import argparse
import collections
import dataclasses
import json
import logging
import os
import shlex
import signal
import subprocess
import sys
import threading
import time
import uuid
from pathlib import Path

import engineio
import requests
import socketio
import websocket

# engine.io logs "packet queue is empty, aborting" at ERROR when a dead connection's write
# loop ends; every disconnect here is deliberate or reported by the listener itself.
logging.getLogger("engineio.client").setLevel(logging.CRITICAL)
logging.getLogger("socketio.client").setLevel(logging.CRITICAL)

# Listeners of a killed or stopped process resume on the other one (Socket.IO handshake
# `auth.resume`, `/ws?since_seq=`; contract §4 "Resume"). `--no-resume` leaves them cut
# off instead (then they are checked only up to the highest seq they got).
RESUME_DEFAULT = True

API = "/api/v1/communication"


# --------------------------------------------------------------------------------------
# Profiles: the short form is what the test command runs; the long form is for operators.
# --------------------------------------------------------------------------------------


@dataclasses.dataclass
class Profile:
    conversations: int
    senders: int
    rate: float  # messages per second, all senders together (a cap, not a promise)
    # Seconds of load. Each fault phase is: `before` seconds, the fault (as long as it
    # takes: a restart, Postgres's crash recovery), then `after` seconds once recovered.
    steady: float
    before: float
    after: float
    recover: float
    a_down: float  # how long A stays dead before its restart
    pg_down: float  # how long Postgres stays down (its crash recovery comes on top)
    grace: int  # SHUTDOWN_GRACE_SECONDS
    send_deadline: float  # a message not acknowledged by then is given up (not a failure)
    settle: float  # longest wait for delivery to settle after the load stops


SHORT = Profile(conversations=4, senders=4, rate=80, steady=4, before=1, after=4, recover=3,
                a_down=2, pg_down=1.5, grace=5, send_deadline=30, settle=10)
LONG = Profile(conversations=6, senders=8, rate=200, steady=30, before=10, after=30,
               recover=30, a_down=10, pg_down=5, grace=10, send_deadline=60, settle=15)

PHASES = ["steady", "kill-A", "pg-crash", "term-B", "recover"]


# --------------------------------------------------------------------------------------
# Timeline: progress goes to stderr as it happens and is repeated in the report.
# --------------------------------------------------------------------------------------


class Timeline:
    def __init__(self) -> None:
        self.t0 = time.monotonic()
        self.lines: list[str] = []
        self.lock = threading.Lock()

    def now(self) -> float:
        return time.monotonic() - self.t0

    def event(self, text: str) -> None:
        line = f"+{self.now():6.1f}s  {text}"
        with self.lock:
            self.lines.append(line)
        print(f"faults: {line}", file=sys.stderr, flush=True)


# --------------------------------------------------------------------------------------
# Postgres: the cluster scripts/faults created. We query it with psql and crash it.
# --------------------------------------------------------------------------------------


class Postgres:
    def __init__(self) -> None:
        env = os.environ
        self.bindir = env["FAULTS_PG_BINDIR"]
        self.data = env["FAULTS_PG_DATA"]
        self.port = env["FAULTS_PG_PORT"]
        self.opts = env["FAULTS_PG_OPTS"]
        self.as_pg = shlex.split(env.get("FAULTS_AS_PG", ""))  # `runuser -u postgres --` as root
        self.url = f"postgres://postgres@127.0.0.1:{self.port}/faults"

    def query(self, sql: str) -> list[list[str]]:
        """Rows of a query as lists of strings (psql unaligned, tab-separated)."""
        out = subprocess.run(
            [f"{self.bindir}/psql", "-h", "127.0.0.1", "-p", self.port, "-U", "postgres",
             "-d", "faults", "-X", "-q", "-A", "-t", "-F", "\t", "-v", "ON_ERROR_STOP=1",
             "-c", sql],
            check=True, capture_output=True, text=True, timeout=30,
        ).stdout
        return [line.split("\t") for line in out.splitlines() if line]

    def last_seqs(self, conversations: list[str]) -> dict[str, int]:
        """The highest committed seq of each conversation (0 when empty)."""
        ids = ",".join(f"'{c}'" for c in conversations)
        rows = self.query(
            f"SELECT conversation_id, coalesce(max(seq), 0) FROM messages "
            f"WHERE conversation_id IN ({ids}) GROUP BY 1")
        seqs = {c: 0 for c in conversations}
        seqs.update({r[0]: int(r[1]) for r in rows})
        return seqs

    def crash(self) -> None:
        """An immediate stop: no checkpoint, no clean shutdown — a crash as far as
        Postgres's own recovery is concerned. Every client connection is cut."""
        subprocess.run(self.as_pg + [f"{self.bindir}/pg_ctl", "-D", self.data, "-m",
                                     "immediate", "stop"], check=True, capture_output=True)

    def start(self) -> None:
        subprocess.run(self.as_pg + [f"{self.bindir}/pg_ctl", "-D", self.data, "-l",
                                     f"{self.data}/server.log", "-o", self.opts, "-w",
                                     "-t", "60", "start"], check=True, capture_output=True)


# --------------------------------------------------------------------------------------
# One `colloquy serve` process, restartable under the same name and port.
# --------------------------------------------------------------------------------------


class Server:
    def __init__(self, name: str, port: int, binary: str, env: dict[str, str],
                 logs: Path, pidfile: Path, timeline: Timeline) -> None:
        self.name, self.port, self.binary = name, port, binary
        self.env, self.logs, self.pidfile, self.timeline = env, logs, pidfile, timeline
        self.proc: subprocess.Popen | None = None
        self.generation = 0
        # "up" (ready), "starting", "killed", "terminating", "down".
        self.state = "down"
        # Generations we killed or stopped: a listener's disconnect from one of those is
        # expected; from any other it is a failure. (By generation, not state: a
        # disconnect may be noticed only after the process has been restarted.)
        self.faulted: set[int] = set()
        self.log_files: list[Path] = []

    @property
    def http(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def ws(self) -> str:
        return f"ws://127.0.0.1:{self.port}"

    def start(self) -> None:
        self.generation += 1
        log = self.logs / f"colloquy-{self.name}-{self.generation}.log"
        self.log_files.append(log)
        self.state = "starting"
        with log.open("wb") as out:  # the child keeps its own copy of the descriptor
            self.proc = subprocess.Popen(
                [self.binary, "serve"], env={**os.environ, **self.env,
                                             "COLLOQUY_LISTEN": f"127.0.0.1:{self.port}"},
                stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                cwd=self.pidfile.parent)  # the work dir: no developer .env is read there
        with self.pidfile.open("a") as f:  # for scripts/faults' cleanup, should we die
            f.write(f"{self.proc.pid}\n")

    def wait_ready(self, timeout: float = 60) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc and self.proc.poll() is not None:
                raise RuntimeError(f"colloquy {self.name} exited with {self.proc.returncode}"
                                   f" (log: {self.log_files[-1]})")
            try:
                if requests.get(f"{self.http}/readyz", timeout=1).status_code == 200:
                    self.state = "up"
                    self.timeline.event(f"{self.name} ready (pid {self.proc.pid})")
                    return
            except requests.RequestException:
                pass
            time.sleep(0.1)
        raise RuntimeError(f"colloquy {self.name} not ready after {timeout}s")

    def kill9(self) -> None:
        self.state = "killed"
        self.faulted.add(self.generation)
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait()
        self.timeline.event(f"kill -9 {self.name} (pid {self.proc.pid})")

    def sigterm(self) -> None:
        self.state = "terminating"
        self.faulted.add(self.generation)
        self.proc.send_signal(signal.SIGTERM)
        self.timeline.event(f"SIGTERM {self.name} (pid {self.proc.pid})")

    def wait_exit(self, timeout: float) -> int | None:
        try:
            rc = self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.timeline.event(f"{self.name} still running {timeout:.0f}s after SIGTERM: kill -9")
            self.proc.kill()
            self.proc.wait()
            rc = None
        self.state = "down"
        self.timeline.event(f"{self.name} exited (status {rc})")
        return rc

    def stop(self) -> None:
        """End of run: SIGTERM and a bounded wait, then SIGKILL."""
        if self.proc and self.proc.poll() is None:
            self.state = "terminating"
            self.faulted.add(self.generation)
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.state = "down"


# --------------------------------------------------------------------------------------
# Senders: REST, round-robin over the processes, retrying one client_message_id.
# --------------------------------------------------------------------------------------


@dataclasses.dataclass
class Sent:
    cmid: str
    conversation: str
    phase: str  # the phase when the first attempt was made
    acked: bool = False
    ack_seq: int | None = None  # the seq the acknowledgement carried
    attempts: int = 0
    gave_up: str | None = None  # why it was never acknowledged


class Senders:
    """Sender threads. Each sends its own numbered messages, one at a time, to the
    conversations in turn, alternating A/B; a message is retried with the same
    client_message_id until some attempt answers 2xx (acked) or the deadline passes.
    `stop()` lets every thread finish the message it is on — an abandoned retry would
    turn an ordinary outage into an unacknowledged message."""

    def __init__(self, run: "Run") -> None:
        self.run = run
        self.sent: list[Sent] = []
        self.lock = threading.Lock()
        # (process, phase, outcome) -> attempts; outcome is the HTTP status, or
        # "refused" (nothing listening), "reset" (the connection broke: a request in
        # flight, or a kept-alive connection the server had just closed) or "timeout".
        self.outcomes: collections.Counter[tuple[str, str, str]] = collections.Counter()
        self.stopping = threading.Event()
        self.threads: list[threading.Thread] = []
        self.rejected_examples: list[str] = []

    def start(self) -> None:
        for i in range(self.run.profile.senders):
            t = threading.Thread(target=self._loop, args=(i,), name=f"sender-{i}", daemon=True)
            t.start()
            self.threads.append(t)

    def stop(self) -> None:
        self.stopping.set()
        for t in self.threads:
            t.join(self.run.profile.send_deadline + 20)

    def _loop(self, i: int) -> None:
        run, profile = self.run, self.run.profile
        token = run.tokens[f"faults-sender-{i}"]
        sessions = {name: requests.Session() for name in run.servers}
        for s in sessions.values():
            s.headers["Authorization"] = f"Bearer {token}"
        names = list(run.servers)
        cooldown = {name: 0.0 for name in names}  # skip a refusing process for a moment
        interval = profile.senders / profile.rate
        next_at = time.monotonic() + i * interval / profile.senders
        n = 0
        while not self.stopping.is_set():
            # Pace to the rate cap; never burst more than a second's worth after a stall.
            now = time.monotonic()
            if next_at > now:
                time.sleep(next_at - now)
            next_at = max(next_at + interval, time.monotonic() - 1)
            conversation = run.conversations[(i + n) % len(run.conversations)]
            msg = Sent(cmid=f"{run.run_id}-{run.phase}-s{i}-{n}", conversation=conversation,
                       phase=run.phase)
            with self.lock:
                self.sent.append(msg)
            self._send(msg, sessions, names, start_index=i + n, cooldown=cooldown)
            n += 1

    def _send(self, msg: Sent, sessions, names, start_index: int, cooldown) -> None:
        deadline = time.monotonic() + self.run.profile.send_deadline
        body = {"text": f"faults message {msg.cmid}", "client_message_id": msg.cmid}
        k = start_index
        backoff = 0.05
        while time.monotonic() < deadline:
            # Round-robin: this message's preferred process first, then the other; a
            # process that just refused connections is skipped while another remains.
            order = [names[(k + j) % len(names)] for j in range(len(names))]
            now = time.monotonic()
            name = next((n for n in order if cooldown[n] <= now), order[0])
            k += 1
            server = self.run.servers[name]
            msg.attempts += 1
            try:
                r = sessions[name].post(
                    f"{server.http}{API}/messages/conversations/{msg.conversation}",
                    json=body, timeout=(2, 15))
            except requests.Timeout:  # before ConnectionError: ConnectTimeout is both
                self._count(name, "timeout")
                continue
            except requests.ConnectionError as e:
                self._count(name, "refused" if refused(e) else "reset")
                cooldown[name] = time.monotonic() + 0.3
                time.sleep(0.02)
                continue
            self._count(name, str(r.status_code))
            if r.status_code in (200, 201):
                msg.acked = True  # any 2xx is an acknowledgement
                try:
                    msg.ack_seq = r.json()["data"]["seq"]
                except (ValueError, KeyError, TypeError):
                    raise RuntimeError(f"{msg.cmid}: 2xx without data.seq: {r.text[:200]}")
                return
            if r.status_code in (429, 500, 502, 503, 504):
                # 503 UNAVAILABLE is the database-trouble / draining answer: retry the
                # same id (the other process first). Other 5xx are counted and retried.
                time.sleep(backoff)
                backoff = min(backoff * 2, 0.5)
                continue
            msg.gave_up = f"HTTP {r.status_code}"
            with self.lock:
                if len(self.rejected_examples) < 5:
                    self.rejected_examples.append(f"{msg.cmid}: {r.status_code} {r.text[:200]}")
            return
        msg.gave_up = "deadline"

    def _count(self, server: str, outcome: str) -> None:
        with self.lock:
            self.outcomes[(server, self.run.phase, outcome)] += 1


def refused(e: BaseException) -> bool:
    """Whether a requests ConnectionError was a refused connection (nobody listening).
    urllib3 wraps the OSError several times over; its text survives."""
    return "Connection refused" in str(e) or "Errno 111" in str(e)


# --------------------------------------------------------------------------------------
# Listeners: what each one received, per conversation, in arrival order.
# --------------------------------------------------------------------------------------


class Listener:
    """One logical subscriber to every conversation, possibly over several connections
    (when it resumes on another process). Subclasses provide the transport."""

    kind = "?"

    def __init__(self, run: "Run", home: Server, generation: int) -> None:
        self.run, self.home = run, home
        self.name = f"{self.kind}@{home.name}#{generation}"
        self.lock = threading.Lock()
        # conversation -> [(seq, client_message_id)] in arrival order
        self.received: dict[str, list[tuple[int, str]]] = {c: [] for c in run.conversations}
        # conversation -> its last committed seq, read right after the join was acknowledged
        self.after_join: dict[str, int] = {}
        self.path = [home.name]  # the process of each connection, in order
        self.connections = 0
        self.disconnects: list[str] = []  # "phase server reason"
        # Conversations this listener is cut off from: disconnected and not (or not yet)
        # resumed. Socket.IO loses and resumes all at once; `/ws` one by one.
        self.cut: set[str] = set()
        self.dropped = False  # disconnected while its process was not being faulted
        self.lagged = 0  # `/ws` error frames LAGGED (the server skipped events)
        self.unexpected = 0  # messages of no conversation of ours, or without a seq
        # Per resume: (conversation, resume point, last committed seq just before the new
        # connection, how many messages had been received). Messages above the resume
        # point and at most that seq, received afterwards, can only have come from the
        # server's replay: the report counts them, to show the resume path did work.
        self.resumes: list[tuple[str, int, int, int]] = []
        self.errors: list[str] = []
        self.started_phase = run.phase

    def deliver(self, conversation: str, seq: int, cmid: str) -> None:
        """Records one delivered message (called on the connection's read thread)."""
        with self.lock:
            if conversation not in self.received or not isinstance(seq, int):
                self.unexpected += 1
                self.errors.append(f"unexpected message: conversation {conversation!r}, "
                                   f"seq {seq!r}")
                return
            self.received[conversation].append((seq, cmid or ""))

    def resume_point(self, conversation: str) -> int:
        """The seq to resume after: the highest one received, else the join point."""
        with self.lock:
            seqs = [s for s, _ in self.received[conversation]]
        return max(seqs) if seqs else self.after_join.get(conversation, 0)

    def before_resume(self, conversations: list[str]) -> list[tuple[str, int, int, int]]:
        """The replay bookkeeping for a resume about to connect (see `resumes`)."""
        try:
            tops = self.run.pg.last_seqs(conversations)
        except Exception:  # noqa: BLE001 — only a diagnostic
            return []
        with self.lock:
            counts = {c: len(self.received[c]) for c in conversations}
        return [(c, self.resume_point(c), tops[c], counts[c]) for c in conversations]

    def replayed(self) -> int:
        n = 0
        for c, point, top, index in self.resumes:
            n += sum(1 for seq, _ in self.received[c][index:] if point < seq <= top)
        return n

    def count(self) -> int:
        with self.lock:
            return sum(len(v) for v in self.received.values())

    def lost(self, server: Server, generation: int, reason: str,
             conversations: list[str]) -> bool:
        """Records a disconnect from `generation` of `server`; returns whether to resume.
        Disconnects after the run's end, or from a process we killed or stopped, are
        expected; any other is a failure."""
        if self.run.closing:
            return False
        expected = generation in server.faulted
        with self.lock:
            self.disconnects.append(f"{self.run.phase} {server.name} {reason}"
                                    + ("" if expected else " (unexpected)"))
            if not expected:
                self.dropped = True
            self.cut.update(conversations)
        self.run.timeline.event(f"{self.name} disconnected from {server.name}: {reason}")
        return self.run.resume

    def resume_targets(self, lost: Server) -> list[Server]:
        """The other process(es) first, then the one just lost (once it is back)."""
        others = [s for s in self.run.servers.values() if s is not lost]
        return others + [lost]

    def wait_for_target(self, lost: Server, deadline: float) -> Server | None:
        while time.monotonic() < deadline and not self.run.closing:
            for s in self.resume_targets(lost):
                if s.state == "up":
                    return s
            time.sleep(0.1)
        return None


class _InlineEngineIO(engineio.Client):
    """engine.io normally hands every incoming packet to a fresh thread (run_async), so
    two broadcasts could reach the handler in either order and a correct server would be
    reported out of order. Here packets are handled on the read loop itself, in wire
    order; the handlers only append to a list."""

    def _trigger_event(self, event, *args, **kwargs):
        if event == "message":
            kwargs["run_async"] = False
        return super()._trigger_event(event, *args, **kwargs)


class _OrderedSioClient(socketio.Client):
    def _engineio_client_class(self):
        return _InlineEngineIO


class SioListener(Listener):
    """Socket.IO (websocket transport): one socket joined to every conversation."""

    kind = "sio"

    def __init__(self, run: "Run", home: Server, generation: int) -> None:
        super().__init__(run, home, generation)
        self.client: socketio.Client | None = None

    def _connect(self, server: Server, resume: dict[str, int] | None) -> socketio.Client:
        client = _OrderedSioClient(reconnection=False)
        generation = server.generation

        @client.on("messageBroadcast")
        def on_message(data):
            self.deliver(data.get("conversationId"), data.get("seq"), data.get("clientMessageId"))

        @client.on("disconnect")
        def on_disconnect(reason=None):
            if client is self.client and self.lost(server, generation,
                                                   f"socket.io disconnect ({reason})",
                                                   self.run.conversations):
                threading.Thread(target=self._resume, args=(server,), daemon=True).start()

        auth: dict = {"token": self.run.tokens["faults-listener"]}
        if resume is not None:
            auth["resume"] = resume
        client.connect(server.http, auth=auth, transports=["websocket"], wait_timeout=5)
        self.client = client
        self.connections += 1
        return client

    def start(self) -> None:
        client = self._connect(self.home, None)
        for c in self.run.conversations:
            ack = client.call("join", {"conversation_id": c}, timeout=15)
            if not (isinstance(ack, dict) and ack.get("success")):
                raise RuntimeError(f"{self.name}: join {c} failed: {ack}")
        self.after_join = self.run.pg.last_seqs(self.run.conversations)

    def _resume(self, lost: Server) -> None:
        """Reconnects to another process with `auth.resume`: the server puts the socket
        back in every room and sends what it missed, in order, before newer messages."""
        deadline = time.monotonic() + 60
        while not self.run.closing and time.monotonic() < deadline:
            target = self.wait_for_target(lost, deadline)
            if target is None:
                break
            bookkeeping = self.before_resume(self.run.conversations)
            resume = {c: self.resume_point(c) for c in self.run.conversations}
            try:
                self._connect(target, resume)
            except Exception as e:  # noqa: BLE001 — any failure: try again shortly
                self.errors.append(f"resume on {target.name}: {e}")
                time.sleep(0.3)
                continue
            with self.lock:
                self.cut.clear()
                self.path.append(target.name)
                self.resumes.extend(bookkeeping)
            points = ", ".join(f"{self.run.label(c)}:{s}" for c, s in resume.items())
            self.run.timeline.event(f"{self.name} resumed on {target.name} after {points}")
            return
        self.run.timeline.event(f"{self.name} could not resume")

    def close(self) -> None:
        if self.client is not None:
            try:
                self.client.disconnect()
            except Exception:  # noqa: BLE001
                pass


class WsListener(Listener):
    """Raw `/ws`: one connection per conversation (`session_id` names it), each with its
    own receive thread."""

    kind = "ws"

    def __init__(self, run: "Run", home: Server, generation: int) -> None:
        super().__init__(run, home, generation)
        self.sockets: dict[str, websocket.WebSocket] = {}

    def _open(self, server: Server, conversation: str, since: int | None) -> websocket.WebSocket:
        url = (f"{server.ws}/ws?session_id={conversation}"
               f"&token={self.run.tokens['faults-listener']}")
        if since is not None:
            url += f"&since_seq={since}"
        ws = websocket.create_connection(url, timeout=10)
        first = json.loads(ws.recv())
        if first.get("type") != "status" or first.get("status") != "connected":
            ws.close()
            raise RuntimeError(f"first frame was {first}")
        ws.settimeout(None)  # blocking reads; close() aborts them
        self.sockets[conversation] = ws
        with self.lock:
            self.connections += 1
        return ws

    def start(self) -> None:
        for c in self.run.conversations:
            ws = self._open(self.home, c, None)
            threading.Thread(target=self._read, args=(c, ws, self.home, self.home.generation),
                             daemon=True,
                             name=f"{self.name}-{self.run.label(c)}").start()
        # Every session subscribed before its status frame: read the join point now.
        self.after_join = self.run.pg.last_seqs(self.run.conversations)

    def _read(self, conversation: str, ws: websocket.WebSocket, server: Server,
              generation: int) -> None:
        while True:
            reason = "closed"
            try:
                while True:
                    opcode, data = ws.recv_data()
                    if opcode == websocket.ABNF.OPCODE_CLOSE:
                        code = int.from_bytes(data[:2], "big") if len(data) >= 2 else None
                        reason = f"close {code} {data[2:].decode(errors='replace')}".strip()
                        break
                    if opcode != websocket.ABNF.OPCODE_TEXT:
                        continue
                    frame = json.loads(data)
                    if frame.get("type") == "message":
                        self.deliver(conversation, frame["seq"], frame.get("client_message_id"))
                    elif frame.get("type") == "error":
                        if frame.get("code") == "LAGGED":
                            self.lagged += 1
                        self.errors.append(f"error frame {frame}")
            except Exception as e:  # noqa: BLE001 — a reset or abort ends the connection
                reason = f"{type(e).__name__}: {e}"
            if not self.lost(server, generation, f"/ws {self.run.label(conversation)} {reason}",
                             [conversation]):
                return
            # Resume this conversation on another process with since_seq.
            deadline = time.monotonic() + 60
            while True:
                target = self.wait_for_target(server, deadline)
                if target is None:
                    self.run.timeline.event(f"{self.name} /ws {self.run.label(conversation)} could not resume")
                    return
                bookkeeping = self.before_resume([conversation])
                since = self.resume_point(conversation)
                try:
                    generation = target.generation
                    ws = self._open(target, conversation, since)
                    break
                except Exception as e:  # noqa: BLE001
                    self.errors.append(f"resume on {target.name}: {e}")
                    time.sleep(0.3)
            with self.lock:
                self.cut.discard(conversation)
                self.resumes.extend(bookkeeping)
                if self.path[-1] != target.name:
                    self.path.append(target.name)
            self.run.timeline.event(f"{self.name} /ws {self.run.label(conversation)} resumed on "
                                    f"{target.name} since_seq {since}")
            server = target

    def close(self) -> None:
        for ws in list(self.sockets.values()):
            try:
                ws.abort()
            except Exception:  # noqa: BLE001
                pass


# --------------------------------------------------------------------------------------
# The run.
# --------------------------------------------------------------------------------------


class Run:
    def __init__(self, profile: Profile, resume: bool) -> None:
        self.profile, self.resume = profile, resume
        self.timeline = Timeline()
        self.run_id = uuid.uuid4().hex[:8]
        self.phase = "setup"
        self.closing = False  # set when we disconnect listeners ourselves
        self.pg = Postgres()
        self.work = Path(os.environ["FAULTS_WORK"])
        self.logs = Path(os.environ["FAULTS_LOGS"])
        self.binary = os.environ["COLLOQUY_BIN"]
        self.secret = uuid.uuid4().hex + uuid.uuid4().hex
        env = {
            "DATABASE_URL": self.pg.url,
            "JWT_SECRET": self.secret,
            "RATE_LIMIT_PER_MINUTE": "100000000",
            "LOG_FORMAT": "json",
            "RUST_LOG": os.environ.get("FAULTS_RUST_LOG", "warn"),
            "SHUTDOWN_GRACE_SECONDS": str(profile.grace),
        }
        ports = free_ports(2)
        self.servers = {
            name: Server(name, port, self.binary, env, self.logs, self.work / "pids", self.timeline)
            for name, port in zip(("A", "B"), ports)
        }
        self.tokens: dict[str, str] = {}
        self.conversations: list[str] = []
        self.listeners: list[Listener] = []
        self.senders = Senders(self)
        self.stored: list[tuple[str, int, str]] = []  # (conversation, seq, client_message_id)
        # An exception in any thread (a sender, a listener's reader) means the counts are
        # not to be trusted: it is reported and fails the run.
        self.harness_errors: list[str] = []

        def on_thread_error(args: threading.ExceptHookArgs) -> None:
            self.harness_errors.append(f"{args.thread.name if args.thread else '?'}: "
                                       f"{args.exc_type.__name__}: {args.exc_value}")
            self.timeline.event(f"HARNESS ERROR in {self.harness_errors[-1]}")

        threading.excepthook = on_thread_error

    def label(self, conversation: str) -> str:
        """c0, c1, … (the ids are UUID v7: their first characters are all alike)."""
        try:
            return f"c{self.conversations.index(conversation)}"
        except ValueError:
            return conversation

    # -- setup ------------------------------------------------------------------------

    def mint(self, sub: str) -> str:
        out = subprocess.run([self.binary, "token", "--sub", sub, "--ttl", "24h"],
                             env={**os.environ, "JWT_SECRET": self.secret}, cwd=self.work,
                             check=True, capture_output=True, text=True)
        return out.stdout.strip()

    def setup(self) -> None:
        a, b = self.servers["A"], self.servers["B"]
        a.start()
        a.wait_ready()  # A runs the migrations; B then starts on a migrated database
        b.start()
        b.wait_ready()
        principals = (["faults-owner", "faults-listener"]
                      + [f"faults-sender-{i}" for i in range(self.profile.senders)])
        self.tokens = {p: self.mint(p) for p in principals}
        participants = [p for p in principals if p != "faults-owner"]
        for k in range(self.profile.conversations):
            r = requests.post(f"{a.http}{API}/conversations",
                              headers={"Authorization": f"Bearer {self.tokens['faults-owner']}"},
                              json={"name": f"faults {self.run_id} {k}",
                                    "participants": participants}, timeout=10)
            r.raise_for_status()
            self.conversations.append(r.json()["data"]["id"])
        self.timeline.event(f"{len(self.conversations)} conversations created")
        for server in (a, b):
            self.add_listeners(server, 1)

    def add_listeners(self, server: Server, generation: int) -> None:
        for cls in (SioListener, WsListener):
            listener = cls(self, server, generation)
            listener.start()
            self.listeners.append(listener)
        self.timeline.event(f"listeners joined on {server.name} (generation {generation})")

    # -- phases -----------------------------------------------------------------------

    def enter(self, phase: str) -> None:
        self.phase = phase
        self.timeline.event(f"phase {phase}")

    def phases(self) -> None:
        """The scenario. Every fault strikes mid-load (`before` seconds into its phase)
        and the load goes on for `after` seconds once the fault has been repaired."""
        p, a, b = self.profile, self.servers["A"], self.servers["B"]

        self.enter("steady")
        self.senders.start()
        time.sleep(p.steady)

        # A dies without a chance to finish anything: requests in flight are cut (their
        # senders retry on B), commits it made may never have been announced.
        self.enter("kill-A")
        time.sleep(p.before)
        a.kill9()
        time.sleep(p.a_down)
        a.start()
        a.wait_ready()
        self.add_listeners(a, a.generation)
        time.sleep(p.after)

        # Every database connection of both processes breaks, their LISTEN connections
        # included; sends get 503 until Postgres is back and has recovered. Neither
        # process goes away: their listeners must not notice anything but a delay.
        self.enter("pg-crash")
        time.sleep(p.before)
        self.pg.crash()
        self.timeline.event("postgres crashed (pg_ctl -m immediate stop)")
        time.sleep(p.pg_down)
        self.pg.start()
        self.timeline.event("postgres started again (crash recovery done)")
        time.sleep(p.after)

        # B drains: new sends get 503 (retried on A), sends it took are answered, then
        # its sockets are closed.
        self.enter("term-B")
        time.sleep(p.before)
        b.sigterm()
        b.wait_exit(p.grace + 10)
        b.start()
        b.wait_ready()
        self.add_listeners(b, b.generation)
        time.sleep(p.after)

        self.enter("recover")
        time.sleep(p.recover)

        self.phase = "end"  # messages begun after the last phase, while stopping
        self.timeline.event("stopping the load (senders finish the message they are on)")
        self.senders.stop()
        self.timeline.event(f"load stopped: {len(self.senders.sent)} messages attempted")

    def settle(self) -> None:
        """Waits until every listener that is still connected has every stored message,
        or nothing has changed for 3 s, at most profile.settle seconds."""
        deadline = time.monotonic() + self.profile.settle
        last, last_change, caught_up = None, time.monotonic(), False
        while time.monotonic() < deadline:
            tops = self.pg.last_seqs(self.conversations)
            counts = tuple(listener.count() for listener in self.listeners)
            caught_up = all(
                all(c in listener.cut or listener.resume_point(c) >= tops[c] for c in tops)
                for listener in self.listeners)
            if caught_up:
                break
            if counts != last:
                last, last_change = counts, time.monotonic()
            elif time.monotonic() - last_change >= 3:
                break
            time.sleep(0.25)
        self.timeline.event("delivery settled" if caught_up else "delivery did not catch up")

    def collect(self) -> None:
        ids = ",".join(f"'{c}'" for c in self.conversations)
        rows = self.pg.query(
            f"SELECT conversation_id, seq, coalesce(client_message_id, '') FROM messages "
            f"WHERE conversation_id IN ({ids}) ORDER BY 1, 2")
        self.stored = [(r[0], int(r[1]), r[2]) for r in rows]

    def teardown(self) -> None:
        """Idempotent: disconnects listeners, then stops the servers."""
        self.closing = True
        for listener in self.listeners:
            listener.close()
        for server in self.servers.values():
            server.stop()


def free_ports(n: int) -> list[int]:
    import socket as pysocket
    socks = []
    for _ in range(n):
        s = pysocket.socket()
        s.bind(("127.0.0.1", 0))
        socks.append(s)
    ports = [s.getsockname()[1] for s in socks]
    for s in socks:
        s.close()
    return ports


# --------------------------------------------------------------------------------------
# The report.
# --------------------------------------------------------------------------------------


@dataclasses.dataclass
class Tally:
    """One table row. Left half: messages; right half: deliveries."""
    acked: int = 0
    stored: int = 0
    missing: int = 0  # acknowledged, not stored
    duplicate: int = 0  # stored more than once for one client_message_id
    gaps: int = 0  # seq numbers with no message, below a conversation's highest
    moved: int = 0  # stored at another seq than the acknowledgement said
    unacked: int = 0  # never acknowledged (gave up: outage outlasted the deadline)
    delivered: int = 0
    missed: int = 0
    dup: int = 0
    out_of_order: int = 0
    phantom: int = 0  # delivered (conversation, seq) that is not what is stored there


FAILURE_FIELDS = ["missing", "duplicate", "gaps", "moved", "missed", "dup", "out_of_order",
                  "phantom"]


@dataclasses.dataclass
class Evaluation:
    rows: dict[str, Tally]  # per phase (of the message's first send attempt)
    total: Tally
    listeners: list[tuple["Listener", Tally, str]]  # with a note on its connections
    problems: dict[str, list[str]]  # the first few of each kind, to read
    failed: dict[str, int]  # the non-zero failure counts
    dropped: list[str]  # listeners dropped by a process that was not faulted

    @property
    def ok(self) -> bool:
        return not self.failed and not self.dropped


def evaluate(run: Run) -> Evaluation:
    """Holds what was sent and delivered against what is stored (run.stored). Needs only
    run.senders.sent, run.stored, run.conversations, run.label and run.listeners, so
    tests/faults/selftest.py can feed it made-up data."""
    sent = run.senders.sent
    by_cmid = {m.cmid: m for m in sent}
    phase_of = lambda cmid: by_cmid[cmid].phase if cmid in by_cmid else "other"  # noqa: E731
    rows: collections.defaultdict[str, Tally] = collections.defaultdict(Tally)
    for p in PHASES:
        rows[p]  # noqa: B018 — the phases print in order, even when empty
    problems: dict[str, list[str]] = collections.defaultdict(list)

    def note(kind: str, text: str) -> None:
        if len(problems[kind]) < 10:
            problems[kind].append(text)

    # ---- stored truth
    stored_at: dict[str, dict[int, str]] = collections.defaultdict(dict)  # cid -> seq -> cmid
    rows_per_cmid: collections.Counter[str] = collections.Counter()
    seqs_of_cmid: dict[str, list[int]] = collections.defaultdict(list)
    for cid, seq, cmid in run.stored:
        stored_at[cid][seq] = cmid
        rows_per_cmid[cmid] += 1
        seqs_of_cmid[cmid].append(seq)
    for m in sent:
        row = rows[m.phase]
        row.acked += m.acked
        row.unacked += not m.acked
        if rows_per_cmid[m.cmid]:
            row.stored += 1
        if m.acked and not rows_per_cmid[m.cmid]:
            row.missing += 1
            note("missing", f"{m.cmid} acked with seq {m.ack_seq} in {run.label(m.conversation)}")
        if rows_per_cmid[m.cmid] > 1:
            row.duplicate += 1
            note("duplicate", f"{m.cmid} stored {rows_per_cmid[m.cmid]} times")
        if m.acked and rows_per_cmid[m.cmid] and m.ack_seq not in seqs_of_cmid[m.cmid]:
            row.moved += 1
            note("moved", f"{m.cmid} acked as seq {m.ack_seq}, stored as {seqs_of_cmid[m.cmid]}")
    for cid in run.conversations:
        seqs = stored_at[cid]
        top = max(seqs, default=0)
        for s in range(1, top + 1):
            if s not in seqs:
                # Charged to the phase of the next stored message: when the hole appeared.
                after = next(seqs[t] for t in range(s + 1, top + 1) if t in seqs)
                rows[phase_of(after)].gaps += 1
                note("gaps", f"{run.label(cid)} seq {s} missing (next stored: {after})")

    # ---- per listener
    listener_rows: list[tuple[Listener, Tally, str]] = []
    for listener in run.listeners:
        t = Tally()
        for cid in run.conversations:
            got = listener.received[cid]
            stored = stored_at[cid]
            seqs = [s for s, _ in got]
            # The join point: the seq before the first message received, but never above
            # the last seq read after the join was acknowledged (see the module doc).
            joined = listener.after_join.get(cid, 0)
            if seqs:
                joined = min(joined, seqs[0] - 1)
            expected = {s for s in stored if s > joined}
            if cid in listener.cut:
                # A listener cut off (not resumed) is held only to what came before its
                # highest seq.
                expected = {s for s in expected if s <= max(seqs, default=joined)}
            seen: set[int] = set()
            highest = joined
            for seq, cmid in got:
                t.delivered += 1
                phase = phase_of(cmid)
                rows[phase].delivered += 1
                if stored.get(seq) != cmid:
                    t.phantom += 1
                    rows[phase].phantom += 1
                    note("phantom", f"{listener.name} got {run.label(cid)} seq {seq} as {cmid!r}, "
                                    f"stored: {stored.get(seq)!r}")
                if seq in seen:
                    t.dup += 1
                    rows[phase].dup += 1
                    note("dup", f"{listener.name} got {run.label(cid)} seq {seq} ({cmid}) again")
                elif seq < highest:
                    t.out_of_order += 1
                    rows[phase].out_of_order += 1
                    note("out_of_order", f"{listener.name} got {run.label(cid)} seq {seq} after {highest}")
                seen.add(seq)
                highest = max(highest, seq)
            for s in sorted(expected - seen):
                t.missed += 1
                rows[phase_of(stored[s])].missed += 1
                note("missed", f"{listener.name} never got {run.label(cid)} seq {s} ({stored[s]}, "
                               f"phase {phase_of(stored[s])})")
        # A message we cannot place is a delivery of something not stored, too.
        t.phantom += listener.unexpected
        if listener.unexpected:
            rows["other"].phantom += listener.unexpected
        notes = []
        if len(listener.path) == 1 and not listener.disconnects:
            notes.append("never disconnected")
        if len(listener.path) > 1:
            notes.append(f"path {'>'.join(listener.path)}, {listener.connections} connections, "
                         f"{listener.replayed()} messages replayed on resume")
        if listener.cut:
            notes.append(f"cut from {len(listener.cut)} conversation(s): checked only up "
                         "to its highest seq there")
        if listener.dropped:
            notes.append("DROPPED by a process that was not faulted")
        if listener.lagged:
            notes.append(f"{listener.lagged} LAGGED frames")
        listener_rows.append((listener, t, "; ".join(notes)))

    total = Tally()
    for field in dataclasses.fields(Tally):
        setattr(total, field.name, sum(getattr(r, field.name) for r in rows.values()))
    return Evaluation(
        rows=dict(rows), total=total, listeners=listener_rows, problems=dict(problems),
        failed={f: getattr(total, f) for f in FAILURE_FIELDS if getattr(total, f)},
        dropped=[listener.name for listener in run.listeners if listener.dropped])


def report(run: Run) -> bool:
    """Prints the table and the details; returns whether everything held."""
    ev = evaluate(run)
    rows, total, listener_rows, sent = ev.rows, ev.total, ev.listeners, run.senders.sent
    left = ["acked", "stored", "missing", "duplicate", "gaps", "moved", "unacked"]
    right = ["delivered", "missed", "dup", "out_of_order", "phantom"]
    head = (f"{'phase/listener':<16}" + "".join(f"{c:>10}" for c in left) + " |"
            + "".join(f"{c:>{13 if c == 'out_of_order' else 10}}" for c in right))
    out = [head, "-" * len(head)]

    def line(label: str, t: Tally | None, right_only: bool = False) -> str:
        l_cells = "".join(f"{'' if right_only else getattr(t, c):>10}" for c in left)
        r_cells = "".join(f"{getattr(t, c):>{13 if c == 'out_of_order' else 10}}" for c in right)
        return f"{label:<16}{l_cells} |{r_cells}"

    for p, r in list(rows.items()):
        out.append(line(p, r))
    out.append(line("total", total))
    out.append("-" * len(head))
    for listener, t, _ in listener_rows:
        out.append(line(listener.name, t, right_only=True))
    print("\n".join(out))

    print("\nconversations: " + ", ".join(f"{run.label(c)} {c}" for c in run.conversations))
    print("listeners:")
    for listener, t, notes in listener_rows:
        print(f"  {listener.name:<10} joined in {listener.started_phase:<8} {notes}")
        for d in listener.disconnects:
            print(f"  {'':<10} disconnect: {d}")
        for e in listener.errors[:3]:
            print(f"  {'':<10} error: {e}")

    print("\nsend attempts per process and phase (HTTP status, or refused / reset / timeout):")
    for name in run.servers:
        for phase in rows:
            counts = {o: n for (s, p, o), n in sorted(run.senders.outcomes.items())
                      if s == name and p == phase}
            if counts:
                print(f"  {name} {phase:<9} " + ", ".join(f"{o}: {n}" for o, n in counts.items()))
    gave_up = collections.Counter(m.gave_up for m in sent if m.gave_up)
    if gave_up:
        print("  never acknowledged: " + ", ".join(f"{k}: {v}" for k, v in gave_up.items()))
    for ex in run.senders.rejected_examples:
        print(f"  rejected: {ex}")

    print("\ntimeline:")
    for tl in run.timeline.lines:
        print(f"  {tl}")

    print("\nserver logs (" + str(run.logs) + "):")
    for server in run.servers.values():
        for path in server.log_files:
            summarize_log(path)

    for kind, items in ev.problems.items():
        print(f"\nfirst {kind}:")
        for item in items:
            print(f"  {item}")
    print()
    if run.harness_errors:
        print("harness errors (the counts above cannot be trusted):")
        for e in run.harness_errors:
            print(f"  {e}")
        print(f"RESULT: FAILED (harness error: {run.harness_errors[0]})")
        return False
    if not ev.ok:
        why = ", ".join(f"{k} {v}" for k, v in ev.failed.items())
        if ev.dropped:
            why += (", " if why else "") + f"dropped listeners {' '.join(ev.dropped)}"
        print(f"RESULT: FAILED ({why})")
        return False
    print("RESULT: ok")
    return True


def summarize_log(path: Path) -> None:
    """WARN/ERROR counts of one server log (JSON lines), with the most frequent messages."""
    levels: collections.Counter[str] = collections.Counter()
    messages: collections.Counter[tuple[str, str]] = collections.Counter()
    other = 0
    for raw in path.read_text(errors="replace").splitlines():
        try:
            rec = json.loads(raw)
        except ValueError:
            other += 1
            continue
        level = str(rec.get("level", "?")).upper()
        levels[level] += 1
        fields = rec.get("fields", {})
        text = str(fields.get("message", rec.get("message", "")))
        if "error" in fields:
            text += f" — {fields['error']}"
        messages[(level, text[:160])] += 1
    summary = ", ".join(f"{k}: {v}" for k, v in sorted(levels.items())) or "nothing logged"
    if other:
        summary += f", {other} non-JSON lines"
    print(f"  {path.name}: {summary}")
    for (level, text), n in messages.most_common(4):
        print(f"      {n:>5} × {level} {text}")


# --------------------------------------------------------------------------------------


def main() -> int:
    ap = argparse.ArgumentParser(
        description="Fault-injection load against two colloquy processes (run it through "
                    "scripts/faults, which provides the Postgres cluster).")
    ap.add_argument("--short", action="store_true",
                    help="the short form (~30 s; what the test command runs); default: the "
                         "long form (~3.5 min)")
    ap.add_argument("--release", action="store_true",
                    help="(scripts/faults) build and use target/release/colloquy")
    ap.add_argument("--resume", dest="resume", action="store_true", default=RESUME_DEFAULT,
                    help="listeners of a killed/stopped process resume on the other one "
                         f"(Socket.IO auth.resume, /ws since_seq); default {RESUME_DEFAULT}")
    ap.add_argument("--no-resume", dest="resume", action="store_false",
                    help="leave those listeners cut off (checked up to their highest seq)")
    ap.add_argument("--rate", type=float, help="messages per second cap, all senders "
                    f"(short {SHORT.rate:g}, long {LONG.rate:g})")
    ap.add_argument("--senders", type=int, help=f"sender threads (short {SHORT.senders}, "
                    f"long {LONG.senders})")
    ap.add_argument("--conversations", type=int, help="conversations (short "
                    f"{SHORT.conversations}, long {LONG.conversations})")
    args = ap.parse_args()
    if "FAULTS_WORK" not in os.environ:
        ap.error("run this through scripts/faults (it sets up Postgres)")

    profile = dataclasses.replace(SHORT if args.short else LONG)
    for name in ("rate", "senders", "conversations"):
        if getattr(args, name):
            setattr(profile, name, getattr(args, name))

    run = Run(profile, args.resume)
    run.timeline.event(
        f"{'short' if args.short else 'long'} form: {profile.senders} senders, "
        f"{profile.conversations} conversations, ≤{profile.rate:g} msg/s, "
        f"resume {'on' if run.resume else 'off'}, binary {run.binary}")
    try:
        run.setup()
        run.phases()
        run.settle()
        run.collect()
    except KeyboardInterrupt:
        print("faults: interrupted", file=sys.stderr)
        return 130
    except Exception as e:  # noqa: BLE001 — the run could not be carried out
        import traceback
        traceback.print_exc()
        print(f"RESULT: ERROR (the run did not complete: {type(e).__name__}: {e}; "
              f"server logs in {run.logs})")
        return 2
    finally:
        run.teardown()
    return 0 if report(run) else 1


if __name__ == "__main__":
    sys.exit(main())
