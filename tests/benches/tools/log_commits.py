#!/usr/bin/env python3
"""Where a durable log append's time goes: the trip to tokio's blocking
pool, redb's commit, its `fdatasync`, and the trip back.

Reads the text of `perf script -F comm,tid,cpu,time,event,trace` for a
`perf record -a` of `sched:sched_waking`, `sched:sched_switch`,
`syscalls:sys_enter_pwrite64`, `syscalls:sys_enter_fdatasync` and
`syscalls:sys_exit_fdatasync` taken while durable nodes are under load
(`--trace-load 64 --durable` of the cluster bench). The threads that call
`fdatasync` are the blocking pool's (the log store commits there). For each
commit, the first `pwrite64` after the previous one's sync starts it, and:

  woken -> running          the pool thread waking for the task (if it slept)
  running -> first write    redb's work before it writes
  first write -> sync       its writes (pages and bytes counted)
  sync                      the `fdatasync` itself
  sync -> wakes a worker    redb's work after the sync, until the task's
                            end wakes a tokio worker (if none was awake)
  worker woken -> running   that worker's wait for a CPU

A wake-up of a pool thread in the middle of its `fdatasync` (the disk's
completion) does not start a commit. docs/benchmarks.md ("The three gaps
left open", durable storage) says what the numbers meant in one run.

Usage: log_commits.py PERF_SCRIPT_TEXT [WORKER_PREFIX]
(WORKER_PREFIX: the tokio workers' thread name, `tokio-rt-worker` by
default; perf shows names cut to 15 bytes.)
"""
import re
import statistics
import sys

LINE = re.compile(r'^\s*(.+?)\s+(\d+)\s+\[(\d+)\]\s+([\d.]+):\s+(\S+):\s*(.*)$')
WAKING = re.compile(r'comm=(.+?) pid=(\d+) prio=\d+ target_cpu=(\d+)')
SWITCH = re.compile(r'prev_comm=(.+?) prev_pid=(\d+) .*==> next_comm=(.+?) next_pid=(\d+)')
COUNT = re.compile(r'count: (0x[0-9a-f]+)')


def main():
    if len(sys.argv) not in (2, 3):
        sys.exit(__doc__)
    workers = sys.argv[2] if len(sys.argv) == 3 else 'tokio-rt-worker'
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
    current, done, handed, worker_waits = {}, [], {}, []

    def syncing(c):
        return c is not None and 'sync' in c and 'synced' not in c

    for t, tid, event, rest in events:
        if event == 'sched_waking':
            w = WAKING.search(rest)
            if not w:
                continue
            woken = int(w[2])
            if woken in syncers and not syncing(current.get(woken)):
                if woken in current:
                    done.append(current.pop(woken))
                current[woken] = {'woken': t}
            c = current.get(tid)
            if (c is not None and 'synced' in c and 'handback' not in c
                    and woken not in syncers and w[1].startswith(workers)):
                c['handback'] = t
                handed[woken] = t
        elif event == 'sched_switch':
            s = SWITCH.search(rest)
            if not s:
                continue
            nxt = int(s[4])
            c = current.get(nxt)
            if c is not None and 'woken' in c and 'run' not in c and 'write' not in c:
                c['run'] = t
            if nxt in handed:
                worker_waits.append(t - handed.pop(nxt))
        elif tid in syncers:
            c = current.get(tid)
            if event == 'sys_enter_pwrite64':
                if c is None or 'synced' in c:
                    if c is not None:
                        done.append(c)
                    c = current[tid] = {}
                if 'woken' in c and 'run' not in c:
                    c['run'] = c['woken']  # woken while still on its CPU
                c.setdefault('write', t)
                c['pages'] = c.get('pages', 0) + 1
                m = COUNT.search(rest)
                c['bytes'] = c.get('bytes', 0) + (int(m[1], 16) if m else 0)
            elif event == 'sys_enter_fdatasync' and c is not None and 'write' in c:
                c.setdefault('sync', t)
            elif event == 'sys_exit_fdatasync' and syncing(c):
                c['synced'] = t
    done += current.values()
    commits = [c for c in done if 'write' in c and 'synced' in c]
    if not commits:
        sys.exit('no whole commit (first write to synced) in the recording')
    print(f'{len(commits)} commits over {span:.2f} s ({len(commits) / span:.0f}/s) on '
          f'{len(syncers)} pool threads')
    woke = [c for c in commits if 'run' in c]
    back = [c for c in commits if 'handback' in c]
    print(f'  {len(woke)} began with a pool thread waking, {len(back)} ended waking a worker')
    show('woken -> running', [c['run'] - c['woken'] for c in woke])
    show('running -> first write', [c['write'] - c['run'] for c in woke])
    show('first write -> sync', [c['sync'] - c['write'] for c in commits])
    show('sync', [c['synced'] - c['sync'] for c in commits])
    show('sync -> wakes a worker', [c['handback'] - c['synced'] for c in back])
    show('worker woken -> running', worker_waits)
    show('woken -> worker woken', [c['handback'] - c['woken'] for c in back if 'woken' in c])
    pages = sorted(c['pages'] for c in commits)
    size = sorted(c['bytes'] for c in commits)
    print(f'  writes per commit: mean {statistics.mean(pages):.1f}, median {pages[len(pages) // 2]}; '
          f'bytes per commit: mean {statistics.mean(size):.0f}, median {size[len(size) // 2]}')


def show(name, seconds):
    us = sorted(s * 1e6 for s in seconds)
    if not us:
        print(f'  {name:<26} none')
        return
    print(f'  {name:<26} n={len(us):6}  mean {statistics.mean(us):7.1f}  median '
          f'{us[len(us) // 2]:7.1f}  p90 {us[int(len(us) * 0.9)]:7.1f}  '
          f'p99 {us[int(len(us) * 0.99)]:7.1f} us')


if __name__ == '__main__':
    main()
