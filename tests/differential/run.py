#!/usr/bin/env python3
"""Differential test: one random scenario played against ringmq and against mosquitto, through
an independent client library (Eclipse Paho's Python client), and what each client saw compared.

A scenario is a seeded sequence of operations by a few clients with fixed ids, each connection
MQTT 3.1.1 or 5.0 at random: connect (clean or resumed session, a will or not, under 5.0 a
Receive Maximum or a Maximum Packet Size), take-over, subscribe (one to three filters:
wildcards, QoS, shared subscriptions any client may join, and under 5.0 No Local, Retain As
Published, Retain Handling, a Subscription Identifier), unsubscribe (one or two filters),
publish (QoS 0/1/2, retained or not, empty payloads that clear a retained message, under 5.0
properties and Topic Aliases; now and then a burst sent without waiting, whose copies must
come in order), disconnect (cleanly, or with 5.0's 0x04 or by dropping the socket so the will
goes). Some connections never acknowledge a QoS 1 message: the next connection to the session
must get those again first, DUP set. The operations run one at a time; after each, the
runner waits until no client has received anything for a while. What every client received
after each operation (topic, payload, QoS, RETAIN and DUP flags, properties, in arrival order
per client), its CONNACK's Session Present and reason code, and its SUBACK/UNSUBACK codes make
the transcript; the two transcripts must be equal, except for the differences listed in KNOWN,
each a choice the specifications leave to the server (normalised away, with why).

mosquitto is the reference because it is the most used broker; where they differ, the spec
decides, and a ringmq bug gets a test of its own in the Rust suites.

Usage: tests/differential/run.py [--seeds N] [--first-seed S] [--ops N] [--shards N]
Needs: mosquitto (the broker) and paho-mqtt 1.6 or 2.x (Debian's python3-paho-mqtt, which
tests/setup.sh installs, or pip's); --if-available skips with a line when either is missing.
Environment: RINGMQ_BIN (default target/release/ringmq; built if missing).
"""
import argparse
import itertools
import os
import random
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import warnings
import time

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

CLIENTS = 4
TOPICS = ['a', 'a/b', 'a/c', 'a/b/c', 'b', 'b/a', '/a', 'a/', 'x/y/z', '$x/y']
FILTERS = TOPICS + ['#', 'a/#', 'a/+', '+/+', '+', 'a/+/c', '+/b', '/+', 'a/b/#', '+/#',
                    'x/+/z', 'a/+/#', '$x/#', '$x/+', '+/y']
# Shared subscriptions, which any client may join: which member of a group a message goes
# to is the server's choice, judged by the model (spread_ok).
SHARED = ['$share/g/a/+', '$share/h/a/+', '$share/g/#', '$share/g/b', '$share/h/+/+']
QUIET_S = 0.1
# A short Message Expiry Interval, and a pause that outlasts it (brokers may count whole
# seconds: expired within two).
SHORT_EXPIRY_S = 1
SLEEP_S = 2.1
SETTLE_MAX_S = 2.0
# ringmq's DISCONNECT 0x8E Session taken over with its Reason String, in bytes: under a smaller
# Maximum Packet Size it goes without one (see 'take-over' in KNOWN).
DISCONNECT_SAID = 47

# Choices the specifications leave open, where ringmq and mosquitto choose differently.
# Each entry normalises both transcripts the same way, so what is left must be equal.
KNOWN = {
    'overlap':
        'a client whose subscriptions overlap on a topic: MQTT 3.1.1 3.3.5 and 5.0 3.3.4 let the '
        'server deliver once or once per subscription, and mosquitto 2.0.11 delivers once at '
        'the QoS of one of the subscriptions, not the highest [MQTT-3.3.5-1]: for these the '
        'runner checks ringmq against its own model (one delivery, the highest QoS, RETAIN kept '
        'if any subscription says Retain As Published) and mosquitto\'s copies are left out',
    'options replaced':
        'a subscription replaced by one with another No Local or Retain As Published: '
        'mosquitto 2.0.11 keeps the old options (3.8.4: the new subscription replaces the old, '
        'options included); judged by the model as above',
    'unsuback':
        'MQTT 5 UNSUBACK codes: mosquitto 2.0.11 answers 0x00 for some filters never '
        'subscribed (a $-topic one), where 3.11.3 has 0x11 No subscription existed: judged by '
        'the model',
    'take-over':
        'the connection a take-over closes: mosquitto 2.0.11 closes an MQTT 5 one without '
        'DISCONNECT 0x8E Session taken over (3.1.4, 4.13) and does not publish a 3.1.1 one\'s '
        'will ([MQTT-3.1.2-8]: published when the connection closes unless a DISCONNECT deleted '
        'it): judged by the model; where the old connection\'s Maximum Packet Size leaves '
        'the DISCONNECT no room for its Reason String (sent without it: [MQTT-3.1.2-25]), Paho '
        '1.6 reads no code (it reads one only from a DISCONNECT of over 2 bytes after the '
        'fixed header), so a bare close is judged right too',
    'expired in flight':
        'a QoS 1 message sent, never acknowledged, whose Message Expiry Interval runs out '
        'before the session goes on: mosquitto 2.0.11 does not send it again; ringmq does '
        '([MQTT-4.4.0-1]: unacknowledged PUBLISH packets are sent again; [MQTT-3.3.2-5] '
        'deletes only a copy whose onward delivery has not started): either is judged right',
    'shared':
        'a client\'s copies through shared subscriptions (one per group, its own QoS and '
        'Retain As Published: 4.8.2) and its plain subscriptions: judged by the model, as '
        'mosquitto\'s overlapping copies are; a group of several members: which one gets a '
        'message is the server\'s choice, so the model judges all the copies of that message '
        '(spread_ok), and where a member is offline (the server may keep the message for it '
        'or give it to another, 4.8.2) they are left out of both transcripts; and no retained '
        'messages for a new shared subscription (3.3.1.3 sends them for a new non-shared one; '
        'mosquitto 2.0.11 sends them, later versions do not)',
    'maximum packet size':
        'mosquitto 2.0.11 sends a PUBLISH one byte over the client\'s Maximum Packet Size (it '
        'leaves out the fixed header\'s first byte: [MQTT-3.1.2-24] counts the whole packet): '
        'left out of its transcript; and a QoS 1 or 2 message too large for the client keeps '
        'one place of its Receive Maximum for good, so the runner sets one limit or the other',
    'order':
        'the retained messages a subscription brings, and the copies of one message through '
        'shared and plain subscriptions, arrive in no order the specs name: compared sorted',
}


