"""Busy and idle GPU time from a kernel trace (kernel_trace.cc's CSV).

The trace is cut into windows wherever the GPU idles longer than --split_us (steps of a benchmark
whose host waits between them stay one window when the waits are short). For the last windows it
prints the span, the time some kernel ran (busy) and the rest (idle); for the last window, the
kernels by the time each moved the busy frontier (start to end, less what earlier kernels still
covered: with programmatic dependent launch a kernel starts before its predecessor ends, so its
own start-to-end time overstates it) and the idle gaps by the kernels on either side.

Usage: python3 timeline.py TRACE.csv [--split_us 1000] [--windows 3]
"""
import argparse
import collections
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from kernel_summary import short_name  # noqa: E402


def read(path: str):
    kernels = []
    with open(path) as handle:
        next(handle)
        for line in handle:
            start, end, graph, name = line.rstrip("\n").split(",", 3)
            kernels.append((int(start), int(end), int(graph), short_name(name)[:90]))
    kernels.sort()
    return kernels


def windows(kernels, split_ns):
    current, frontier = [], None
    for kernel in kernels:
        if current and kernel[0] - frontier > split_ns:
            yield current
            current, frontier = [], None
        current.append(kernel)
        frontier = kernel[1] if frontier is None else max(frontier, kernel[1])
    if current:
        yield current


def analyse(window):
    busy = 0
    frontier = window[0][0]
    moved = collections.defaultdict(lambda: [0, 0])  # name -> [ns moved, calls]
    gaps = collections.defaultdict(lambda: [0, 0])  # (before, after) -> [ns idle, count]
    last_name = None
    for start, end, _, name in window:
        if start > frontier and last_name is not None:
            gap = gaps[(last_name, name)]
            gap[0] += start - frontier
            gap[1] += 1
        advance = end - max(start, frontier)
        if advance > 0:
            busy += advance
            frontier = end
            last_name = name
        entry = moved[name]
        entry[0] += max(advance, 0)
        entry[1] += 1
    span = window[-1][1] - window[0][0]
    span = max(span, frontier - window[0][0])
    return span, busy, moved, gaps


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("trace")
    parser.add_argument("--split_us", type=float, default=1000.0)
    parser.add_argument("--windows", type=int, default=3)
    args = parser.parse_args()
    all_windows = list(windows(read(args.trace), args.split_us * 1e3))
    if not all_windows:
        print("no kernels in the trace")
        return
    print(f"{len(all_windows)} windows (idle > {args.split_us:g} us between them)")
    first = max(0, len(all_windows) - args.windows)
    for index, window in enumerate(all_windows[first:], start=first):
        span, busy, _, _ = analyse(window)
        print(f"window {index}: {len(window)} kernels, span "
              f"{span / 1e6:.3f} ms, busy {busy / 1e6:.3f} ms, idle {(span - busy) / 1e6:.3f} ms "
              f"({100.0 * (span - busy) / max(span, 1):.1f}%)")
    span, busy, moved, gaps = analyse(all_windows[-1])
    print("\nlast window, kernels by the time they moved the busy frontier:")
    print(f"{'ms':>9} {'share':>6} {'calls':>6} {'mean us':>8}  kernel")
    for name, (total, calls) in sorted(moved.items(), key=lambda item: -item[1][0])[:20]:
        print(f"{total / 1e6:9.3f} {100.0 * total / max(span, 1):5.1f}% {calls:6d} "
              f"{total / 1e3 / calls:8.2f}  {name}")
    print("\nlast window, idle gaps by the kernels around them:")
    print(f"{'ms':>9} {'count':>6} {'mean us':>8}  before -> after")
    for (before, after), (total, count) in sorted(gaps.items(), key=lambda item: -item[1][0])[:12]:
        print(f"{total / 1e6:9.3f} {count:6d} {total / 1e3 / count:8.2f}  {before} -> {after}")


if __name__ == "__main__":
    main()
