"""scripts/gpu/engine_tactics.py, gemm_report.py and insitu_search.py on a made-up CUDA engine
folder (a config.json with tuned GEMMs beside a stand-in weight file; for the search a stand-in
`kite` whose decode speed depends on the engine's choices): what they write and print, and their
one-line refusals. The standard library only; no GPU.

Usage: python3 tests/scripts/test_engine_tools.py --source_dir DIR
"""
import argparse
import json
import os
import subprocess
import sys
import tempfile
import unittest

SOURCE_DIR = ""


def tactic(n, k, algorithm, variant, max_tokens=1, gated=False, microseconds=10.0):
    entry = {"max_tokens": max_tokens, "n": n, "k": k, "algorithm": algorithm,
             "variant": variant, "microseconds": microseconds}
    if gated:
        entry["gated"] = True
    return entry


class EngineFolder(unittest.TestCase):
    """A made-up engine folder per test."""

    def setUp(self):
        self.work = tempfile.TemporaryDirectory()
        self.engine = os.path.join(self.work.name, "engine")
        os.makedirs(self.engine)
        self.tactics = [
            tactic(6144, 4096, 1, 0),
            tactic(4096, 4096, 1, 4),
            tactic(4096, 4096, 0, 2, max_tokens=128),
            tactic(28672, 4096, 1, 4),
            tactic(4096, 14336, 1, 0, gated=True, microseconds=40.0),
        ]
        config = {"device": "cuda", "weight_dtype": "bfloat16",
                  "cuda": {"gpu_name": "Test GPU", "gemm_tactics": self.tactics}}
        with open(os.path.join(self.engine, "config.json"), "w") as file:
            json.dump(config, file)
        with open(os.path.join(self.engine, "rank0.engine"), "wb") as file:
            file.write(b"weights")

    def tearDown(self):
        self.work.cleanup()

    def run_script(self, name, *args):
        return subprocess.run([sys.executable, os.path.join(SOURCE_DIR, "scripts", "gpu", name),
                               *args], capture_output=True, text=True)