def log(*args):
    print(*args, flush=True)


class Unavailable(Exception):
    pass


# ---------------------------------------------------------------------------------------------
# Brokers


def free_port():
    with socket.socket() as s:
        s.bind(('127.0.0.1', 0))
        return s.getsockname()[1]


def wait_listening(port, process, what):
    deadline = time.time() + 10
    while time.time() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f'{what} exited with {process.returncode}')
        try:
            with socket.create_connection(('127.0.0.1', port), timeout=0.2):
                return
        except OSError:
            time.sleep(0.05)
    raise RuntimeError(f'{what} did not listen on {port}')


def start_ringmq(work, shards):
    binary = os.environ.get('RINGMQ_BIN', os.path.join(ROOT, 'target', 'release', 'ringmq'))
    if not os.access(binary, os.X_OK):
        subprocess.run(['cargo', 'build', '--release', '-p', 'ringmq'], cwd=ROOT, check=True)
    port = free_port()
    # As mosquitto's max_inflight_messages 0: no bound on unacknowledged messages out (a
    # connection that holds back its acks would otherwise stop at 64).
    conf = os.path.join(work, 'ringmq.toml')
    with open(conf, 'w') as f:
        f.write('[limits]\ninflight_max = 65535\n')
    process = subprocess.Popen(
        [binary, '--config', conf, '--listen', f'127.0.0.1:{port}', '--shards', str(shards),
         '--sys-interval-secs', '0', '--log-level', 'warn'],
        stdout=subprocess.DEVNULL, stderr=open(os.path.join(work, 'ringmq.log'), 'w'))
    wait_listening(port, process, 'ringmq')
    return process, port


def start_mosquitto(work):
    binary = shutil.which('mosquitto') or '/usr/sbin/mosquitto'
    port = free_port()
    conf = os.path.join(work, 'mosquitto.conf')
    with open(conf, 'w') as f:
        f.write(f'listener {port} 127.0.0.1\nallow_anonymous true\npersistence false\n'
                'max_queued_messages 10000\nmax_inflight_messages 0\n')
    process = subprocess.Popen([binary, '-c', conf], stdout=subprocess.DEVNULL,
                               stderr=open(os.path.join(work, 'mosquitto.log'), 'w'))
    wait_listening(port, process, 'mosquitto')
    return process, port


# ---------------------------------------------------------------------------------------------
# Scenarios


