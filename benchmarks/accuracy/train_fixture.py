"""Train the accuracy benchmark's fixture: a small byte-level LlamaForCausalLM on the Python standard
library's sources (see data.py), deterministically (seeded, deterministic algorithms, fixed threads).

    .venv/bin/python benchmarks/accuracy/train_fixture.py --steps 500 --max-seconds 1700

Writes benchmarks/fixtures/stdlib-llama/{model.safetensors (fp32), config.json, tokenizer.json, metadata.json}.
The step count is fixed (the cosine schedule spans it); --max-seconds only guards the wall clock and, if it
cuts training short, that is recorded in the metadata (and the run is then not reproducible bit for bit).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import math
import platform
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import data  # noqa: E402

FIXTURE = Path(__file__).resolve().parents[1] / "fixtures" / "stdlib-llama"

CONFIG = dict(vocab_size=256, hidden_size=256, intermediate_size=768, num_hidden_layers=4, num_attention_heads=4,
              num_key_value_heads=2, max_position_embeddings=256, rms_norm_eps=1e-5, rope_theta=10000.0,
              tie_word_embeddings=False, bos_token_id=None, eos_token_id=None, pad_token_id=None)

TOKENIZER = {"type": "bytes", "vocab_size": 256, "encode": "token id = byte value (UTF-8 bytes of the text)",
             "decode": "bytes(ids).decode('utf-8', errors='replace')", "special_tokens": {},
             "file_separator": list(data.SEPARATOR)}


def build_model(seed: int) -> torch.nn.Module:
    import transformers

    torch.manual_seed(seed)
    cfg = transformers.LlamaConfig(**CONFIG)
    return transformers.LlamaForCausalLM(cfg)


def lr_at(step: int, steps: int, peak: float, warmup: int, floor: float) -> float:
    if step < warmup:
        return peak * (step + 1) / warmup
    t = (step - warmup) / max(steps - warmup, 1)
    return floor + (peak - floor) * 0.5 * (1 + math.cos(math.pi * t))


@torch.no_grad()
def heldout_loss(model: torch.nn.Module, windows: torch.Tensor, batch: int = 16) -> float:
    model.eval()
    total, n = 0.0, 0
    for i in range(0, len(windows), batch):
        w = windows[i:i + batch]
        logits = model(w[:, :-1], use_cache=False).logits
        total += torch.nn.functional.cross_entropy(logits.reshape(-1, logits.shape[-1]), w[:, 1:].reshape(-1), reduction="sum").item()
        n += w[:, 1:].numel()
    model.train()
    return total / n


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--steps", type=int, default=500)
    ap.add_argument("--max-seconds", type=float, default=1100.0)
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--seq", type=int, default=128)
    ap.add_argument("--lr", type=float, default=3e-3)
    ap.add_argument("--warmup", type=int, default=50)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--out", type=Path, default=FIXTURE)
    ap.add_argument("--log-every", type=int, default=25)
    args = ap.parse_args()

    torch.set_num_threads(args.threads)
    torch.use_deterministic_algorithms(True)
    torch.manual_seed(args.seed)

    corpus = data.load()
    train_ids = data.tokens(corpus.train)
    eval_windows = data.heldout_windows(64, args.seq)
    model = build_model(args.seed)
    model.train()
    params = sum(p.numel() for p in model.parameters())
    print(f"params {params:,}  train bytes {len(train_ids):,}  heldout bytes {len(corpus.heldout):,}", flush=True)

    decay = [p for n, p in model.named_parameters() if p.ndim >= 2]
    no_decay = [p for n, p in model.named_parameters() if p.ndim < 2]
    opt = torch.optim.AdamW([{"params": decay, "weight_decay": 0.1}, {"params": no_decay, "weight_decay": 0.0}],
                            lr=args.lr, betas=(0.9, 0.95), eps=1e-8)
    gen = torch.Generator().manual_seed(args.seed + 1)
    offsets = torch.arange(args.seq + 1)
    t0 = time.perf_counter()
    losses: list[float] = []
    step = 0
    stopped_early = False
    for step in range(args.steps):
        if time.perf_counter() - t0 > args.max_seconds:
            stopped_early = True
            break
        for group in opt.param_groups:
            group["lr"] = lr_at(step, args.steps, args.lr, args.warmup, args.lr * 0.05)
        starts = torch.randint(0, len(train_ids) - args.seq - 1, (args.batch,), generator=gen)
        batch = train_ids[starts[:, None] + offsets]
        logits = model(batch[:, :-1], use_cache=False).logits
        loss = torch.nn.functional.cross_entropy(logits.reshape(-1, logits.shape[-1]), batch[:, 1:].reshape(-1))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        losses.append(loss.item())
        if step % args.log_every == 0 or step == args.steps - 1:
            el = time.perf_counter() - t0
            print(f"step {step:5d}  loss {loss.item():.4f}  lr {opt.param_groups[0]['lr']:.2e}  {el:7.1f}s  "
                  f"({el / (step + 1):.2f}s/step)", flush=True)
    else:
        step = args.steps
    seconds = time.perf_counter() - t0
    steps_done = step
    model.eval()
    held = heldout_loss(model, eval_windows)
    final_train = sum(losses[-50:]) / max(len(losses[-50:]), 1)
    print(f"done: {steps_done} steps in {seconds:.0f}s; train loss (last 50) {final_train:.4f}; "
          f"held-out loss {held:.4f} (ppl {math.exp(held):.3f}, {held / math.log(2):.3f} bits/byte)", flush=True)

    from safetensors.torch import save_file

    args.out.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().to(torch.float32).contiguous() for k, v in model.state_dict().items()}
    weights = args.out / "model.safetensors"
    save_file(state, str(weights), metadata={"format": "pt"})
    model.config.to_json_file(str(args.out / "config.json"))
    (args.out / "tokenizer.json").write_text(json.dumps(TOKENIZER, indent=2) + "\n")
    meta = {
        "model": "LlamaForCausalLM", "parameters": params, "weights_dtype": "float32",
        "weights_sha256": hashlib.sha256(weights.read_bytes()).hexdigest(), "weights_bytes": weights.stat().st_size,
        "steps": steps_done, "steps_planned": args.steps, "stopped_early_by_wall_clock": stopped_early,
        "seconds": round(seconds, 1), "batch": args.batch, "seq": args.seq, "lr_peak": args.lr, "warmup": args.warmup,
        "schedule": "linear warmup then cosine to 5% of peak", "optimizer": "AdamW(betas=(0.9, 0.95), wd=0.1 on matrices)",
        "grad_clip": 1.0, "seed": args.seed, "threads": args.threads, "deterministic_algorithms": True,
        "final_train_loss_last50": round(final_train, 5),
        "heldout_loss": round(held, 5), "heldout_ppl": round(math.exp(held), 5),
        "heldout_eval": "64 fixed windows of 128 bytes (data.heldout_windows), use_cache=False",
        "torch": torch.__version__, "transformers": __import__("transformers").__version__,
        "platform": platform.platform(), "machine": platform.machine(),
        "data": data.describe(),
    }
    (args.out / "metadata.json").write_text(json.dumps(meta, indent=2) + "\n")
    print(f"wrote {args.out}", flush=True)


if __name__ == "__main__":
    main()