class EngineToolsTest(EngineFolder):
    def copy_with(self, *settings):
        """The copy's folder and (max_tokens, n, k, gated, algorithm, variant) of its entries."""
        copy = os.path.join(self.work.name, "copy")
        arguments = [word for setting in settings for word in ("--set", setting)]
        result = self.run_script("engine_tactics.py", self.engine, copy, *arguments)
        self.assertEqual(result.returncode, 0, result.stderr)
        with open(os.path.join(copy, "config.json")) as file:
            return copy, [(t["max_tokens"], t["n"], t["k"], bool(t.get("gated")), t["algorithm"],
                           t["variant"]) for t in json.load(file)["cuda"]["gemm_tactics"]]

    def test_set_shape_changes_every_bucket_of_it(self):
        copy, tactics = self.copy_with("4096x4096=gemv:2")
        self.assertEqual(tactics, [
            (1, 6144, 4096, False, 1, 0), (1, 4096, 4096, False, 1, 2),
            (128, 4096, 4096, False, 1, 2), (1, 28672, 4096, False, 1, 4),
            (1, 4096, 14336, True, 1, 0)])
        # The weights are linked, not copied; the original is untouched.
        self.assertTrue(os.path.islink(os.path.join(copy, "rank0.engine")))
        with open(os.path.join(self.engine, "config.json")) as file:
            self.assertEqual(json.load(file)["cuda"]["gemm_tactics"], self.tactics)

    def test_set_choice_replaces_it_wherever_it_is(self):
        # gemv:4 -> gemv:0 and gemv:0 -> gemv:3 do not chain: each applies to the engine's entries.
        _, tactics = self.copy_with("gemv:4=gemv:0", "gemv:0=gemv:3", "gemv:7=gemv:1")
        self.assertEqual(tactics, [
            (1, 6144, 4096, False, 1, 3), (1, 4096, 4096, False, 1, 0),
            (128, 4096, 4096, False, 0, 2), (1, 28672, 4096, False, 1, 0),
            (1, 4096, 14336, True, 1, 3)])

    def test_set_shape_at_a_bucket_changes_that_bucket_only(self):
        _, tactics = self.copy_with("4096x4096@1=gemv:2", "4096x14336/gated@1=gemv:3")
        self.assertEqual(tactics, [
            (1, 6144, 4096, False, 1, 0), (1, 4096, 4096, False, 1, 2),
            (128, 4096, 4096, False, 0, 2), (1, 28672, 4096, False, 1, 4),
            (1, 4096, 14336, True, 1, 3)])

    def test_a_shape_setting_wins_over_a_choice_setting(self):
        _, tactics = self.copy_with("4096x4096=gemv:2", "gemv:4=gemv:0")
        self.assertEqual(tactics, [
            (1, 6144, 4096, False, 1, 0), (1, 4096, 4096, False, 1, 2),
            (128, 4096, 4096, False, 1, 2), (1, 28672, 4096, False, 1, 0),
            (1, 4096, 14336, True, 1, 0)])

    def test_refusals_are_one_line_with_exit_2(self):
        copy = os.path.join(self.work.name, "copy")
        cases = [
            (["--set", "4096x4096=tensor:1"], "want NxK[/gated][@M]=CHOICE or CHOICE=CHOICE"),
            (["--set", "4096x4096@64=gemv:1"], "no tuned GEMM of shape 4096x4096@64"),
            (["--set", "1024x4096=gemv:1"], "no tuned GEMM of shape 1024x4096"),
        ]
        for args, message in cases:
            result = self.run_script("engine_tactics.py", self.engine, copy, *args)
            self.assertEqual(result.returncode, 2, args)
            self.assertIn(message, result.stderr)
            self.assertEqual(len(result.stderr.strip().splitlines()), 1, result.stderr)
        result = self.run_script("engine_tactics.py", self.engine, self.engine,
                                 "--set", "gemv:4=gemv:0")
        self.assertEqual(result.returncode, 2)
        self.assertIn("another folder", result.stderr)
        # A real engine folder given as the copy keeps its files.
        other = os.path.join(self.work.name, "other")
        os.makedirs(other)
        with open(os.path.join(other, "rank0.engine"), "wb") as file:
            file.write(b"other weights")
        result = self.run_script("engine_tactics.py", self.engine, other, "--set", "gemv:4=gemv:0")
        self.assertEqual(result.returncode, 2)
        self.assertIn("holds files of its own", result.stderr)
        with open(os.path.join(other, "rank0.engine"), "rb") as file:
            self.assertEqual(file.read(), b"other weights")
        # Not a CUDA engine.
        with open(os.path.join(self.engine, "config.json"), "w") as file:
            json.dump({"device": "cpu"}, file)
        result = self.run_script("engine_tactics.py", self.engine, copy, "--set", "gemv:4=gemv:0")
        self.assertEqual(result.returncode, 2)
        self.assertIn("not a CUDA engine", result.stderr)

    def test_gemm_report_lists_the_smallest_bucket(self):
        result = self.run_script("gemm_report.py", self.engine, "--copy_gbs", "3000")
        self.assertEqual(result.returncode, 0, result.stderr)
        lines = result.stdout.splitlines()
        self.assertEqual(lines[0], "Test GPU, GEMMs of up to 1 rows:")
        self.assertEqual(len(lines), 2 + 4)  # header, column names, the four 1-row entries
        # 4096 x 14336 bf16 = 117.4 MB in 40 us: 2936.0 GB/s, 97.9% of 3000.
        self.assertRegex(lines[-1], r"4096 x 14336 +small-M 0 gated +40\.00 +117\.4 +2936\.0 +97\.9%")


# A stand-in `kite bench`: the decode of 127 tokens takes 5 ms a token less 0.1 ms for each shape
# at its best choice of BEST (at one row) and 0.02 ms less for each one step closer to it; it fails
# if a prompt bucket's choice was touched.
FAKE_KITE = """
import json, sys
BEST = {"6144x4096": "gemv:2", "4096x4096": "gemv:0", "28672x4096": "cublaslt:0",
        "4096x14336/gated": "gemv:1"}
engine = sys.argv[sys.argv.index("--engine_dir") + 1]
tactics = json.load(open(engine + "/config.json"))["cuda"]["gemm_tactics"]
if any(t["max_tokens"] == 128 and (t["algorithm"], t["variant"]) != (0, 2) for t in tactics):
    sys.exit("prompt bucket changed")
ms = 5.0
for t in tactics:
    if t["max_tokens"] != 1:
        continue
    name = f"{t['n']}x{t['k']}" + ("/gated" if t.get("gated") else "")
    choice = ("gemv" if t["algorithm"] == 1 else "cublaslt") + f":{t['variant']}"
    best = BEST[name]
    if choice == best:
        ms -= 0.1
    elif choice.startswith("gemv") and best.startswith("gemv"):
        ms -= max(0.0, 0.08 - 0.02 * abs(t["variant"] - int(best[5:])))
latency = 7.0 + 127 * ms
print(f"[BENCHMARK] batch_size 1 input_length 128 output_length 128 latency(ms) {latency:.2f} "
      f"tokensPerSec {128000 / latency:.2f} first_token_latency(ms) 7.00 gpu_peak_mem(gb) 1.00")
"""