def scenario(seed, ops):
    """The operations (tuples) of one seed, and the model's verdicts on what KNOWN leaves to
    it: {('live', op index, client, topic, payload): the copies, [(qos, retain)], sorted}
    for a client connected when the message is published (it gets it during that operation),
    ('queued', client, topic, payload): [(qos, retain, size under 5.0, size under 3.1.1)] for
    one offline (what fits its next connection's Maximum Packet Size comes then),
    ('spread', op index, topic, payload): (fixed, groups) for a message that shared
    subscriptions with several members take (see spread_ok), ('undetermined', topic,
    payload) for one where a member of such a group is offline (the server may queue it for
    that member or give it to another: 4.8.2), ('closed', op index): what the connection a
    take-over closes hears, ('limits', op index): each client's Maximum Packet Size from
    then on, ('epoch', op index): the pauses so far, ('expires', payload): the epoch a message
    with a short expiry was published in, and ('unordered', op index): a burst whose order
    is not checked."""
    rng = random.Random(seed)
    connected = [False] * CLIENTS
    version = [5] * CLIENTS
    # The model: each client's subscriptions (filter -> (qos, no_local, rap, replaced,
    # identifier)), whether its session outlives the connection, its connection's Maximum
    # Packet Size and the topic aliases it set.
    subs = [{} for _ in range(CLIENTS)]
    lasting = [False] * CLIENTS
    wills = [None] * CLIENTS
    mps = [None] * CLIENTS
    aliases = [{} for _ in range(CLIENTS)]
    # Pauses so far (see 'sleep').
    epoch = 0
    judged = {}
    plan = []

    def groups_of(topic):
        """The shared subscriptions (filter -> {member: options}) that take `topic`."""
        groups = {}
        for s in range(CLIENTS):
            if connected[s] or lasting[s]:
                for f, o in subs[s].items():
                    if f.startswith('$share/') and matches(f, topic):
                        groups.setdefault(f, {})[s] = o
        return groups

    def unsure(topic):
        """Whether a message on `topic` goes to a shared subscription with several members."""
        return any(len(members) > 1 for members in groups_of(topic).values())

    def published(c, topic, payload, qos, retain, props=None, judge_all=False):
        """What the model says of a message `c` publishes (or its will); whether the copies
        are judged client by client (else spread or undetermined)."""
        groups = groups_of(topic)
        spread = {f: m for f, m in groups.items() if len(m) > 1}
        if spread and any(not connected[s] for m in spread.values() for s in m):
            judged[('undetermined', topic, payload)] = True
            return False

        def copy(s, q, rap, options):
            ids = sorted(o[4] for o in options if o[4])
            return (q, int(retain and rap), packet_size(topic, payload, q, props, ids, 5),
                    packet_size(topic, payload, q, props, ids, 4))

        def fits(s, x):
            return mps[s] is None or x[2 if version[s] == 5 else 3] <= mps[s]

        fixed, options = {}, {}
        for s in range(CLIENTS):
            if not (connected[s] or lasting[s]):
                continue
            every = [(f, o) for f, o in subs[s].items() if matches(f, topic)]
            hits = [o for f, o in every if not f.startswith('$share/') and not (o[1] and s == c)]
            # One copy for the plain subscriptions together, one per shared subscription
            # it alone holds (its own QoS, Retain As Published and identifier: 4.8.2).
            copies = [copy(s, min(qos, o[0]), o[2], [o]) for f, o in every
                      if f.startswith('$share/') and f not in spread]
            if hits:
                copies.append(copy(s, min(qos, max(o[0] for o in hits)), any(o[2] for o in hits),
                                   hits))
            for f, o in every:
                if f in spread:
                    options.setdefault(f, {})[s] = copy(s, min(qos, o[0]), o[2], [o])
            if not (judge_all or spread or len(hits) > 1 or len(copies) > 1
                    or any(f.startswith('$share/') for f, _ in every)
                    or any(o[3] for _, o in every)):
                continue
            # A connected client gets it during this operation, an offline one its QoS 1
            # and 2 copies when it comes back (those that fit that connection).
            if not connected[s]:
                judged[('queued', s, topic, payload)] = sorted(x for x in copies if x[0] > 0)
            elif spread:
                fixed[s] = sorted(x[:2] for x in copies if fits(s, x))
            else:
                judged[('live', len(plan) - 1, s, topic, payload)] = sorted(
                    x[:2] for x in copies if fits(s, x))
        if spread:
            # A member whose connection cannot take the message: the server discards it as
            # if sent ([MQTT-3.1.2-25]), so the group's copy may go nowhere.
            judged[('spread', len(plan) - 1, topic, payload)] = (fixed, [
                {s: (x[:2] if fits(s, x) else None) for s, x in members.items()}
                for members in options.values()])
            return False
        return True

    for step in range(ops):
        c = rng.randrange(CLIENTS)
        takeover = connected[c] and rng.random() < 0.04
        if takeover and version[c] == 4 and wills[c] and wills[c][3]:
            # ringmq publishes a 3.1.1 will on a take-over, mosquitto does not (KNOWN): a
            # retained one would leave the two retained stores apart for the rest of the run.
            takeover = False
        if not connected[c] or takeover:
            v = rng.choice([4, 5])
            clean = rng.random() < 0.4
            expiry = rng.choice([0, 300]) if v == 5 else None
            will = None
            if rng.random() < 0.4:
                will = (rng.choice(TOPICS), f'will{step}', rng.randrange(3), rng.random() < 0.2)
            # MQTT 5 limits a client may set: Receive Maximum (how many QoS 1 and 2 messages
            # it takes unacknowledged) or Maximum Packet Size (larger ones are not sent); not
            # both (KNOWN).
            limits = (None, None)
            if v == 5 and rng.random() < 0.5:
                limits = rng.choice([(1, None), (2, None)]
                                    + [(None, m) for m in (24, 32, 40, 48, 64)])
            # A connection that never acknowledges a QoS 1 message: the server must send
            # them again, DUP set, when the session goes on ([MQTT-4.4.0-1]; see resent).
            # Not beside a Receive Maximum, which would hold back what the model expects.
            hold = limits[0] is None and rng.random() < 0.25
            plan.append(('connect', c, v, clean, expiry, will, limits, hold))
            if takeover:
                # The old connection's close: MQTT 5 DISCONNECT 0x8E Session taken over; under
                # 3.1.1 a bare close (Paho says 128), and its will goes ([MQTT-3.1.2-8]).
                # Paho 1.6 reads a DISCONNECT's code only from one with a property: under a
                # small Maximum Packet Size, where the server leaves its Reason String out
                # ([MQTT-3.1.2-25]), Paho says the connection was lost (KNOWN).
                judged[('closed', len(plan) - 1)] = 'closed' if version[c] == 4 \
                    else 142 if mps[c] is None or mps[c] >= DISCONNECT_SAID else (142, 'closed')
                # [MQTT-3.1.3-9]: an MQTT 5 will waits while the session goes on, so a
                # take-over that continues the session sends none.
                goes_on = lasting[c] and not clean
                if wills[c] and (version[c] == 4 or not goes_on):
                    connected[c] = False
                    if published(c, *wills[c], judge_all=True):
                        # Not to the old session itself when it ends with its connection
                        # (mosquitto hands it to the new connection).
                        mine = ('live', len(plan) - 1, c) + wills[c][:2]
                        if ('queued', c) + wills[c][:2] not in judged:
                            judged.setdefault(mine, [])
            if clean or not lasting[c]:
                subs[c] = {}
            lasting[c] = (not clean) if v == 4 else bool(expiry)
            connected[c], version[c], wills[c], mps[c] = True, v, will, limits[1]
            aliases[c] = {}
            judged[('limits', len(plan) - 1)] = tuple(mps)
            continue
        kind = rng.choices(['subscribe', 'unsubscribe', 'publish', 'disconnect', 'drop', 'sleep'],
                           weights=[4, 1, 8, 1, 1, 0.25])[0]
        if kind == 'sleep':
            # Longer than a short Message Expiry Interval: what was published with one before
            # has expired after ([MQTT-3.3.2-5]; see normalise).
            plan.append(('sleep', c))
            epoch += 1
            judged[('epoch', len(plan) - 1)] = epoch
        elif kind == 'subscribe':
            # One to three filters in one SUBSCRIBE: handled as that many SUBSCRIBEs in turn
            # (3.8.4), an identifier for all of them.
            identifier = None
            if version[c] == 5:
                identifier = rng.choice([None, None, 1, 7, 300])
            entries = []
            for _ in range(rng.choice([1, 1, 1, 2, 3])):
                topic_filter, qos = rng.choice(FILTERS), rng.randrange(3)
                options = None
                if version[c] == 5:
                    options = (rng.random() < 0.2, rng.random() < 0.3, rng.choice([0, 0, 1, 2]))
                if rng.random() < 0.2:
                    # Alone in its SUBSCRIBE (see normalise).
                    topic_filter = rng.choice(SHARED)
                    if options:
                        options = (False,) + options[1:]  # No Local on $share: a protocol error
                    entries = [(topic_filter, qos, options)]
                    break
                entries.append((topic_filter, qos, options))
            plan.append(('subscribe', c, entries, identifier))
            for topic_filter, qos, options in entries:
                no_local, rap = (options or (False, False))[:2]
                old = subs[c].get(topic_filter)
                replaced = old is not None and (old[3] or old[1:3] != (no_local, rap))
                subs[c][topic_filter] = (qos, no_local, rap, replaced, identifier)
        elif kind == 'unsubscribe':
            filters = [rng.choice(FILTERS + SHARED) for _ in range(rng.choice([1, 1, 2]))]
            plan.append(('unsubscribe', c, filters))
            codes = []
            for topic_filter in filters:
                # 0x11 No subscription existed (3.11.3); a filter named twice is gone the
                # second time.
                codes.append(0 if topic_filter in subs[c] else 0x11)
                subs[c].pop(topic_filter, None)
            if version[c] == 5:
                judged[('unsuback', len(plan) - 1)] = codes
        elif kind == 'publish':
            # Most often one message; now and then two to four sent without waiting, which
            # must come in order per topic and QoS [MQTT-4.6.0-6] (see in_order).
            count = 1 if rng.random() < 0.85 else rng.randrange(2, 5)
            burst_topic = rng.choice(TOPICS)
            # One QoS for the whole burst, or retained messages in none: a QoS 2 message may
            # be taken on its PUBLISH or its PUBREL (4.3.3: methods A and B), so retained
            # messages of mixed QoS on one topic may end either way.
            burst_qos = rng.randrange(3) if rng.random() < 0.5 else None
            messages = []
            for k in range(count):
                tag = f'{step}' if count == 1 else f'{step}.{k}'
                topic = rng.choice(TOPICS) if count == 1 or rng.random() < 0.4 else burst_topic
                qos = rng.randrange(3) if burst_qos is None else burst_qos
                retain = rng.random() < 0.3 and (count == 1 or burst_qos is not None)
                reuse = version[c] == 5 and aliases[c] and rng.random() < 0.3
                if reuse:
                    topic = rng.choice(sorted(aliases[c].values()))
                # Copies are told apart by payload: a message shared subscriptions spread, or
                # one of a burst, has its own.
                empty = count == 1 and rng.random() < 0.1 and not unsure(topic)
                payload = '' if empty else f'p{tag}'
                props = None
                if version[c] == 5 and rng.random() < 0.4:
                    props = {'UserProperty': [('k', f'u{tag}'), ('k', 'again')]}
                    if rng.random() < 0.5:
                        props['ContentType'] = 'text/plain'
                        props['PayloadFormatIndicator'] = 1
                    if rng.random() < 0.5:
                        props['ResponseTopic'] = 'reply/here'
                        props['CorrelationData'] = f'c{tag}'.encode()
                    if rng.random() < 0.3:
                        props['MessageExpiryInterval'] = 3600
                if version[c] == 5 and payload and rng.random() < 0.15:
                    # A short Message Expiry Interval (see 'sleep'), retained more often than
                    # not, so that later subscriptions ask for it.
                    props = dict(props or {}, MessageExpiryInterval=SHORT_EXPIRY_S)
                    judged[('expires', payload)] = epoch
                    retain = retain or (rng.random() < 0.5 and (count == 1 or burst_qos is not None))
                # A Topic Alias (3.3.2.3.4): set with the topic, then used alone (empty
                # topic) or set again to another topic, for this connection only.
                alias, by_alias = None, False
                if reuse or (version[c] == 5 and rng.random() < 0.3):
                    known = [a for a, t in aliases[c].items() if t == topic]
                    if known and rng.random() < 0.8:
                        alias, by_alias = known[0], True
                    else:
                        alias = rng.randrange(1, 4)
                        aliases[c][alias] = topic
                messages.append((topic, payload, qos, retain, props, alias, by_alias))
            plan.append(('publish', c, messages))
            if count > 1 and any(groups_of(m[0]) for m in messages):
                # A shared subscription's copies go to one member each, so a client's copies
                # no longer come one per subscription and message: see in_order.
                judged[('unordered', len(plan) - 1)] = True
            for topic, payload, qos, retain, props, _, _ in messages:
                published(c, topic, payload, qos, retain, props)
        else:
            # An MQTT 5 DISCONNECT may ask for the will: reason 0x04 (3.14.2.1).
            with_will = kind == 'disconnect' and version[c] == 5 and rng.random() < 0.3
            plan.append((kind, c, 4) if with_will else (kind, c))
            connected[c] = False
            if (kind == 'drop' or with_will) and wills[c]:
                published(c, *wills[c])
            if not lasting[c]:
                subs[c] = {}
    for c in range(CLIENTS):
        if connected[c]:
            plan.append(('disconnect', c))
    return plan, judged


