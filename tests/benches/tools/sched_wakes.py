#!/usr/bin/env python3
"""How long a process's threads wait between being woken and running.

Reads the text `perf script` prints for a `perf sched record -a` and, for
every wake-up of a thread whose name starts with one of the given prefixes,
takes the time from its `sched_waking` to the `sched_switch` that puts it on
a CPU. Wake-ups are split by whether the CPU the thread was woken onto was
idle at that moment (a halted virtual CPU the host must resume first) or
running another thread (it waits behind it), and by whether the waker ran on
that CPU. docs/benchmarks.md ("Off the CPU") says how to record and what the
numbers mean.

It also tallies who did the waking: each wake-up by the prefix of the
woken thread and that of the thread that ran the `sched_waking` (one of
the prefixes, `idle` for an interrupt on an idle CPU, or `other`), which
tells hand-offs between two schedulers (tokio workers and Go threads)
from wake-ups within one.

Usage: sched_wakes.py PERF_SCRIPT_TEXT PREFIX[,PREFIX...] [COMMANDS_PER_S]
"""
import collections
import re
import statistics
import sys

KINDS = {
    ('idle', 'other'): 'onto an idle CPU, woken from the other',
    ('idle', 'same'): 'on its idle CPU, woken there (an interrupt)',
    ('busy', 'same'): 'behind its waker, on the waker\'s CPU',
    ('busy', 'other'): 'behind another thread, woken from the other',
}
EVENT = re.compile(r'\[(\d+)\]\s+([\d.]+):\s+sched:(\w+):\s*(.*)')
WAKING = re.compile(r'comm=(.*?) pid=(\d+) .*target_cpu=(\d+)')
NEXT = re.compile(r'next_pid=(\d+)')


def main():
    if len(sys.argv) not in (3, 4):
        sys.exit(__doc__)
    path, prefixes = sys.argv[1], tuple(p for p in sys.argv[2].split(',') if p)
    if not prefixes:
        sys.exit('no thread name prefix given')
    try:
        rate = float(sys.argv[3]) if len(sys.argv) == 4 else None
    except ValueError:
        sys.exit(f'COMMANDS_PER_S is not a number: {sys.argv[3]!r}')
    if rate is not None and not rate > 0:
        sys.exit(f'COMMANDS_PER_S must be above 0, not {sys.argv[3]!r}')
    running = {}  # cpu -> pid on it (0: idle)
    woken = {}  # pid -> (time, target state, waker's cpu is the target)
    waits = collections.defaultdict(list)
    wakers = collections.Counter()  # (waker's prefix, woken's prefix) -> wake-ups
    first = last = None
    try:
        lines = open(path, errors='replace')
    except OSError as err:
        sys.exit(f'cannot read {path}: {err}')
    with lines:
        for line in lines:
            m = EVENT.search(line)
            if not m:
                continue
            cpu, t, event, rest = int(m[1]), float(m[2]), m[3], m[4]
            first = t if first is None else first
            last = t
            if event == 'sched_waking':
                w = WAKING.search(rest)
                if w and w[1].startswith(prefixes) and int(w[2]) not in woken:
                    target = int(w[3])
                    state = 'idle' if running.get(target, 0) == 0 else 'busy'
                    pair = (kind(waker_comm(line[:m.start()]), prefixes), kind(w[1], prefixes))
                    woken[int(w[2])] = (t, state, 'same' if target == cpu else 'other', pair)
            elif event == 'sched_switch':
                n = NEXT.search(rest)
                if not n:
                    continue
                pid = int(n[1])
                running[cpu] = pid
                if pid in woken:
                    since, state, where, pair = woken.pop(pid)
                    waits[(state, where)].append((t - since) * 1e6)
                    wakers[pair] += 1
    every = [w for ws in waits.values() for w in ws]
    if not every or last <= first:
        sys.exit(f'no wake-ups of threads named {prefixes} in {path}')
    span = last - first
    print(f'{span:.2f} s, {len(every)} wake-ups of {",".join(prefixes)}* ({len(every) / span:.0f}/s)')
    if rate:
        per = len(every) / span / rate
        print(f'  per command: {per:.2f} wake-ups, {per * statistics.mean(every):.0f} us waiting')
    print(f'  all: mean {statistics.mean(every):.1f} us, median {statistics.median(every):.1f} us; '
          f'{sum(every) / 1e6 / span:.2f} thread-seconds waiting per second')
    for key, ws in sorted(waits.items()):
        ws.sort()
        print(f'  {KINDS[key]:<48} {len(ws):6} ({100 * len(ws) / len(every):4.1f} %), '
              f'mean {statistics.mean(ws):6.1f} us, median {statistics.median(ws):6.1f} us, '
              f'p90 {ws[int(len(ws) * 0.9)]:7.1f} us')
    print('  woken by (waker -> woken):')
    for (waker, wakee), n in wakers.most_common():
        per = f', {n / span / rate:.2f} per command' if rate else ''
        print(f'    {waker:>16} -> {wakee:<16} {n:6} ({100 * n / len(every):4.1f} %){per}')


def waker_comm(head):
    """The name of the thread a `perf script` line ran on: its text before
    the CPU column, less the thread id."""
    parts = head.split()
    return ' '.join(parts[:-1]) if len(parts) > 1 else head.strip()


def kind(comm, prefixes):
    """The prefix `comm` starts with; `idle` for the idle task (an
    interrupt on an idle CPU); else `other`."""
    for p in prefixes:
        if comm.startswith(p):
            return p
    return 'idle' if comm.startswith('swapper') else 'other'


if __name__ == '__main__':
    main()