class InSituSearchTest(EngineFolder):
    def setUp(self):
        super().setUp()
        self.kite = os.path.join(self.work.name, "kite")
        with open(self.kite, "w") as file:
            file.write(f"#!{sys.executable}\n" + FAKE_KITE)
        os.chmod(self.kite, 0o755)

    def test_finds_the_best_choice_of_each_shape_in_turn(self):
        best_copy = os.path.join(self.work.name, "best")
        result = self.run_script("insitu_search.py", self.engine, "--kite", self.kite,
                                 "--candidates",
                                 "gemv:0,gemv:1,gemv:2,gemv:4,cublaslt:0,cublaslt:1",
                                 "--output_dir", best_copy)
        self.assertEqual(result.returncode, 0, result.stderr + result.stdout)
        lines = result.stdout.splitlines()
        self.assertEqual(lines[0], "Test GPU: batch 1, 128,128, decode tokens/s (mean of 1 run(s) each)")
        # The engine's own: 6144x4096 gemv:0 (2 steps off: -0.04), 4096x4096 gemv:4 (4 off: 0),
        # 28672x4096 gemv:4 (not cuBLASLt: 0), gated gemv:0 (1 off: -0.06): 4.9 ms a token.
        self.assertEqual(lines[1], f"  the engine's own choices: {1000 / 4.9:.2f}")
        # Four shapes (gated last), six candidates each but cublaslt:1 for the gated one (whose
        # cublaslt:0 stands for SwiGLU apart and the plain shape's choice).
        self.assertEqual(len([line for line in lines if line.startswith("    ")]), 6 + 6 + 6 + 5)
        self.assertIn("4096x14336/gated  cublaslt:0: ", result.stdout)
        self.assertIn("      6144x4096      gemv:2: " + f"{1000 / 4.84:.2f}", result.stdout)
        self.assertTrue(lines[-1].startswith(best_copy + ": "), lines[-1])
        self.assertEqual(lines[-2], f"best: {1000 / 4.6:.2f} (+6.52% against the engine's own "
                         "choices): --set 6144x4096@1=gemv:2 --set 4096x4096@1=gemv:0 "
                         "--set 28672x4096@1=cublaslt:0 --set 4096x14336/gated@1=gemv:1")
        with open(os.path.join(best_copy, "config.json")) as file:
            tactics = [(t["max_tokens"], t["n"], t["k"], t["algorithm"], t["variant"])
                       for t in json.load(file)["cuda"]["gemm_tactics"]]
        self.assertEqual(tactics, [(1, 6144, 4096, 1, 2), (1, 4096, 4096, 1, 0),
                                   (128, 4096, 4096, 0, 2), (1, 28672, 4096, 0, 0),
                                   (1, 4096, 14336, 1, 1)])

    def test_refusals_are_one_line_with_exit_2(self):
        cases = [
            (["--kite", self.kite, "--shapes", "4096"], "--shapes 4096: want NxK or NxK/gated"),
            (["--kite", self.kite, "--candidates", "gemv:0,fast"],
             "--candidates fast: want gemv:V or cublaslt:V"),
            (["--kite", os.path.join(self.work.name, "none")], "is not an executable kite"),
            (["--kite", self.kite, "--runs", "0"], "--runs must be at least 1"),
        ]
        for args, message in cases:
            result = self.run_script("insitu_search.py", self.engine, *args)
            self.assertEqual(result.returncode, 2, args)
            self.assertIn(message, result.stderr)
            self.assertEqual(len(result.stderr.strip().splitlines()), 1, result.stderr)


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("--source_dir", required=True)
    args, rest = parser.parse_known_args()
    SOURCE_DIR = os.path.abspath(args.source_dir)
    unittest.main(argv=[sys.argv[0], *rest])
