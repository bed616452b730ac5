#!/usr/bin/env python3
"""End-to-end test of `kite bench --mode serve --url` (run by CTest, label `server`).

Builds a tiny random-weight CPU engine, starts `kite serve` on a free port with an API key, and
checks that `kite bench --mode serve --url`:
  - completes 40 requests at concurrency 8 with exactly 8 output tokens each, reports positive,
    ordered latency percentiles, and agrees with the server's own /metrics;
  - runs Poisson arrivals and several concurrencies, one JSON record each;
  - counts every request as an error with a wrong API key (HTTP 401) or an unreachable server,
    prints the record and then one error line, and exits 1;
  - refuses a malformed --url with exit status 2.
"""

import argparse
import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time

from kite_server import Server, check, convert_and_build

API_KEY = "kite-bench-key"


def build_engine(kite, source_dir, work):
    """The tiny fixture Llama with random weights, on the CPU."""
    fixture = os.path.join(source_dir, "tests", "fixtures", "tiny_llama")
    return convert_and_build(kite, fixture, work,
                             ["--max_batch_size", "8", "--max_input_len", "32",
                              "--max_seq_len", "64", "--tokens_per_block", "16"])


def bench(kite, *arguments):
    """(exit status, JSON records on stdout, stderr) of `kite bench --mode serve --json ...`."""
    command = [kite, "bench", "--mode", "serve", "--json", *arguments]
    result = subprocess.run(command, capture_output=True, text=True, timeout=240)
    records = []
    for line in result.stdout.splitlines():
        check(line.startswith("{"), f"{' '.join(command)}: a stdout line is not JSON: {line!r}")
        records.append(json.loads(line))
    return result.returncode, records, result.stderr


def check_percentiles(record, name):
    value = record[name]
    check(0 < value["p50"] <= value["p90"] <= value["p99"], f"{name} not ordered: {value}")
    check(value["mean"] > 0, f"{name} mean: {value}")


def test_measures_the_server(kite, server, engine):
    """40 requests, 8 in flight, 16 prompt and 8 output tokens each."""
    before = server.metrics()
    status, records, stderr = bench(
        kite, "--url", server.url, "--api_key", API_KEY, "--engine_dir", engine,
        "--num_requests", "40", "--concurrency", "8", "--input_output_len", "16,8")
    check(status == 0, f"kite bench exited with {status}:\n{stderr}")
    check(len(records) == 1, f"{len(records)} records")
    record = records[0]
    check(record["url"] == server.url, f"url {record.get('url')}")
    for key, expected in (("mode", "serve"), ("num_requests", 40), ("input_length", 16),
                          ("output_length", 8), ("concurrency", 8), ("completed", 40),
                          ("errors", 0), ("output_tokens", 40 * 8)):
        check(record[key] == expected, f"{key} {record[key]} != {expected}: {record}")
    check("first_error" not in record, f"first_error: {record}")
    for name in ("time_to_first_token_ms", "inter_token_latency_ms", "request_latency_ms"):
        check_percentiles(record, name)
    check(record["time_to_first_token_ms"]["p50"] <= record["request_latency_ms"]["p50"],
          f"TTFT above the latency: {record}")
    # The latency of a request cannot exceed the whole run.
    check(record["request_latency_ms"]["p99"] <= record["duration_seconds"] * 1e3,
          f"latency beyond the run's duration: {record}")
    tokens_per_second = 40 * 8 / record["duration_seconds"]
    check(abs(record["output_tokens_per_second"] - tokens_per_second) < 1e-6 * tokens_per_second,
          f"tokens/s {record['output_tokens_per_second']} != {tokens_per_second}")
    check("warning" not in stderr, f"warnings: {stderr}")

    # The server saw the same: 40 requests answered 200, 320 tokens generated, prompts of 16 ids.
    # (It counts an HTTP request once its connection is done, just after the client's [DONE].)
    ok = 'kite_http_requests_total{endpoint="/v1/completions",status="200"}'
    deadline = time.time() + 10
    while True:
        after = server.metrics()
        if after.get(ok, 0) - before.get(ok, 0) >= 40 or time.time() > deadline:
            break
        time.sleep(0.05)

    def grown(series):
        return after.get(series, 0) - before.get(series, 0)

    check(grown(ok) == 40, f"the server answered {grown(ok)} completions")
    check(grown("kite_generation_tokens_total") == 40 * 8,
          f"the server generated {grown('kite_generation_tokens_total')} tokens")
    check(grown("kite_prompt_tokens_total") == 40 * 16,
          f"the server read {grown('kite_prompt_tokens_total')} prompt tokens")
    check(grown('kite_requests_finished_total{finish_reason="length"}') == 40,
          "not every request ran to its length")
    print(f"ok: 40 requests at concurrency 8, {record['output_tokens_per_second']:.0f} tokens/s, "
          f"TTFT p50 {record['time_to_first_token_ms']['p50']:.1f} ms, "
          f"ITL p50 {record['inter_token_latency_ms']['p50']:.1f} ms")


