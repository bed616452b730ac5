#!/usr/bin/env python3
"""Hugging Face transformers (eager attention) on the same model shape and cases as `kite bench`,
as the peer column of docs/perf: random bf16 weights of a config.json on the GPU, greedy generate()
of exactly OUT new tokens for BATCH random prompts of IN tokens; prints one line per case.

usage: hf_bench.py --config CONFIG.json --batch_size "1;64" --input_output_len "128,128;2048,128"
"""
import argparse
import json
import time

import torch
import transformers


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--config", required=True)
    parser.add_argument("--batch_size", default="1")
    parser.add_argument("--input_output_len", default="128,128")
    parser.add_argument("--attn", default="eager")
    parser.add_argument("--runs", type=int, default=2)
    args = parser.parse_args()
    with open(args.config) as file:
        config = transformers.LlamaConfig(**json.load(file))
    config.torch_dtype = torch.bfloat16
    torch.manual_seed(0)
    with torch.device("cuda"):
        model = transformers.LlamaForCausalLM._from_config(
            config, torch_dtype=torch.bfloat16, attn_implementation=args.attn)
    model.eval()
    print(f"[HF] transformers {transformers.__version__} torch {torch.__version__} "
          f"attn {args.attn} device {torch.cuda.get_device_name()}", flush=True)
    batches = [int(b) for b in args.batch_size.split(";")]
    lengths = [tuple(int(v) for v in pair.split(",")) for pair in args.input_output_len.split(";")]
    for input_len, output_len in lengths:
        for batch in batches:
            ids = torch.randint(1000, config.vocab_size - 1000, (batch, input_len), device="cuda")
            generate = dict(max_new_tokens=output_len, min_new_tokens=output_len, do_sample=False,
                            pad_token_id=0, eos_token_id=None)
            try:
                with torch.no_grad():
                    model.generate(ids, **dict(generate, max_new_tokens=2, min_new_tokens=2))
                    times = []
                    for _ in range(args.runs):
                        torch.cuda.synchronize()
                        torch.cuda.reset_peak_memory_stats()
                        start = time.perf_counter()
                        out = model.generate(ids, **generate)
                        torch.cuda.synchronize()
                        times.append(time.perf_counter() - start)
                        assert out.shape[1] == input_len + output_len, out.shape
                latency = min(times)
                print(f"[HF BENCHMARK] batch_size {batch} input_length {input_len} output_length "
                      f"{output_len} latency(ms) {latency * 1e3:.2f} tokensPerSec "
                      f"{batch * output_len / latency:.2f} gpu_peak_mem(gb) "
                      f"{torch.cuda.max_memory_allocated() / 1e9:.2f}", flush=True)
            except torch.OutOfMemoryError:
                print(f"[HF BENCHMARK] batch_size {batch} input_length {input_len} output_length "
                      f"{output_len} out of GPU memory", flush=True)
            torch.cuda.empty_cache()


if __name__ == "__main__":
    main()
