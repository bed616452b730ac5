"""Busy and idle GPU time from a kernel trace (kernel_trace.cc's CSV).

The trace is cut into windows wherever the GPU idles longer than --split_us (steps of a benchmark
whose host waits between them stay one window when the waits are short). For the last windows it
prints the span, the time some kernel ran (busy) and the rest (idle); for the last window, the
kernels by the time each moved the busy frontier (start to end, less what earlier kernels still
covered: with programmatic dependent launch a kernel starts before its predecessor ends, so its
own start-to-end time overstates it) and the idle gaps by the kernels on either side. With --api
(the host's CUDA calls, kernel_trace.cc's KITE_TRACE_API_FILE) it says for the largest kinds of gap
which calls the host was inside while the GPU idled, and how long it was outside any.

Usage: python3 timeline.py TRACE.csv [--split_us 1000] [--windows 3] [--api API.csv]
"""
import bisect
import argparse
import collections
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from kernel_summary import short_name  # noqa: E402


def rows(path: str):
    """kernel_trace.cc's CSV rows: (start_ns, end_ns, graph or thread id, name)."""
    with open(path) as handle:
        next(handle)
        for line in handle:
            start, end, third, name = line.rstrip("\n").split(",", 3)
            yield int(start), int(end), int(third), name


def read(path: str):
    return sorted((start, end, graph, short_name(name)[:90])
                  for start, end, graph, name in rows(path))


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
    intervals = []  # (start, end, (before, after)) of every idle gap, in time order
    last_name = None
    for start, end, _, name in window:
        if start > frontier and last_name is not None:
            gap = gaps[(last_name, name)]
            gap[0] += start - frontier
            gap[1] += 1
            intervals.append((frontier, start, (last_name, name)))
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
    return span, busy, moved, gaps, intervals


def read_api(path: str):
    return [(start, end, name) for start, end, _, name in rows(path)]


def host_during_gaps(intervals, calls):
    """Per kind of gap: ns inside each CUDA call (nested calls both count) and ns outside any."""
    starts = [interval[0] for interval in intervals]
    inside = collections.defaultdict(lambda: collections.defaultdict(int))
    covered = collections.defaultdict(list)  # gap index -> [(start, end)] of the calls in it
    for call_start, call_end, name in calls:
        index = max(bisect.bisect_right(starts, call_start) - 1, 0)
        while index < len(intervals) and intervals[index][0] < call_end:
            gap_start, gap_end, key = intervals[index]
            low, high = max(gap_start, call_start), min(gap_end, call_end)
            if high > low:
                inside[key][name] += high - low
                covered[index].append((low, high))
            index += 1
    outside = collections.defaultdict(int)
    for index, (gap_start, gap_end, key) in enumerate(intervals):
        union, reach = 0, gap_start
        for low, high in sorted(covered.get(index, [])):
            if high > reach:
                union += high - max(low, reach)
                reach = high
        outside[key] += (gap_end - gap_start) - union
    return inside, outside


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("trace")
    parser.add_argument("--split_us", type=float, default=1000.0)
    parser.add_argument("--windows", type=int, default=3)
    parser.add_argument("--api", help="the host's CUDA calls (KITE_TRACE_API_FILE)")
    args = parser.parse_args()
    all_windows = list(windows(read(args.trace), args.split_us * 1e3))
    if not all_windows:
        print("no kernels in the trace")
        return
    print(f"{len(all_windows)} windows (idle > {args.split_us:g} us between them)")
    first = max(0, len(all_windows) - args.windows)
    for index, window in enumerate(all_windows[first:], start=first):
        span, busy, _, _, _ = analyse(window)
        print(f"window {index}: {len(window)} kernels, span "
              f"{span / 1e6:.3f} ms, busy {busy / 1e6:.3f} ms, idle {(span - busy) / 1e6:.3f} ms "
              f"({100.0 * (span - busy) / max(span, 1):.1f}%)")
    span, busy, moved, gaps, intervals = analyse(all_windows[-1])
    print("\nlast window, kernels by the time they moved the busy frontier:")
    print(f"{'ms':>9} {'share':>6} {'calls':>6} {'mean us':>8}  kernel")
    for name, (total, calls) in sorted(moved.items(), key=lambda item: -item[1][0])[:20]:
        print(f"{total / 1e6:9.3f} {100.0 * total / max(span, 1):5.1f}% {calls:6d} "
              f"{total / 1e3 / calls:8.2f}  {name}")
    print("\nlast window, idle gaps by the kernels around them:")
    print(f"{'ms':>9} {'count':>6} {'mean us':>8}  before -> after")
    for (before, after), (total, count) in sorted(gaps.items(), key=lambda item: -item[1][0])[:12]:
        print(f"{total / 1e6:9.3f} {count:6d} {total / 1e3 / count:8.2f}  {before} -> {after}")
    if args.api:
        inside, outside = host_during_gaps(intervals, read_api(args.api))
        print("\nlast window, the host during the largest kinds of gap (ms; nested calls both count):")
        for key, (total, count) in sorted(gaps.items(), key=lambda item: -item[1][0])[:6]:
            print(f"{key[0]} -> {key[1]}: {total / 1e6:.3f} ms in {count} gaps")
            calls = sorted(inside[key].items(), key=lambda item: -item[1])[:6]
            for name, ns in calls:
                print(f"{ns / 1e6:12.3f}  in {name}")
            print(f"{outside[key] / 1e6:12.3f}  outside any CUDA call")


if __name__ == "__main__":
    main()
