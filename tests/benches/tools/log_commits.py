#!/usr/bin/env python3
"""Where a durable log append's time goes on tokio's blocking pool: redb's
writes, its `fdatasync`, and the pool thread's time around them.

Reads the text of `perf script -F comm,tid,cpu,time,event,trace` for a
`perf record -a` of `sched:sched_waking`, `sched:sched_switch`,
`syscalls:sys_enter_pwrite64`, `syscalls:sys_enter_fdatasync` and
`syscalls:sys_exit_fdatasync` taken while durable nodes are under load
(`--trace-load 64 --durable` of the cluster bench). The threads that call
`fdatasync` are the blocking pool's (the log store commits there). A
commit is the run of `pwrite64`s on one thread up to its `fdatasync`'s
return; for each, all wall time:

  last wake -> first write  from the last time the thread was woken
                            before the commit's first write (not during a
                            sync) to that write: the hand-off to the pool
                            (wake -> running) and the thread's time before
                            the write, which may include other blocking
                            tasks it ran in between (the count of wake-ups
                            between two commits says how often)
  first write -> sync       its writes (pages and bytes counted)
  sync                      the `fdatasync` itself, also per file
                            descriptor (one redb file per node)
  sync -> thread sleeps     the rest of the commit task and anything the
                            thread ran before it slept again

The trip back to the raft task is not here: tokio's workers and its
blocking threads carry the same name, and a `sched_waking` is credited to
whatever thread was on the CPU (an interrupt's wake-up too), so which
wake-up hands the result back cannot be told from these events.
docs/benchmarks.md ("The three gaps left open", durable storage) says what
the numbers meant in one run.

Usage: log_commits.py PERF_SCRIPT_TEXT
"""
import collections
import re
import statistics
import sys

LINE = re.compile(r'^\s*(.+?)\s+(\d+)\s+\[(\d+)\]\s+([\d.]+):\s+(\S+):\s*(.*)$')
WAKING = re.compile(r'comm=(.+?) pid=(\d+) prio=\d+ target_cpu=(\d+)')
SWITCH = re.compile(r'prev_comm=(.+?) prev_pid=(\d+) prev_prio=\d+ prev_state=(\S+) ==> '
                    r'next_comm=(.+?) next_pid=(\d+)')
COUNT = re.compile(r'count: (0x[0-9a-f]+)')
FD = re.compile(r'fd: (0x[0-9a-f]+)')


def main():
    if len(sys.argv) != 2:
        sys.exit(__doc__)
    events = []
    try:
        lines = open(sys.argv[1], errors='replace')
    except OSError as e:
        sys.exit(f'cannot read {sys.argv[1]}: {e}')
    with lines:
        for line in lines:
            m = LINE.match(line)
            if m:
                _, tid, _, t, event, rest = m.groups()
                events.append((float(t), int(tid), event.split(':')[-1], rest))
    syncers = {e[1] for e in events if e[2] == 'sys_enter_fdatasync'}
    if not syncers:
        sys.exit(f'no fdatasync in {sys.argv[1]}: record the events the usage names')
    span = events[-1][0] - events[0][0]
    current = {}  # pool thread -> the commit it is in, or the gap before one
    last_wake = {}  # pool thread -> (time of its last wake-up, wake-ups since its last sync)
    done = []

    def syncing(c):
        return c is not None and 'sync' in c and 'synced' not in c

    for t, tid, event, rest in events:
        if event == 'sched_waking':
            w = WAKING.search(rest)
            if w and int(w[2]) in syncers and not syncing(current.get(int(w[2]))):
                woken = int(w[2])
                _, n = last_wake.get(woken, (None, 0))
                last_wake[woken] = (t, n + 1)
        elif event == 'sched_switch':
            s = SWITCH.search(rest)
            if not s:
                continue
            prev = int(s[2])
            c = current.get(prev)
            # Going to sleep (not preempted, not waiting on the disk).
            if c is not None and 'synced' in c and 'slept' not in c and s[3].startswith('S'):
                c['slept'] = t
        elif tid in syncers:
            c = current.get(tid)
            if event == 'sys_enter_pwrite64':
                if c is None or 'synced' in c:
                    if c is not None:
                        done.append(c)
                    woke, n = last_wake.pop(tid, (None, 0))
                    c = current[tid] = {'write': t, 'woke': woke, 'wakes': n,
                                        'pages': 0, 'bytes': 0}
                c['pages'] += 1
                m = COUNT.search(rest)
                c['bytes'] += int(m[1], 16) if m else 0
            elif event == 'sys_enter_fdatasync' and c is not None and 'sync' not in c:
                c['sync'] = t
                m = FD.search(rest)
                c['fd'] = int(m[1], 16) if m else None
            elif event == 'sys_exit_fdatasync' and syncing(c):
                c['synced'] = t
    done += current.values()
    commits = [c for c in done if 'synced' in c]
    if not commits:
        sys.exit('no whole commit (first write to synced) in the recording')
    print(f'{len(commits)} commits over {span:.2f} s ({len(commits) / span:.0f}/s) on '
          f'{len(syncers)} pool threads')
    woke = [c for c in commits if c['woke'] is not None]
    wakes = sorted(c['wakes'] for c in commits)
    print(f'  wake-ups of the pool thread between its last sync and the next commit: '
          f'median {wakes[len(wakes) // 2]}, exactly one in '
          f'{sum(1 for w in wakes if w == 1)} of {len(wakes)}')
    show('last wake -> first write', [c['write'] - c['woke'] for c in woke])
    show('first write -> sync', [c['sync'] - c['write'] for c in commits])
    show('sync', [c['synced'] - c['sync'] for c in commits])
    slept = [c for c in commits if 'slept' in c]
    show('sync -> thread sleeps', [c['slept'] - c['synced'] for c in slept])
    by_fd = collections.defaultdict(list)
    for c in commits:
        by_fd[c['fd']].append(c['synced'] - c['sync'])
    for fd, syncs in sorted(by_fd.items(), key=lambda kv: -len(kv[1])):
        show(f'sync, fd {fd} ({len(syncs) / span:.0f}/s)', syncs)
    pages = sorted(c['pages'] for c in commits)
    size = sorted(c['bytes'] for c in commits)
    print(f'  writes per commit: mean {statistics.mean(pages):.1f}, median {pages[len(pages) // 2]}; '
          f'bytes per commit: mean {statistics.mean(size):.0f}, median {size[len(size) // 2]}')


def show(name, seconds):
    us = sorted(s * 1e6 for s in seconds)
    if not us:
        print(f'  {name:<28} none')
        return
    print(f'  {name:<28} n={len(us):6}  mean {statistics.mean(us):7.1f}  median '
          f'{us[len(us) // 2]:7.1f}  p90 {us[int(len(us) * 0.9)]:7.1f}  '
          f'p99 {us[int(len(us) * 0.99)]:7.1f} us')


if __name__ == '__main__':
    main()
