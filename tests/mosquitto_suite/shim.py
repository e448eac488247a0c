#!/usr/bin/env python3
"""Stands in for mosquitto in mosquitto's own broker tests: reads the arguments a test gives
mosquitto (-p PORT, -c CONF), writes the ringmq configuration that means the same, and runs
ringmq in this process (exec), so the test's terminate() and wait() reach the broker.

mosquitto options ringmq has no counterpart for are ignored with a line on stderr; the tests
that need them are listed as known differences in run.py. Environment: RINGMQ_BIN (the
broker), SHIM_SHARDS (default 1), SHIM_DIR (where configurations and persistence go).
"""
import os
import sys
import tempfile


def main():
    args = sys.argv[1:]
    port = conf = None
    i = 0
    while i < len(args):
        if args[i] == '-p':
            port, i = args[i + 1], i + 2
        elif args[i] == '-c':
            conf, i = args[i + 1], i + 2
        else:
            i += 1
    ports, top, limits, persistence = [], {}, {}, {}
    if port:
        ports.append(port)
    if conf:
        for line in open(conf):
            line = line.strip()
            if not line or line.startswith('#'):
                continue
            key, _, value = line.partition(' ')
            value = value.strip()
            if key in ('listener', 'port'):
                ports.append(value.split()[0])
            elif key == 'allow_anonymous':
                top['allow_anonymous'] = value == 'true'
            elif key in ('password_file', 'acl_file'):
                top[key] = os.path.abspath(value)
            elif key == 'max_packet_size':
                limits['packet_size_max'] = int(value)
            elif key == 'max_keepalive':
                limits['keepalive_max_secs'] = int(value)
            elif key == 'max_inflight_messages':
                limits['inflight_max'] = int(value)
            elif key == 'max_queued_messages':
                limits['offline_queue_max'] = int(value)
            elif key == 'maximum_qos':
                limits['qos_max'] = int(value)
            elif key == 'persistence' and value == 'true':
                persistence['mode'] = 'on'
            elif key != 'persistence_file':
                sys.stderr.write(f'shim: no ringmq counterpart, ignored: {line}\n')
    work = os.environ.get('SHIM_DIR') or tempfile.gettempdir()
    if persistence:
        # One log directory per listening port: a test restarting its broker finds it again.
        persistence['dir'] = os.path.join(work, f'persist-{(ports or ["1888"])[0]}')
        os.makedirs(persistence['dir'], exist_ok=True)
    lines = [f'shards = {os.environ.get("SHIM_SHARDS", "1")}', 'sys_interval_secs = 0']
    lines += [f'{k} = {toml(v)}' for k, v in top.items()]
    lines += ['[limits]'] + [f'{k} = {toml(v)}' for k, v in limits.items()]
    if persistence:
        lines += ['[persistence]'] + [f'{k} = {toml(v)}' for k, v in persistence.items()]
    for p in ports or ['1888']:
        lines += ['[[listener]]', f'bind = "127.0.0.1:{p}"', 'protocol = "mqtt"']
    fd, path = tempfile.mkstemp(prefix='ringmq-shim-', suffix='.toml', dir=work)
    os.write(fd, ('\n'.join(lines) + '\n').encode())
    os.close(fd)
    binary = os.environ['RINGMQ_BIN']
    os.execv(binary, [binary, '--config', path, '--log-level', 'warn'])


def toml(value):
    if isinstance(value, bool):
        return 'true' if value else 'false'
    if isinstance(value, int):
        return str(value)
    return '"%s"' % value


if __name__ == '__main__':
    main()
