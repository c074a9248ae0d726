"""Admission's predicted bytes against the measured peak of real batches, on the CPU.

The mid-size Qwen2-VL (bench/mid_model.py) in fp32, one thread. For each batch (text only; images;
videos at the frame limit with different frame counts; all mixed), a fresh child process loads the
model, notes its peak RSS (``ru_maxrss``), prefills the batch together, decodes it to ``max_tokens``
and notes the peak again. The growth is set against the sum of the requests' predictions
(``memory/admission.py``). RSS also holds allocator slack and Python objects, so read it as a check that
the prediction covers the real peak, not as an exact figure. tests/gpu/test_gpu_admission.py makes the
same comparison against ``torch.cuda.max_memory_allocated``.

Usage: .venv/bin/python -m bench.admission_accuracy [--max-tokens 64]
"""

import argparse
import json
import pathlib
import subprocess
import sys

from bench.mid_model import ensure_mid_model

CHILD = r"""
import json, resource, sys
import numpy as np, torch
torch.set_num_threads(1)
from memory.admission import RequestCostModel, batch_bytes
from models.adapters.base import ChatMessage, GenerationRequest, ImagePart, TextPart, VideoPart
from models.adapters.hf_adapter import HuggingFaceVisionLanguageAdapter

path, kind, new_tokens = sys.argv[1], sys.argv[2], int(sys.argv[3])
rng = np.random.default_rng(0)
def request(*parts):
    return GenerationRequest(messages=(ChatMessage("user", tuple(parts)),), max_new_tokens=new_tokens)
text = [request(TextPart(f"What happens in scene {i}?")) for i in range(8)]
images = [request(ImagePart(rng.integers(0, 256, (448, 448, 3), dtype=np.uint8)), TextPart("Describe.")) for _ in range(4)]
videos = [request(VideoPart(rng.integers(0, 256, (frames, 448, 448, 3), dtype=np.uint8)), TextPart("What happens?"))
          for frames in (32, 16, 8)]
batch = {"text": text, "images": images, "videos": videos, "mixed": text[:2] + images[:2] + videos[1:]}[kind]
adapter = HuggingFaceVisionLanguageAdapter(path)
adapter.load()
engine = adapter.batch_engine()
costs = RequestCostModel.from_config(adapter.model.config, dtype_bytes=engine.kv_dtype_bytes)
prompts = [engine.prepare(r) for r in batch]
# Warm up on a small video request: the first forward touches the memory-mapped weights (RSS grows by them).
warm = engine.prepare(request(VideoPart(rng.integers(0, 256, (2, 64, 64, 3), dtype=np.uint8)), TextPart("warm")))
warm_rows, _ = engine.prefill_many([warm])
engine.decode(warm_rows)
del warm_rows
longest = max(p.prompt_tokens for p in prompts) + new_tokens  # prefilled together: padded to the longest
predicted = batch_bytes(costs, row_tokens=[longest] * len(prompts), prefill_prompts=[p.prompt_tokens for p in prompts],
                        vision_bytes=sum(costs.vision_bytes_per_patch * p.visual_patches for p in prompts))
kv = batch_bytes(costs, row_tokens=[longest] * len(prompts))
before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
rows, logits = engine.prefill_many(prompts)
rows.last_tokens = torch.argmax(logits, dim=-1)
for _ in range(new_tokens):
    rows.advance(torch.argmax(engine.decode(rows), dim=-1))
after = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
print(json.dumps({"requests": len(batch), "prompt_tokens": sum(p.prompt_tokens for p in prompts),
                  "predicted_bytes": predicted, "predicted_kv_bytes": kv, "measured_kv_bytes": rows.kv_bytes(),
                  "peak_growth_bytes": after - before}))
"""


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--max-tokens", type=int, default=64)
    parser.add_argument("--model-dir", type=pathlib.Path, default=pathlib.Path("bench/results/mid-qwen2-vl"))
    args = parser.parse_args()
    path = ensure_mid_model(args.model_dir)
    print("batch | requests | prompt tokens | predicted MiB | measured peak growth MiB | measured / predicted | KV held / predicted")
    for kind in ("text", "images", "videos", "mixed"):
        out = subprocess.run([sys.executable, "-c", CHILD, str(path), kind, str(args.max_tokens)],
                             capture_output=True, text=True, check=True).stdout.strip().splitlines()[-1]
        row = json.loads(out)
        print(f"{kind} | {row['requests']} | {row['prompt_tokens']} | {row['predicted_bytes'] / 2**20:.1f} | "
              f"{row['peak_growth_bytes'] / 2**20:.1f} | {row['peak_growth_bytes'] / row['predicted_bytes']:.2f} | "
              f"{row['measured_kv_bytes'] / row['predicted_kv_bytes']:.3f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