def varint_size(n):
    return 1 if n < 128 else 2 if n < 16384 else 3 if n < 2097152 else 4


def packet_size(topic, payload, qos, props, ids, v):
    """The size of a PUBLISH a server sends: fixed header, topic, packet id (QoS 1 and 2),
    properties (under 5.0: the publisher's and the subscription identifiers), payload."""
    body = 2 + len(topic.encode()) + (2 if qos else 0) + len(payload.encode())
    if v == 5:
        n = sum(1 + varint_size(i) for i in ids)
        for name, value in (props or {}).items():
            if name == 'UserProperty':
                n += sum(1 + 2 + len(k.encode()) + 2 + len(x.encode()) for k, x in value)
            elif name == 'PayloadFormatIndicator':
                n += 2
            elif name == 'MessageExpiryInterval':
                n += 5
            else:
                n += 1 + 2 + len(value if isinstance(value, bytes) else value.encode())
        body += varint_size(n) + n
    return 1 + varint_size(body) + body


def matches(topic_filter, topic):
    """MQTT topic matching: a `$share/{group}/` prefix names the filter after it, and a
    wildcard first level does not match a topic starting with `$` [MQTT-4.7.2-1]."""
    if topic_filter.startswith('$share/'):
        topic_filter = topic_filter.split('/', 2)[2]
    if topic.startswith('$') and topic_filter[:1] in ('+', '#'):
        return False
    f, t = topic_filter.split('/'), topic.split('/')
    for i, level in enumerate(f):
        if level == '#':
            return True
        if i >= len(t) or (level != '+' and level != t[i]):
            return False
    return len(f) == len(t)


