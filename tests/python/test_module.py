#!/usr/bin/env python3
"""Tests of the Python module `kite` (run by CTest, label `python`).

On a tiny random-weight CPU engine: the tokenizer gives `kite tokenize`'s ids; Executor.generate
gives `kite run`'s greedy tokens, alone and batched; streaming, log-probabilities, statistics,
the context manager and the errors a caller can cause; cancellation on SmolLM2 (the demo model),
slow enough for a cancel to land mid-generation.
"""

import argparse
import json
import os
import subprocess
import sys
import tempfile
import unittest

ARGS = None
ENGINE = None
DEMO_ENGINE = None  # SmolLM2-135M on the CPU, when the demo model was fetched
kite = None


def run_kite(*arguments):
    result = subprocess.run([ARGS.kite, *arguments], capture_output=True, text=True, timeout=120)
    if result.returncode != 0:
        raise AssertionError(f"kite {' '.join(arguments)} failed:\n{result.stdout}{result.stderr}")
    return result.stdout


class ModuleTest(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        cls.tokenizer = kite.Tokenizer(ENGINE)
        cls.executor = kite.Executor(ENGINE, kite.ExecutorConfig(max_batch_size=4))

    @classmethod
    def tearDownClass(cls):
        cls.executor.shutdown()

    def test_tokenizer_matches_kite_tokenize(self):
        text = "hello world, the cat"
        ids = json.loads(run_kite("tokenize", "--tokenizer_dir", ENGINE, "--text", text, "--json"))
        ids = ids["ids"] if isinstance(ids, dict) else ids
        self.assertEqual(self.tokenizer.encode(text), ids)
        self.assertEqual(self.tokenizer.decode(ids), text)
        self.assertGreater(self.tokenizer.vocab_size, 0)

    def test_generate_matches_kite_run(self):
        prompts = ["hello world", "the cat", "a b c d"]
        with tempfile.TemporaryDirectory() as work:
            record_path = os.path.join(work, "run.json")
            arguments = ["run", "--engine_dir", ENGINE, "--max_output_len", "6",
                         "--output_json", record_path]
            for prompt in prompts:
                arguments += ["--input_text", prompt]
            run_kite(*arguments)
            with open(record_path) as record_file:
                record = json.load(record_file)
        ids = [self.tokenizer.encode(prompt) for prompt in prompts]
        for entry, prompt_ids in zip(record, ids):
            self.assertEqual(entry["input_ids"], prompt_ids)
            result = self.executor.generate(prompt_ids, max_new_tokens=6)
            self.assertTrue(result.is_final)
            self.assertEqual(list(result.output_ids), entry["output_ids"])
        batched = self.executor.generate(ids, max_new_tokens=6)
        self.assertEqual([list(r.output_ids) for r in batched],
                         [entry["output_ids"] for entry in record])

    def test_streaming_log_probs_and_statistics(self):
        prompt = self.tokenizer.encode("hello world")
        whole = self.executor.generate(prompt, max_new_tokens=8, end_ids=[],
                                       return_log_probs=True)
        self.assertEqual(len(whole.output_ids), 8)
        self.assertEqual(whole.finish_reason, kite.FinishReason.LENGTH)
        self.assertEqual(len(whole.log_probs), 8)
        self.assertTrue(all(p <= 0.0 for p in whole.log_probs))

        request = kite.Request(prompt, max_new_tokens=8, end_ids=[], streaming=True,
                               sampling=kite.SamplingConfig(temperature=0.0))
        request_id = self.executor.enqueue_request(request)
        streamed, responses, final = [], 0, None
        while final is None:
            for response in self.executor.await_responses(request_id, timeout=5.0):
                self.assertEqual(response.request_id, request_id)
                self.assertIsNone(response.error)
                streamed += response.result.output_ids
                responses += 1
                if response.result.is_final:
                    final = response.result
        self.assertEqual(streamed, list(whole.output_ids))
        self.assertGreater(responses, 1)
        self.assertEqual(final.finish_reason, kite.FinishReason.LENGTH)
        stats = self.executor.stats()
        self.assertGreaterEqual(stats.completed_requests, 2)
        self.assertGreater(stats.kv_cache.total_blocks, 0)
        self.assertTrue(stats.recent_iterations)

    def test_prompt_log_probs(self):
        # Each prompt token after the first: its log-probability, and with top_prompt_log_probs
        # the most likely tokens there, most likely first; the output is the greedy one.
        prompt = self.tokenizer.encode("hello world, hello")
        request = kite.Request(prompt, max_new_tokens=4, end_ids=[],
                               sampling=kite.SamplingConfig(temperature=0.0),
                               return_prompt_log_probs=True, top_prompt_log_probs=2)
        final, = self.run_requests([request])
        self.assertEqual(len(final.prompt_log_probs), len(prompt) - 1)
        self.assertTrue(all(p <= 0.0 for p in final.prompt_log_probs))
        self.assertEqual(len(final.prompt_ranks), len(prompt) - 1)
        self.assertTrue(all(rank >= 1 for rank in final.prompt_ranks))
        self.assertEqual(len(final.prompt_top_log_probs), len(prompt) - 1)
        for chosen, top in zip(final.prompt_log_probs, final.prompt_top_log_probs):
            self.assertEqual(len(top), 2)
            self.assertGreaterEqual(top[0].log_prob, top[1].log_prob)
            self.assertGreaterEqual(top[0].log_prob, chosen - 1e-6)
        greedy = self.executor.generate(prompt, max_new_tokens=4, end_ids=[])
        self.assertEqual(list(final.output_ids), list(greedy.output_ids))

    def test_beam_search(self):
        prompt = self.tokenizer.encode("hello world")
        request = kite.Request(prompt, max_new_tokens=6, end_ids=[],
                               sampling=kite.SamplingConfig(beam_width=3, length_penalty=0.5))
        final, = self.run_requests([request])
        self.assertEqual(len(final.beams), 3)
        scores = [beam.score for beam in final.beams]
        self.assertEqual(scores, sorted(scores, reverse=True))
        self.assertEqual(list(final.output_ids), list(final.beams[0].output_ids))
        self.assertEqual(len({tuple(beam.output_ids) for beam in final.beams}), 3)
        for beam in final.beams:
            self.assertEqual(len(beam.output_ids), 6)
            self.assertEqual(beam.finish_reason, kite.FinishReason.LENGTH)
            self.assertLess(beam.cum_log_prob, 0.0)

    def run_requests(self, requests):
        """The final Result of each request, enqueued together."""
        ids = [self.executor.enqueue_request(request) for request in requests]
        finals = {}
        while len(finals) < len(ids):
            for response in self.executor.await_responses(timeout=5.0):
                self.assertIsNone(response.error)
                if response.result.is_final:
                    finals[response.request_id] = response.result
        return [finals[request_id] for request_id in ids]

    def test_logit_bias(self):
        prompt = self.tokenizer.encode("hello world")
        greedy = list(self.executor.generate(prompt, max_new_tokens=5, end_ids=[],
                                             sampling=kite.SamplingConfig(temperature=0.0))
                      .output_ids)
        favourite = 7 if greedy[0] != 7 else 8

        def request(bias):
            return kite.Request(prompt, max_new_tokens=5, end_ids=[], logit_bias=bias,
                                sampling=kite.SamplingConfig(temperature=0.0))
        forced, avoided = request({favourite: 100.0}), request({greedy[0]: -100.0})
        self.assertEqual(forced.logit_bias, {favourite: 100.0})
        forced_result, avoided_result = self.run_requests([forced, avoided])
        self.assertEqual(list(forced_result.output_ids), [favourite] * 5)
        self.assertNotEqual(avoided_result.output_ids[0], greedy[0])
        self.assertIn("logit bias", self.executor.check_request(request({-1: 1.0})))

    def test_min_new_tokens(self):
        # With the greedy first token as the end id, the output ends at once, unless
        # min_new_tokens holds it off.
        prompt = self.tokenizer.encode("hello world")
        greedy = list(self.executor.generate(prompt, max_new_tokens=5, end_ids=[]).output_ids)
        ended = self.executor.generate(prompt, max_new_tokens=8, end_ids=[greedy[0]])
        self.assertEqual(list(ended.output_ids), [greedy[0]])
        held = self.executor.generate(prompt, max_new_tokens=8, end_ids=[greedy[0]],
                                      min_new_tokens=4)
        self.assertGreaterEqual(len(held.output_ids), 4)
        self.assertNotIn(greedy[0], list(held.output_ids)[:3])
        request = kite.Request(prompt, max_new_tokens=3, min_new_tokens=4)
        self.assertEqual(request.min_new_tokens, 4)
        self.assertIn("min_new_tokens", self.executor.check_request(request))

    def test_cancel_frees_the_blocks(self):
        # A model slow enough that the cancel lands mid-generation: SmolLM2 (the demo model).
        if not DEMO_ENGINE:
            self.skipTest("demo model not fetched")
        tokenizer = kite.Tokenizer(DEMO_ENGINE)
        with kite.Executor(DEMO_ENGINE) as executor:
            prompt = tokenizer.encode("Write a long story about a cat.")
            request_id = executor.enqueue_request(
                kite.Request(prompt, max_new_tokens=200, end_ids=[], streaming=True))
            final, generated = None, 0
            while final is None:
                for response in executor.await_responses(request_id, timeout=10.0):
                    executor.cancel_request(request_id)
                    generated += len(response.result.output_ids)
                    if response.result.is_final:
                        final = response.result
            self.assertEqual(final.finish_reason, kite.FinishReason.CANCELLED)
            self.assertLess(generated, 200)
            self.assertEqual(executor.stats().kv_cache.used_blocks, 0)
            executor.cancel_request(request_id)  # finished: ignored
            executor.cancel_request(123456)  # unknown: ignored

    def test_errors_a_caller_can_cause(self):
        with self.assertRaisesRegex(RuntimeError, "config.json"):
            kite.Executor(os.path.join(ENGINE, "missing"))
        with self.assertRaises(RuntimeError):
            kite.Tokenizer(os.path.join(ENGINE, "missing"))
        too_long = [1] * (self.executor.max_input_len + 1)
        self.assertIsNotNone(self.executor.check_request(kite.Request(too_long)))
        self.assertIsNone(self.executor.check_request(kite.Request([1, 2, 3])))
        with self.assertRaises(ValueError):
            self.executor.generate(too_long)
        with self.assertRaises(ValueError):
            self.executor.await_responses(timeout=-1.0)
        with self.assertRaises(TypeError):
            kite.Request("not ids")

    def test_context_manager_shuts_down(self):
        with kite.Executor(ENGINE) as executor:
            self.assertEqual(len(executor.generate([1, 2, 3], max_new_tokens=2,
                                                   end_ids=[]).output_ids), 2)
            self.assertTrue(executor.end_ids is not None)
        with self.assertRaisesRegex(RuntimeError, "shut down"):
            executor.stats()


def main():
    global ARGS, ENGINE, DEMO_ENGINE, kite
    parser = argparse.ArgumentParser()
    parser.add_argument("--kite", required=True, help="the kite binary")
    parser.add_argument("--module_dir", required=True, help="the folder of the built module")
    parser.add_argument("--source_dir", required=True, help="Kite's source folder")
    ARGS, rest = parser.parse_known_args()
    sys.path.insert(0, ARGS.module_dir)
    import kite as module
    kite = module
    with tempfile.TemporaryDirectory() as work:
        fixture = os.path.join(ARGS.source_dir, "tests", "fixtures", "tiny_llama")
        checkpoint = os.path.join(work, "checkpoint")
        ENGINE = os.path.join(work, "engine")
        run_kite("convert", "--random", "--dtype", "float32", "--model_dir", fixture,
                 "--output_dir", checkpoint)
        run_kite("build", "--checkpoint_dir", checkpoint, "--output_dir", ENGINE, "--device",
                 "cpu", "--max_batch_size", "4", "--max_input_len", "32", "--max_seq_len", "64",
                 "--tokens_per_block", "8")
        demo = os.path.join(ARGS.source_dir, "models", "SmolLM2-135M-Instruct.Q4_1.gguf")
        if os.path.exists(demo):
            demo_checkpoint = os.path.join(work, "demo_checkpoint")
            DEMO_ENGINE = os.path.join(work, "demo_engine")
            run_kite("convert", "--gguf", demo, "--output_dir", demo_checkpoint, "--dtype",
                     "bfloat16")
            run_kite("build", "--checkpoint_dir", demo_checkpoint, "--output_dir", DEMO_ENGINE,
                     "--device", "cpu", "--max_batch_size", "1", "--max_input_len", "64",
                     "--max_seq_len", "320")
        program = unittest.main(argv=[sys.argv[0], *rest], exit=False, verbosity=2)
    sys.exit(0 if program.result.wasSuccessful() else 1)


if __name__ == "__main__":
    main()
