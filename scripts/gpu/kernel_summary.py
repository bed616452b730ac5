"""Kernels by total GPU time from an Nsight Systems kernel summary or Nsight Compute CSV.

Usage: python3 kernel_summary.py nsys KERNELS.csv
       python3 kernel_summary.py ncu NCU.csv
"""
import collections
import csv
import io
import re
import sys


def short_name(name: str) -> str:
    # "void kite::cuda::(anonymous namespace)::gemv_kernel<__nv_bfloat16, 1, 1, 8, false>(...)"
    # -> "gemv_kernel<__nv_bfloat16, 1, 1, 8, false>"
    name = name.strip()
    if name.endswith(")"):  # drop the argument list: from the "(" matching the last ")"
        depth = 0
        for index in range(len(name) - 1, -1, -1):
            depth += {")": 1, "(": -1}.get(name[index], 0)
            if depth == 0:
                name = name[:index]
                break
    name = re.sub(r"^void ", "", name)
    return re.sub(r"^(\w+::|\(anonymous namespace\)::)+", "", name)


def read_nsys(path: str):
    totals = {}
    with open(path, newline="") as handle:
        for row in csv.DictReader(handle):
            name = short_name(row["Name"])
            total_ns = float(row["Total Time (ns)"])
            count = int(row["Instances"])
            previous = totals.get(name, (0.0, 0))
            totals[name] = (previous[0] + total_ns, previous[1] + count)
    return totals


def read_ncu(path: str):
    text = open(path).read()
    start = text.find('"ID"')
    totals = collections.defaultdict(lambda: [0.0, 0])
    for row in csv.DictReader(io.StringIO(text[start:])):
        if row.get("Metric Name") != "gpu__time_duration.sum":
            continue
        value = float(row["Metric Value"].replace(",", ""))
        scale = {"nsecond": 1.0, "usecond": 1e3, "msecond": 1e6}.get(row["Metric Unit"], 1.0)
        entry = totals[short_name(row["Kernel Name"])]
        entry[0] += value * scale
        entry[1] += 1
    return {name: (total, count) for name, (total, count) in totals.items()}


def main() -> None:
    kind, path = sys.argv[1], sys.argv[2]
    totals = read_nsys(path) if kind == "nsys" else read_ncu(path)
    grand = sum(total for total, _ in totals.values())
    print(f"{'total ms':>10} {'share':>6} {'calls':>7} {'mean us':>9}  kernel")
    for name, (total, count) in sorted(totals.items(), key=lambda item: -item[1][0]):
        print(f"{total / 1e6:10.3f} {100 * total / grand:5.1f}% {count:7d} "
              f"{total / count / 1e3:9.2f}  {name[:110]}")
    print(f"{grand / 1e6:10.3f} ms of kernel time in all")


if __name__ == "__main__":
    main()
