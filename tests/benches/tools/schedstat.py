#!/usr/bin/env python3
"""Per-thread scheduler statistics of a benchmark, sampled over a run.

`schedstat.py sample OUT STOPFILE PATTERN...` samples, every 0.25 s until
STOPFILE exists, the processes whose command line contains a PATTERN: the
sum over their threads of /proc/<pid>/task/*/schedstat (time on a CPU, time
runnable but waiting to run, slices), which CPU their runnable threads are
on, each CPU's busy, idle and stolen ticks from /proc/stat, and every
process's CPU time. It writes JSON lines to OUT.

`schedstat.py windows OUT [CORES]` finds, per sampled process, each stretch
of at least 2 s where it kept more than CORES cores busy (0.5 by default; a
benchmark shape), trims 0.5 s at each end, and prints its cores busy, the
wait per slice (from waking to running), the CPU per slice, the slices per
second, each CPU's busy and stolen share, and any other process that used
more than 3 % of a core. docs/benchmarks.md ("Off the CPU") says how it was
used.
"""
import bisect
import collections
import json
import os
import sys
import time

PERIOD = 0.25
MIN, TRIM = 8, 2


def cpus():
    found = {}
    with open('/proc/stat') as stat:
        for line in stat:
            if line.startswith('cpu') and line[3].isdigit():
                f = line.split()
                v = list(map(int, f[1:]))
                found[f[0]] = {'busy': v[0] + v[1] + v[2] + v[5] + v[6], 'idle': v[3] + v[4],
                               'steal': v[7]}
    return found


def read(path, mode='r'):
    with open(path, mode) as f:
        return f.read()


def sample(out, stop, patterns):
    me = os.getpid()
    with open(out, 'w') as f:
        while not os.path.exists(stop):
            t = time.monotonic()
            procs = {}
            for pid in os.listdir('/proc'):
                if not pid.isdigit() or int(pid) == me:
                    continue
                try:
                    st = read(f'/proc/{pid}/stat')
                    rest = st[st.rindex(')') + 2:].split()
                    comm = st[st.index('(') + 1:st.rindex(')')]
                    ticks = int(rest[11]) + int(rest[12])
                    cmd = read(f'/proc/{pid}/cmdline', 'rb').replace(b'\0', b' ').decode(errors='replace')
                except (OSError, ValueError, IndexError):
                    continue
                procs[pid] = (comm, ticks)
                hit = [p for p in patterns if p in cmd]
                if not hit:
                    continue
                on_cpu, wait, slices, threads, runnable = 0, 0, 0, 0, {}
                try:
                    tids = os.listdir(f'/proc/{pid}/task')
                except OSError:
                    continue
                for tid in tids:
                    try:
                        a, b, c = read(f'/proc/{pid}/task/{tid}/schedstat').split()
                        ts = read(f'/proc/{pid}/task/{tid}/stat')
                        tr = ts[ts.rindex(')') + 2:].split()
                        state, cpu = tr[0], tr[36]
                    except (OSError, ValueError, IndexError):
                        continue
                    on_cpu += int(a)
                    wait += int(b)
                    slices += int(c)
                    threads += 1
                    if state == 'R':
                        runnable[cpu] = runnable.get(cpu, 0) + 1
                f.write(json.dumps({'t': t, 'pid': int(pid), 'name': hit[0], 'cpu': on_cpu,
                                    'wait': wait, 'slices': slices, 'threads': threads,
                                    'running': runnable}) + '\n')
            f.write(json.dumps({'t': t, 'cpus': cpus(), 'procs': procs}) + '\n')
            f.flush()
            time.sleep(PERIOD)


def windows(path, threshold):
    rows = collections.defaultdict(list)
    machine = []
    with open(path) as lines:
        for line in lines:
            r = json.loads(line)
            if 'cpus' in r:
                machine.append(r)
            else:
                rows[(r['pid'], r['name'])].append(r)
    times = [r['t'] for r in machine]

    def machine_at(t):
        return machine[min(bisect.bisect_left(times, t), len(machine) - 1)]

    def report(name, pid, w):
        a, b = w[0][0], w[-1][1]
        dt = b['t'] - a['t']
        on_cpu, wait, sl = b['cpu'] - a['cpu'], b['wait'] - a['wait'], max(b['slices'] - a['slices'], 1)
        ma, mb = machine_at(a['t']), machine_at(b['t'])
        per_cpu = []
        for c in sorted(mb['cpus']):
            d = {k: mb['cpus'][c][k] - ma['cpus'][c].get(k, 0) for k in ('busy', 'idle', 'steal')}
            total = max(sum(d.values()), 1)
            per_cpu.append(f"{c} busy {100 * d['busy'] / total:.0f} % stolen {100 * d['steal'] / total:.0f} %")
        others = []
        for p, (comm, ticks) in mb['procs'].items():
            if p in ma['procs'] and int(p) != pid:
                used = (ticks - ma['procs'][p][1]) / os.sysconf('SC_CLK_TCK') / dt
                if used > 0.03:
                    others.append(f'{comm}({p}) {used:.2f}')
        print(f'{name} pid {pid}: {dt:4.1f} s, cores {on_cpu / 1e9 / dt:.2f}, wait per slice '
              f'{wait / sl / 1e3:5.1f} us, CPU per slice {on_cpu / sl / 1e3:5.1f} us, '
              f'slices/s {sl / dt:6.0f}, waiting threads {wait / 1e9 / dt:.2f}\n'
              f'    {"; ".join(per_cpu)}; other processes: {", ".join(others) or "none"}')

    for (pid, name), rs in sorted(rows.items(), key=lambda kv: kv[1][0]['t']):
        stretches, current = [], []
        for a, b in zip(rs, rs[1:]):
            dt = b['t'] - a['t']
            if dt > 0 and (b['cpu'] - a['cpu']) / 1e9 / dt > threshold:
                current.append((a, b))
                continue
            if len(current) >= MIN:
                stretches.append(current)
            current = []
        if len(current) >= MIN:
            stretches.append(current)
        for stretch in stretches:
            report(name, pid, stretch[TRIM:-TRIM])


def main():
    args = sys.argv[1:]
    if len(args) >= 4 and args[0] == 'sample':
        sample(args[1], args[2], args[3:])
    elif len(args) in (2, 3) and args[0] == 'windows':
        try:
            cores = float(args[2]) if len(args) == 3 else 0.5
        except ValueError:
            sys.exit(f'CORES is not a number: {args[2]!r}')
        try:
            windows(args[1], cores)
        except OSError as err:
            sys.exit(f'cannot read {args[1]}: {err}')
        except (ValueError, KeyError) as err:
            sys.exit(f'{args[1]} is not a file `schedstat.py sample` wrote: {err}')
    else:
        sys.exit(__doc__)


if __name__ == '__main__':
    main()
