"""scripts/gpu/engine_tactics.py and gemm_report.py on a made-up CUDA engine folder (a config.json
with tuned GEMMs beside a stand-in weight file): what they write and print, and their one-line
refusals. The standard library only; no GPU.

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


class EngineToolsTest(unittest.TestCase):
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

    def test_a_shape_setting_wins_over_a_choice_setting(self):
        _, tactics = self.copy_with("4096x4096=gemv:2", "gemv:4=gemv:0")
        self.assertEqual(tactics, [
            (1, 6144, 4096, False, 1, 0), (1, 4096, 4096, False, 1, 2),
            (128, 4096, 4096, False, 1, 2), (1, 28672, 4096, False, 1, 0),
            (1, 4096, 14336, True, 1, 0)])

    def test_refusals_are_one_line_with_exit_2(self):
        copy = os.path.join(self.work.name, "copy")
        cases = [
            (["--set", "4096x4096=tensor:1"], "want NxK[/gated]=CHOICE or CHOICE=CHOICE"),
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


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("--source_dir", required=True)
    args, rest = parser.parse_known_args()
    SOURCE_DIR = os.path.abspath(args.source_dir)
    unittest.main(argv=[sys.argv[0], *rest])