# ---------------------------------------------------------------------------------------------
# Playing a scenario


class Player:
    def __init__(self, port, mqtt):
        self.port, self.mqtt = port, mqtt
        self.lock = threading.Lock()
        self.events = []        # (client, event) since the last take()
        self.last_event = time.time()
        self.clients = [None] * CLIENTS
        self.held = [[] for _ in range(CLIENTS)]

    def record(self, c, event):
        with self.lock:
            self.events.append((c, event))
            self.last_event = time.time()

    def take(self):
        """Waits until nothing arrived for QUIET_S (at most SETTLE_MAX_S), then returns what
        arrived since the last take, per client, in arrival order."""
        start = time.time()
        with self.lock:
            self.last_event = max(self.last_event, start)
        while time.time() - start < SETTLE_MAX_S:
            with self.lock:
                quiet = time.time() - self.last_event
            if quiet >= QUIET_S:
                break
            time.sleep(0.01)
        with self.lock:
            events, self.events = self.events, []
        per_client = {}
        for c, event in events:
            per_client.setdefault(c, []).append(event)
        return per_client

    def wait(self, flag, what):
        if not flag.wait(5):
            raise RuntimeError(f'no answer to {what}')

    def play(self, op):
        mqtt = self.mqtt
        kind, c = op[0], op[1]
        if kind == 'connect':
            _, _, v, clean, expiry, will, (receive_max, packet_max), hold = op
            # What the last connection got and never acknowledged (QoS 1, held back).
            if self.held[c]:
                self.record(c, ('unacknowledged', tuple(self.held[c])))
            held = self.held[c] = []
            protocol = mqtt.MQTTv5 if v == 5 else mqtt.MQTTv311
            kwargs = {} if v == 5 else {'clean_session': clean}
            if hasattr(mqtt, 'CallbackAPIVersion'):  # paho 2: the callbacks of paho 1
                kwargs['callback_api_version'] = mqtt.CallbackAPIVersion.VERSION1
            client = mqtt.Client(client_id=f'diff{c}', protocol=protocol, **kwargs)
            # A connection the broker closes stays closed for the run (a take-over's old
            # one, a dropped one): paho would reconnect it after this delay.
            client.reconnect_delay_set(3600, 3600)
            connected = threading.Event()

            def on_connect(client, userdata, flags, rc, properties=None, c=c):
                self.record(c, ('connack', flags['session present'], code(rc)))
                connected.set()

            def on_message(client, userdata, message, c=c, held=held):
                self.record(c, ('msg', message.topic, message.payload.decode(), message.qos,
                                int(message.retain), carried(message), int(message.dup),
                                size(message)))
                if hold and message.qos == 1:
                    held.append((message.topic, message.payload.decode(), message.qos,
                                 size(message), v))

            client.on_connect, client.on_message = on_connect, on_message
            if hold:
                # paho acknowledges a QoS 1 message after on_message: not on this one.
                client._send_puback = lambda mid: 0
            old = self.clients[c]
            closed = threading.Event()
            if old is not None:
                # A take-over: the broker closes the old connection; what it says then (an
                # MQTT 5 DISCONNECT's reason code) goes in the transcript. Set before this
                # CONNECT goes out (paho's connect sends it).
                def on_disconnect(client, userdata, rc, properties=None, c=c):
                    # An MQTT 5 DISCONNECT's code, or a bare close.
                    said = code(rc) if code(rc) == 142 else 'closed'
                    self.record(c, ('old connection closed', said))
                    closed.set()
                old.on_disconnect = on_disconnect
            if will:
                client.will_set(will[0], will[1], will[2], will[3])
            if v == 5:
                from paho.mqtt.properties import Properties
                from paho.mqtt.packettypes import PacketTypes
                props = Properties(PacketTypes.CONNECT)
                props.SessionExpiryInterval = expiry
                if receive_max:
                    props.ReceiveMaximum = receive_max
                if packet_max:
                    props.MaximumPacketSize = packet_max
                client.connect('127.0.0.1', self.port, 60, clean_start=clean, properties=props)
            else:
                client.connect('127.0.0.1', self.port, 60)
            client.loop_start()
            self.wait(connected, op)
            if old is not None:
                self.wait(closed, f'{op}: the old connection\'s close')
            self.clients[c] = client
        elif kind == 'subscribe':
            _, _, entries, identifier = op
            done = threading.Event()
            client = self.clients[c]

            def on_subscribe(client, userdata, mid, granted, properties=None, c=c):
                self.record(c, ('suback', [code(x) for x in granted]))
                done.set()

            client.on_subscribe = on_subscribe
            if entries[0][2] is None:
                client.subscribe([(f, qos) for f, qos, _ in entries])
            else:
                properties = None
                if identifier:
                    from paho.mqtt.properties import Properties
                    from paho.mqtt.packettypes import PacketTypes
                    properties = Properties(PacketTypes.SUBSCRIBE)
                    properties.SubscriptionIdentifier = identifier
                client.subscribe([(f, self.mqtt.SubscribeOptions(
                    qos=qos, noLocal=no_local, retainAsPublished=rap, retainHandling=handling))
                    for f, qos, (no_local, rap, handling) in entries], properties=properties)
            self.wait(done, op)
        elif kind == 'unsubscribe':
            done = threading.Event()
            client = self.clients[c]

            def on_unsubscribe(client, userdata, mid, properties=None, codes=None, c=c):
                if codes is not None and not isinstance(codes, list):
                    codes = [codes]  # paho 1 passes a lone code bare
                self.record(c, ('unsuback', [code(x) for x in codes or []]))
                done.set()

            client.on_unsubscribe = on_unsubscribe
            client.unsubscribe(list(op[2]))
            self.wait(done, op)
        elif kind == 'publish':
            sent = []
            for topic, payload, qos, retain, props, alias, by_alias in op[2]:
                properties = None
                if props or alias:
                    from paho.mqtt.properties import Properties
                    from paho.mqtt.packettypes import PacketTypes
                    properties = Properties(PacketTypes.PUBLISH)
                    for name, value in (props or {}).items():
                        setattr(properties, name, value)
                    if alias:
                        properties.TopicAlias = alias
                sent.append(self.clients[c].publish('' if by_alias else topic, payload, qos,
                                                    retain, properties))
            for info in sent:
                info.wait_for_publish(5)
                if not info.is_published():
                    raise RuntimeError(f'{op} not acknowledged')
        elif kind == 'disconnect':
            client = self.clients[c]
            if len(op) > 2:
                from paho.mqtt.reasoncodes import ReasonCodes
                from paho.mqtt.packettypes import PacketTypes
                client.disconnect(ReasonCodes(PacketTypes.DISCONNECT, identifier=op[2]))
            else:
                client.disconnect()
            # Its network loop ends by itself once the DISCONNECT is out.
            self.clients[c] = None
        elif kind == 'sleep':
            time.sleep(SLEEP_S)
        elif kind == 'drop':
            client = self.clients[c]
            # Closed under paho's network loop, which sees the connection lost and, as told,
            # waits an hour before it would reconnect (loop_stop would cost up to a second).
            client.socket().shutdown(socket.SHUT_RDWR)
            self.clients[c] = None

    def close(self):
        for client in self.clients:
            if client is not None:
                client.loop_stop()
                try:
                    client.socket().close()
                except Exception:
                    pass