def test_rate_and_concurrencies(kite, server, engine):
    status, records, stderr = bench(
        kite, "--url", server.url + "/", "--api_key", API_KEY, "--engine_dir", engine,
        "--num_requests", "12", "--request_rate", "100", "--concurrency", "0;4",
        "--input_output_len", "8,4;4,2")
    check(status == 0, f"kite bench exited with {status}:\n{stderr}")
    cases = [(r["input_length"], r["output_length"], r["concurrency"]) for r in records]
    check(cases == [(8, 4, 0), (8, 4, 4), (4, 2, 0), (4, 2, 4)], f"cases {cases}")
    for record in records:
        check(record["completed"] == 12 and record["errors"] == 0, f"{record}")
        check(record["output_tokens"] == 12 * record["output_length"], f"{record}")
        check(record["request_rate"] == 100, f"{record}")
    print("ok: Poisson arrivals, two lengths and two concurrencies")


def closed_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_failures(kite, server, engine):
    for arguments, error in (
        (["--url", server.url, "--api_key", "wrong"],
         "HTTP 401: missing or wrong API key"),
        (["--url", f"http://127.0.0.1:{closed_port()}"], "cannot connect to http://127.0.0.1:"),
    ):
        status, records, stderr = bench(kite, *arguments, "--engine_dir", engine,
                                        "--num_requests", "6", "--concurrency", "3",
                                        "--input_output_len", "8,4")
        check(status == 1, f"{arguments}: exit status {status}:\n{stderr}")
        check(len(records) == 1, f"{arguments}: {records}")
        record = records[0]
        check(record["completed"] == 0 and record["errors"] == 6 and
              record["output_tokens"] == 0, f"{arguments}: {record}")
        check(record["first_error"].startswith(error), f"{arguments}: {record['first_error']}")
        lines = [line for line in stderr.splitlines() if "error" in line]
        check(len(lines) == 1 and lines[0].startswith(
            "kite bench: error: 6 of 6 requests failed, the first with: " + error),
            f"{arguments}: stderr {stderr!r}")

    status, records, stderr = bench(kite, "--url", "127.0.0.1:8000", "--input_output_len", "8,4")
    check(status == 2 and not records, f"a bad --url: {status} {records}")
    check(stderr.strip().startswith('kite bench: error: --url "127.0.0.1:8000"'), stderr)
    print("ok: a wrong API key and an unreachable server count as errors (exit 1); "
          "a bad --url exits 2")


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--kite", required=True, help="the kite binary")
    parser.add_argument("--source_dir", default=os.path.join(os.path.dirname(__file__), "..", ".."))
    args = parser.parse_args()

    # SIGTERM (timeout(1), a CTest timeout) unwinds like an error, so the server is stopped.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit("bench_url_test.py: terminated"))
    start = time.time()
    with tempfile.TemporaryDirectory(prefix="kite_bench_url_test_") as work:
        engine = build_engine(args.kite, args.source_dir, work)
        server = Server(args.kite, engine, work, API_KEY)
        try:
            test_measures_the_server(args.kite, server, engine)
            test_rate_and_concurrencies(args.kite, server, engine)
            test_failures(args.kite, server, engine)
        except BaseException:
            server.stop()
            print(server.log(), file=sys.stderr)
            raise
        status = server.stop()
        check(status == 0, f"kite serve exited with {status}:\n{server.log()}")
    print(f"all bench --url tests passed in {time.time() - start:.1f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