def code(rc):
    """A reason or return code as a number (paho gives ints and ReasonCodes)."""
    return getattr(rc, 'value', rc)


PROPERTIES = ('UserProperty', 'ContentType', 'PayloadFormatIndicator', 'ResponseTopic',
              'CorrelationData', 'SubscriptionIdentifier')


def carried(message):
    """The MQTT 5 properties a message arrived with (Message Expiry: whether it is there)."""
    props = getattr(message, 'properties', None)
    if props is None:
        return ()
    out = []
    for name in PROPERTIES:
        value = getattr(props, name, None)
        if value is not None:
            if name == 'SubscriptionIdentifier':
                value = sorted(value) if isinstance(value, list) else [value]
            out.append((name, value))
    if getattr(props, 'MessageExpiryInterval', None) is not None:
        out.append(('MessageExpiryInterval', 'present'))
    return tuple(out)


def size(message):
    """The size of the PUBLISH that brought `message` (its properties packed again: their
    order does not change it)."""
    props = getattr(message, 'properties', None)
    n = len(props.pack()) if props is not None else 0
    body = 2 + len(message.topic.encode()) + (2 if message.qos else 0) + n + len(message.payload)
    return 1 + varint_size(body) + body


def transcript(port, plan, mqtt):
    player = Player(port, mqtt)
    lines = []
    try:
        for i, op in enumerate(plan):
            player.play(op)
            lines.append((i, op, player.take()))
    finally:
        player.close()
    return lines


def normalise(i, op, per_client, judged, ours, limits, epoch):
    """Applies KNOWN to one operation's events. The copies of a message the model judges are
    taken out of both transcripts when ringmq's are what the model says (as many, with those
    QoS and RETAIN flags); else ringmq's stay, with what was expected, to differ. `limits`:
    each client's Maximum Packet Size at this operation; `epoch`: the pauses before it."""
    out = {}
    spread = {}  # ('spread', ...) -> {client: [(qos, retain)]}: what ringmq's clients got
    for c, events in per_client.items():
        resends = []
        if op[0] == 'connect':
            events, resends = resent(events, op[2], op[6][1],
                                      lambda payload: ('expires', payload) in judged)
        copies = {}
        for event in events:
            if event[0] == 'msg' and op[0] != 'subscribe':
                key = ('live', i, c, event[1], event[2])
                if key not in judged and op[0] == 'connect':
                    key = ('queued', c, event[1], event[2])
                if key in judged:
                    copies.setdefault(key, []).append(event)
        kept = []
        for event in events:
            if event[0] == 'msg':
                limit = limits[c]
                if limit is not None and event[-1] > limit:
                    if ours:  # [MQTT-3.1.2-24]
                        kept.append(event + ('over the Maximum Packet Size', limit))
                    elif event[-1] > limit + 1:  # mosquitto 2.0.11 sends one byte more: KNOWN
                        kept.append(event)
                    continue
                expires = judged.get(('expires', event[2]))
                if expires is not None and op[0] != 'publish':
                    # A message with a short expiry, from an offline queue or the retained
                    # store: maybe expired when published in this epoch, surely in a later.
                    if expires < epoch:
                        kept.append(event + ('expired', ) if ours else event)
                    continue
                if op[0] != 'subscribe':
                    if ('undetermined', event[1], event[2]) in judged:
                        continue
                    key = ('spread', i, event[1], event[2])
                    # (Not the copy a take-over's own will leaves in its session: the new
                    # connection gets that one as queued.)
                    mine = op[0] == 'connect' and c == op[1] \
                        and ('queued', c, event[1], event[2]) in judged
                    if key in judged and not mine:
                        spread.setdefault(key, {}).setdefault(c, []).append(event[3:5])
                        continue
            if event[0] == 'unsuback' and ('unsuback', i) in judged:
                if ours and event[1] != judged[('unsuback', i)]:
                    kept.append(event + ('expected', judged[('unsuback', i)]))
                continue
            if event[0] == 'old connection closed':
                expected = judged[('closed', i)]
                if ours and event[1] not in (expected if type(expected) is tuple else (expected,)):
                    kept.append(event + ('expected', expected))
                continue
            key = next((k for k, found in copies.items() if event in found), None)
            if key is not None:
                expected = judged[key]
                if key[0] == 'queued':
                    # What fits the new connection, under its version.
                    at = 2 if op[2] == 5 else 3
                    if judged.get(('expires', key[3]), epoch) < epoch:
                        expected = []
                    expected = sorted(x[:2] for x in expected
                                      if limits[c] is None or x[at] <= limits[c])
                if ours and sorted(e[3:5] for e in copies[key]) != expected:
                    kept.append(event + ('expected', expected))
                continue
            kept.append(event)
        if op[0] == 'subscribe':
            if op[2][0][0].startswith('$share/') and not ours:
                # mosquitto 2.0.11 sends retained messages to a new shared subscription
                # (3.3.1.3: only a new non-shared one gets them; fixed in later mosquittos).
                # A shared filter comes alone in its SUBSCRIBE.
                kept = [event for event in kept if event[0] != 'msg']
        if op[0] == 'publish' and len(op[2]) > 1 and ('unordered', i) not in judged:
            kept += in_order(op[2], events)
        if op[0] != 'connect':
            # One message (or the retained ones a subscription brings): its copies, through
            # shared and plain subscriptions, come in no order the specs name.
            kept.sort(key=repr)
        out[c] = resends + kept
    if ours:
        for key, verdict in judged.items():
            if key[:2] == ('spread', i) and not spread_ok(verdict, spread.get(key, {})):
                out.setdefault('shared', []).append(
                    (key[2], key[3], 'got', spread.get(key, {}), 'expected', verdict))
            if key[:2] != ('live', i) or not verdict:
                continue
            c, topic, payload = key[2:]
            got = any(e[0] == 'msg' and e[1:3] == (topic, payload) for e in per_client.get(c, []))
            if not got:
                out.setdefault(c, []).append(('missing', topic, payload, verdict))
    return {c: events for c, events in out.items() if events}


def resent(events, version, packet_max, expired):
    """[MQTT-4.4.0-1], [MQTT-3.3.1-1]: on a connection that goes on with a session, the QoS 1
    messages the last connection got and never acknowledged come again first, in their order,
    DUP set; with no session, none does. Those larger than the new connection's Maximum
    Packet Size are dropped instead ([MQTT-3.1.2-25]); a few bytes under it either way (the
    size was that of the last connection; mosquitto sends one byte over: KNOWN), and any if
    the last connection spoke another MQTT version (properties come or go). One published with
    a short Message Expiry Interval (`expired(payload)`: it may have run out since, pause or
    not) may come or not: the spec says to send it again, mosquitto drops it (KNOWN). Returns the
    events without those, and what differs from that rule (as events)."""
    unacknowledged = next((e[1] for e in events if e[0] == 'unacknowledged'), ())
    present = next((e[1] for e in events if e[0] == 'connack'), 0)
    dup = [e for e in events if e[0] == 'msg' and e[6]]
    rest = [e for e in events if e[0] != 'unacknowledged' and not (e[0] == 'msg' and e[6])]
    got = [e[1:4] for e in dup]
    # Each held message: 'must' come again, 'may', or must not.
    held = [(m[:3], 'not' if packet_max is not None and m[3] > packet_max + 1 and m[4] == version
             else 'may' if expired(m[1]) or packet_max is not None
             and (m[3] > packet_max - 8 or m[4] != version) else 'must')
            for m in unacknowledged if present]
    left = list(got)
    for message, verdict in held:
        if left and left[0] == message and verdict != 'not':
            left.pop(0)
        elif verdict == 'must':
            left.append(('missing', message))
    # What came before the first message that is not sent again.
    first = [e[1:4] for e in events if e[0] == 'msg'][:len(dup)]
    if left or first != got:
        expected = [m for m, verdict in held if verdict != 'not']
        return rest, [('resent', got, 'expected', expected)]
    return rest, []


def in_order(messages, events):
    """[MQTT-4.6.0-6]: a client's copies of the messages one client sent in a row, for each
    topic and QoS they were sent with, in the order they were sent. With several copies of
    each (overlapping subscriptions: mosquitto sends one per subscription, in no order
    between them), the first copy of each: a copy of a later message before any of an earlier
    one is out of order for the subscription it came through, when each subscription takes
    every message (no shared subscription matches: the scenario says). What came out of
    order, as an event (none if all is well)."""
    sent = {payload: (k, qos) for k, (_, payload, qos, *_) in enumerate(messages)}
    order = {}
    for event in events:
        if event[0] == 'msg' and event[2] in sent:
            k, qos = sent[event[2]]
            seen = order.setdefault((event[1], qos), [])
            if k not in seen:
                seen.append(k)
    return [('out of order', topic, qos, seen) for (topic, qos), seen in sorted(order.items())
            if seen != sorted(seen)]


def spread_ok(verdict, got):
    """Whether what the clients got of a message is the model's: each its fixed copies (plain
    subscriptions, groups it alone holds) and, for each group with several members, one copy
    at one member (with that member's QoS and Retain As Published; none where it does not fit
    that member's Maximum Packet Size)."""
    fixed, groups = verdict
    clients = set(fixed) | set(got) | {s for g in groups for s in g}
    for choice in itertools.product(*[list(g.items()) for g in groups]):
        want = {s: list(fixed.get(s, [])) for s in clients}
        for s, x in choice:
            if x is not None:
                want[s].append(x)
        if all(sorted(want[s]) == sorted(got.get(s, [])) for s in clients):
            return True
    return False


def main():
    parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    parser.add_argument('--seeds', type=int, default=5)
    parser.add_argument('--first-seed', type=int, default=1)
    parser.add_argument('--ops', type=int, default=120)
    parser.add_argument('--shards', type=int, default=1)
    parser.add_argument('--if-available', action='store_true')
    options = parser.parse_args()
    # paho 2 warns of the paho 1 callbacks kept here for Debian's paho 1.6.
    warnings.filterwarnings('ignore', category=DeprecationWarning)
    try:
        import paho.mqtt.client as mqtt
        if not hasattr(mqtt, 'SubscribeOptions'):
            raise Unavailable('paho-mqtt is older than 1.5 (no MQTT 5)')
        if not (shutil.which('mosquitto') or os.path.exists('/usr/sbin/mosquitto')):
            raise Unavailable('no mosquitto broker installed')
    except ImportError as why:
        # Debian's paho (tests/setup.sh installs it) is for the system's Python.
        if sys.executable != '/usr/bin/python3' and os.access('/usr/bin/python3', os.X_OK):
            os.execv('/usr/bin/python3', ['/usr/bin/python3', os.path.abspath(__file__)]
                     + sys.argv[1:])
        print(f'differential: skipped: {why}')
        sys.exit(0 if options.if_available else 1)
    except Unavailable as why:
        print(f'differential: skipped: {why}')
        sys.exit(0 if options.if_available else 1)

    failures = 0
    for seed in range(options.first_seed, options.first_seed + options.seeds):
        plan, judged = scenario(seed, options.ops)
        # The runner tells operations apart by time (QUIET_S without a packet): on a busy
        # machine a late delivery lands in the next operation. A real difference comes back
        # when the seed is played again; a late packet does not.
        for attempt in (1, 2):
            work = tempfile.mkdtemp(prefix='ringmq-differential-')
            differing = play_seed(seed, plan, judged, work, options.shards, mqtt)
            log(f'seed {seed}: {len(plan)} operations, {len(differing)} differing'
                + (' (played again)' if attempt == 2 else ''))
            if not differing:
                shutil.rmtree(work, ignore_errors=True)
                break
            for line in differing[:5]:
                log(line)
            with open(os.path.join(work, 'plan.txt'), 'w') as f:
                f.write('\n'.join(f'{i} {op}' for i, op in enumerate(plan)))
            log(f'  (plan and broker logs in {work})')
        else:
            failures += 1
    log(f'differential: {options.seeds - failures} of {options.seeds} scenarios alike')
    sys.exit(1 if failures else 0)


def play_seed(seed, plan, judged, work, shards, mqtt):
    """Plays `plan` against both brokers; returns a line per operation whose transcripts
    differ once normalised."""
    results = {}
    for name in ('mosquitto', 'ringmq'):
        process, port = start_mosquitto(work) if name == 'mosquitto' else start_ringmq(work, shards)
        try:
            results[name] = transcript(port, plan, mqtt)
        finally:
            process.terminate()
            process.wait(10)
    differing = []
    limits, epoch = (None,) * CLIENTS, 0
    for (i, op, theirs), (_, _, ours) in zip(results['mosquitto'], results['ringmq']):
        limits = judged.get(('limits', i), limits)
        epoch = judged.get(('epoch', i), epoch)
        theirs = normalise(i, op, theirs, judged, False, limits, epoch)
        ours = normalise(i, op, ours, judged, True, limits, epoch)
        if theirs != ours:
            differing.append(f'seed {seed} op {i} {op}:\n  mosquitto {theirs}\n  ringmq    {ours}')
    return differing


if __name__ == '__main__':
    main()
