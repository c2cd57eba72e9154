"""bench/gpu_pipeline: GPU seconds per audio hour, our batched path against chunk by chunk.

Full-size Qwen3-ASR-0.6B and Qwen3-ForcedAligner-0.6B ARCHITECTURES (configs from the released
config.json, see shared notes qwen-asr.md) with RANDOM weights: nothing is downloaded. The
model dirs (config, random bf16 safetensors, a small byte-level BPE tokenizer with the real
special-token ids and vocabulary sizes 151936 / 152064, processor files) are written locally,
then loaded through the worker's own `load_engine` (transformers backend, bf16, and the
process-wide torch settings the worker applies, such as cuDNN attention off on CUDA).

Input: 1 hour of 16 kHz noise, cut by our `chunking.split(samples, 270)` (14 chunks); aligner
texts are ~700 random English words per chunk (each word is one token of the small tokenizer,
as most English words are for the real Qwen tokenizer).

  ours      QwenEngine.transcribe(all chunks) = ONE batched `_infer_asr` call, then
            QwenEngine.align(all chunks) in batches of ALIGNER_BATCH_SIZE (8)
  baseline  chunk by chunk: one `_infer_asr` call per chunk (timed on the first 2 chunks and
            extrapolated to all of them), then `align` one chunk at a time (all chunks timed)

Random weights would rarely emit EOS anyway; to make every chunk generate exactly
max_new_tokens (900 ~ 270 s of real speech) the output rows of the two EOS ids qwen-asr
hard-codes (151645, 151643) are zeroed, so their logit is 0 while the best of ~152k random
logits is positive. The number of generated tokens is read from `generate`'s output.

    PYTHONPATH=src python bench/gpu_pipeline.py                 # GPU, full size (~3.5 GB dirs)
    PYTHONPATH=src .venv/bin/python bench/gpu_pipeline.py --tiny  # CPU smoke test, tiny dims

Other modes (instead of the comparison): --diagnose (ms per decode step at batch 14 and 1,
torch.profiler tables), --probe-sdpa (decoding with PyTorch's cuDNN attention backend on, for
new and already-seen sequence lengths, and off). Results and their reading: bench/GPU_RESULTS.md.
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import platform
import random
import sys
import time
import types
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))
sys.path.insert(0, str(ROOT / "tests"))

SAMPLE_RATE = 16000
EOS_IDS = (151645, 151643)  # hard-coded in qwen-asr's generate
ALIGNER_LANGS = ["Chinese", "English", "Cantonese", "French", "German", "Italian",
                 "Japanese", "Korean", "Portuguese", "Russian", "Spanish"]

# Full-size dims (released config.json values).
FULL = dict(
    asr_audio=dict(encoder_layers=18, d_model=896, encoder_attention_heads=14,
                   encoder_ffn_dim=3584, output_dim=1024, downsample_hidden_size=480),
    aligner_audio=dict(encoder_layers=24, d_model=1024, encoder_attention_heads=16,
                       encoder_ffn_dim=4096, output_dim=1024, downsample_hidden_size=480),
    text=dict(hidden_size=1024, intermediate_size=3072, num_hidden_layers=28,
              num_attention_heads=16, num_key_value_heads=8, head_dim=128,
              mrope_section=[24, 20, 20]),
)
# CPU smoke-test dims: same code path, tiny tensors (vocab sizes stay real).
TINY = dict(
    asr_audio=dict(encoder_layers=1, d_model=32, encoder_attention_heads=2,
                   encoder_ffn_dim=64, output_dim=64, downsample_hidden_size=16),
    aligner_audio=dict(encoder_layers=1, d_model=32, encoder_attention_heads=2,
                       encoder_ffn_dim=64, output_dim=64, downsample_hidden_size=16),
    text=dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2,
              num_attention_heads=4, num_key_value_heads=2, head_dim=16,
              mrope_section=[4, 2, 2]),
)

WORDS = (
    "the of and to in is that it was for on are as with his they at be this from have or by "
    "one had not but what all were when we there can an your which their said if do will each "
    "about how up out them then she many some so these would other into has more her two like "
    "him see time could no make than first been its who now people my made over did down only "
    "way find use may water long little very after words called just where most know get "
    "through back much before go good new write our used me man too any day same right look "
    "think also around another came come work three word must because does part even place "
    "well such here take why things help put years different away again off went old number "
    "great tell men say small every found still between name should home big give air line "
    "set own under read last never us left end along while might next sound below saw "
    "something thought both few those always looked show large often together asked house "
    "don't world going want school important until form food keep children feet land side "
    "without boy once animals life enough took sometimes four head above kind began almost "
    "live page got earth need far hand high year mother light parts country father let night "
    "following picture being study second eyes soon times story boys since white days ever "
    "paper hard near sentence better best across during today others however sure means knew "
    "it's try told young miles sun ways thing whole hear example heard several change answer "
    "room sea against top turned learn point city play toward five using himself usually"
).split()


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", flush=True)


# ------------------------------------------------------------------------------------------
# Environment: nagisa (Japanese only) may not import on the GPU box; a stub keeps qwen-asr whole.
# ------------------------------------------------------------------------------------------

def ensure_nagisa() -> str:
    import subprocess

    # Tried in a child first: a compiled dep (dynet) built for another numpy could crash us.
    probe = subprocess.run([sys.executable, "-c", "import nagisa"], capture_output=True,
                           text=True)
    try:
        if probe.returncode != 0:
            raise ImportError((probe.stderr.strip().splitlines() or ["?"])[-1][:200])
        import nagisa  # noqa: F401
        return "real"
    except Exception as exc:  # noqa: BLE001 - any import failure: fall back to a stub
        stub = types.ModuleType("nagisa")

        def tagging(text):  # pragma: no cover - Japanese is not benchmarked
            raise RuntimeError("nagisa stub: Japanese alignment is not available here")

        stub.tagging = tagging
        sys.modules["nagisa"] = stub
        return f"stub ({type(exc).__name__}: {exc})"


# ------------------------------------------------------------------------------------------
# Model dirs
# ------------------------------------------------------------------------------------------

def _thinker_config(dims: dict, audio_key: str, vocab_size: int, tied: bool) -> dict:
    import tiny_models as tm

    special = tm._ASR_SPECIAL_IDS
    text = dims["text"]
    audio_config = dict(
        num_mel_bins=128, n_window=50, n_window_infer=800, conv_chunksize=500,
        max_source_positions=1500, activation_function="gelu", **dims[audio_key],
    )
    text_config = dict(
        vocab_size=vocab_size, hidden_size=text["hidden_size"],
        intermediate_size=text["intermediate_size"],
        num_hidden_layers=text["num_hidden_layers"],
        num_attention_heads=text["num_attention_heads"],
        num_key_value_heads=text["num_key_value_heads"], head_dim=text["head_dim"],
        hidden_act="silu", max_position_embeddings=65536, rms_norm_eps=1e-6,
        rope_theta=1000000.0,
        rope_scaling={"rope_type": "default", "mrope_section": list(text["mrope_section"]),
                      "interleaved": True},
        tie_word_embeddings=tied, pad_token_id=special[tm.ENDOFTEXT],
    )
    return dict(audio_config=audio_config, text_config=text_config,
                audio_token_id=special[tm.AUDIO_PAD],
                audio_start_token_id=special[tm.AUDIO_START],
                audio_end_token_id=special[tm.AUDIO_END])


def _random_model(config_kwargs: dict, device: str, seed: int):
    import torch
    from qwen_asr.core.transformers_backend import (Qwen3ASRConfig,
                                                    Qwen3ASRForConditionalGeneration)

    config = Qwen3ASRConfig(**config_kwargs)
    torch.manual_seed(seed)
    with torch.device(device):
        model = Qwen3ASRForConditionalGeneration(config)
    return model.to(torch.bfloat16).eval()


def build_dirs(base: Path, dims: dict, device: str) -> tuple[Path, Path, dict]:
    """Write the ASR and aligner dirs; returns (asr_dir, aligner_dir, parameter counts)."""
    import torch
    import tiny_models as tm

    counts = {}
    extra = list(dict.fromkeys(tm._bl(w) for w in WORDS))

    asr_dir = base / "asr"
    asr_dir.mkdir(parents=True, exist_ok=True)
    tm._write_tokenizer_files(asr_dir, tm._ASR_SPECIAL_IDS, tm._ASR_ADDED_IDS, extra)
    model = _random_model(dict(thinker_config=_thinker_config(dims, "asr_audio", 151936, True),
                               support_languages=None), device, 0)
    with torch.no_grad():
        for i in EOS_IDS:  # never emit EOS: every chunk decodes exactly max_new_tokens
            model.thinker.lm_head.weight[i].zero_()
            model.thinker.model.embed_tokens.weight[i].zero_()
    counts["asr_params"] = sum(p.numel() for p in model.parameters())
    gen = model.generation_config
    gen.pad_token_id = tm._ASR_SPECIAL_IDS[tm.ENDOFTEXT]
    gen.eos_token_id = list(EOS_IDS)
    gen.bos_token_id = None
    gen.do_sample = False
    model.save_pretrained(str(asr_dir), safe_serialization=True)
    del model

    al_dir = base / "aligner"
    al_dir.mkdir(parents=True, exist_ok=True)
    tm._write_tokenizer_files(al_dir, tm._ASR_SPECIAL_IDS, tm._ASR_ADDED_IDS, extra)
    thinker = _thinker_config(dims, "aligner_audio", 152064, False)
    thinker["model_type"] = "qwen3_forced_aligner"
    thinker["classify_num"] = 5000
    model = _random_model(dict(thinker_config=thinker, support_languages=ALIGNER_LANGS,
                               timestamp_token_id=tm._ASR_ADDED_IDS[tm.TIMESTAMP],
                               timestamp_segment_time=80), device, 1)
    if model.thinker.lm_head.out_features != 5000:
        raise AssertionError("aligner thinker did not pick up model_type qwen3_forced_aligner")
    counts["aligner_params"] = sum(p.numel() for p in model.parameters())
    model.save_pretrained(str(al_dir), safe_serialization=True)
    del model
    cfg_path = al_dir / "config.json"  # save_pretrained rewrites the thinker's model_type
    cfg = json.loads(cfg_path.read_text("utf-8"))
    cfg["thinker_config"]["model_type"] = "qwen3_forced_aligner"
    cfg["thinker_config"]["classify_num"] = 5000
    cfg_path.write_text(json.dumps(cfg, indent=2), "utf-8")
    if device.startswith("cuda"):
        torch.cuda.empty_cache()
    return asr_dir, al_dir, counts


# ------------------------------------------------------------------------------------------
# Timing helpers
# ------------------------------------------------------------------------------------------

class Recorder:
    """Times the GPU calls inside qwen-asr: ASR `generate` (counts generated tokens too) and
    the aligner's single `thinker` forward. Everything else in a call is CPU-side work
    (feature extraction, tokenising, decoding, timestamp repair)."""

    def __init__(self, model, sync):
        self.sync = sync
        self.reset()
        asr = model.model
        orig_generate = asr.generate

        def generate(*args, **kwargs):
            self.sync()
            t0 = time.perf_counter()
            out = orig_generate(*args, **kwargs)
            self.sync()
            self.generate_s += time.perf_counter() - t0
            seqs = out.sequences
            prompt = kwargs["input_ids"].shape[1]
            new = seqs[:, prompt:]
            self.new_tokens.extend(
                int(n) for n in (~torch_isin(new, EOS_IDS)).sum(dim=1).tolist())
            self.prompt_tokens.append(int(prompt))
            return out

        asr.generate = generate
        thinker = model.forced_aligner.model.thinker
        orig_forward = thinker.forward

        def forward(*args, **kwargs):
            self.sync()
            t0 = time.perf_counter()
            out = orig_forward(*args, **kwargs)
            self.sync()
            self.align_forward_s += time.perf_counter() - t0
            return out

        thinker.forward = forward

    def reset(self):
        self.generate_s = 0.0
        self.align_forward_s = 0.0
        self.new_tokens: list[int] = []
        self.prompt_tokens: list[int] = []


def torch_isin(t, ids):
    import torch

    return torch.isin(t, torch.tensor(list(ids), device=t.device))


def diagnose(model, engine, views, langs, rec, sync, peak_gib, reset_peak, cuda) -> dict:
    """Where decode time goes: ms per step from two generation lengths (prefill cancels out),
    at batch len(views) and batch 1, then a profiler table of a short batched decode."""
    import torch

    out: dict = {}
    n = len(views)
    short, long_ = 20, 120

    def gen_time(vs, tokens):
        model.max_new_tokens = tokens
        rec.reset()
        engine.transcribe(vs, ["English"] * len(vs), [""] * len(vs))
        return rec.generate_s

    for label, vs in ((f"batch{n}", views), ("batch1_a", views[:1]), ("batch1_b", views[1:2]),
                      ("batch1_c", views[2:3])):
        reset_peak()
        a = gen_time(vs, short)
        b = gen_time(vs, long_)
        ms = (b - a) / (long_ - short) * 1000
        out[label] = {"ms_per_step": round(ms, 2), "t_short": round(a, 2), "t_long": round(b, 2),
                      "peak_gib": peak_gib()}
        log(f"diagnose {label}: {ms:.1f} ms per decode step ({short} tok {a:.2f} s, "
            f"{long_} tok {b:.2f} s), peak {peak_gib()} GiB")

    # static KV cache instead of DynamicCache's torch.cat per step
    gc = model.model.thinker.generation_config
    try:
        gc.cache_implementation = "static"
        a = gen_time(views, short)
        b = gen_time(views, long_)
        ms = (b - a) / (long_ - short) * 1000
        out["static_cache"] = {"ms_per_step": round(ms, 2)}
        log(f"diagnose static cache batch{n}: {ms:.1f} ms per decode step")
    except Exception as exc:  # noqa: BLE001
        out["static_cache"] = {"error": f"{type(exc).__name__}: {exc}"[:300]}
        log(f"diagnose static cache failed: {out['static_cache']['error']}")
    finally:
        gc.cache_implementation = None

    if cuda:
        from torch.profiler import ProfilerActivity, profile

        for label, vs in ((f"batch{n}", views), ("batch1", views[:1])):
            model.max_new_tokens = 40
            with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as prof:
                engine.transcribe(vs, ["English"] * len(vs), [""] * len(vs))
                sync()
            table = prof.key_averages().table(sort_by="cuda_time_total", row_limit=18,
                                              max_name_column_width=60)
            print(f"\n=== profiler {label}, 40 new tokens (prefill included) ===\n{table}",
                  flush=True)
            events = prof.key_averages()
            out[f"profile_{label}"] = {
                "cuda_total_ms": round(sum(e.self_device_time_total for e in events) / 1000, 1),
                "cpu_total_ms": round(sum(e.self_cpu_time_total for e in events) / 1000, 1),
            }
            log(f"profile {label}: {out[f'profile_{label}']}")
    model.max_new_tokens = engine.max_new_tokens
    out["torch_threads"] = torch.get_num_threads()
    out["cpu_count"] = os.cpu_count()
    return out


def probe_sdpa(model, engine, views, rec, peak_gib, reset_peak, max_new) -> dict:
    """Does PyTorch's cuDNN SDPA backend (chosen by default on Hopper) slow decoding down?
    Every decode step has a new key length; cuDNN attention is planned per shape."""
    import torch

    out: dict = {}
    n = len(views)

    def run(label, vs, tokens, cudnn):
        torch.backends.cuda.enable_cudnn_sdp(cudnn)
        model.max_new_tokens = tokens
        rec.reset()
        reset_peak()
        engine.transcribe(vs, ["English"] * len(vs), [""] * len(vs))
        ms = rec.generate_s / tokens * 1000
        out[label] = {"batch": len(vs), "tokens": tokens, "cudnn_sdp": cudnn,
                      "generate_s": round(rec.generate_s, 2), "ms_per_token_step": round(ms, 1),
                      "new_tokens": sorted(set(rec.new_tokens)), "peak_gib": peak_gib()}
        log(f"probe {label}: {out[label]}")

    run("b1_chunk0_cudnn_new_shapes", views[:1], 300, True)
    run("b1_chunk0_cudnn_seen_shapes", views[:1], 300, True)
    run("b1_chunk2_no_cudnn", views[2:3], 300, False)
    run(f"b{n}_no_cudnn_full", views, max_new, False)
    run("b1_chunk3_no_cudnn_full", views[3:4], max_new, False)
    torch.backends.cuda.enable_cudnn_sdp(False)  # back to the worker's setting
    model.max_new_tokens = max_new
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--tiny", action="store_true", help="CPU smoke test with tiny dims")
    ap.add_argument("--audio-seconds", type=float, default=None)
    ap.add_argument("--chunk-seconds", type=float, default=None, help="default 270 (tiny: 60)")
    ap.add_argument("--max-new-tokens", type=int, default=None)
    ap.add_argument("--words", type=int, default=None, help="aligner words per chunk")
    ap.add_argument("--aligner-batch", type=int, default=8)
    ap.add_argument("--baseline-asr-chunks", type=int, default=2)
    ap.add_argument("--workdir", default="/tmp/qwen_gpu_bench")
    ap.add_argument("--json", default=None, help="write results here too")
    ap.add_argument("--asr-batch", type=int, default=32, help="ASR_BATCH_SIZE")
    ap.add_argument("--probe-sdpa", action="store_true",
                    help="instead of the comparison: decode with PyTorch's cuDNN attention "
                         "backend on (new vs already-seen sequence lengths) and off")
    ap.add_argument("--diagnose", action="store_true",
                    help="instead of the comparison: ms per decode step at batch 14 and 1, "
                         "and a torch.profiler breakdown of decode steps")
    args = ap.parse_args()

    tiny = args.tiny
    audio_seconds = args.audio_seconds or (200.0 if tiny else 3600.0)
    max_new = args.max_new_tokens or (8 if tiny else 900)
    n_words = args.words or (60 if tiny else 700)
    dims = TINY if tiny else FULL
    chunk_seconds = args.chunk_seconds or (60.0 if tiny else 270.0)

    nagisa_state = ensure_nagisa()
    t0 = time.perf_counter()
    import torch
    import transformers
    import qwen_asr  # noqa: F401

    from qwen_worker import chunking
    from qwen_worker.config import load_settings
    from qwen_worker.engine import load_engine
    log(f"imports {time.perf_counter() - t0:.1f} s; nagisa: {nagisa_state}")

    cuda = torch.cuda.is_available() and not tiny
    device = "cuda:0" if cuda else "cpu"
    env = {
        "python": platform.python_version(),
        "torch": torch.__version__,
        "cuda": torch.version.cuda,
        "transformers": transformers.__version__,
        "qwen_asr": getattr(qwen_asr, "__version__", "0.0.6"),
        "device": torch.cuda.get_device_name(0) if cuda else platform.processor() or "cpu",
        "gpu_memory_gib": round(torch.cuda.get_device_properties(0).total_memory / 2**30, 1)
        if cuda else None,
        "attn": "sdpa, as the worker sets it (load_engine -> configure_torch)",
        "nagisa": nagisa_state,
    }
    log(f"env {json.dumps(env)}")

    def sync():
        if cuda:
            torch.cuda.synchronize()

    def reset_peak():
        if cuda:
            sync()
            torch.cuda.reset_peak_memory_stats()

    def peak_gib():
        return round(torch.cuda.max_memory_allocated() / 2**30, 2) if cuda else None

    # --- build + load ---
    t0 = time.perf_counter()
    try:
        asr_dir, al_dir, counts = build_dirs(Path(args.workdir), dims, device)
    except Exception as exc:  # noqa: BLE001 - building on the GPU is only a shortcut
        if device == "cpu":
            raise
        log(f"building on {device} failed ({type(exc).__name__}: {exc}); building on cpu")
        torch.cuda.empty_cache()
        asr_dir, al_dir, counts = build_dirs(Path(args.workdir), dims, "cpu")
    build_s = time.perf_counter() - t0
    log(f"built model dirs in {build_s:.1f} s: {counts}")

    # The worker's own load path, so the run measures the settings the worker runs with.
    settings = load_settings({
        "ASR_MODEL": str(asr_dir), "ALIGNER_MODEL": str(al_dir), "ASR_BACKEND": "transformers",
        "ASR_DEVICE": "cuda" if cuda else "cpu", "ASR_DTYPE": "bfloat16",
        "MAX_NEW_TOKENS": str(max_new), "ASR_BATCH_SIZE": str(args.asr_batch),
        "ALIGNER_BATCH_SIZE": str(args.aligner_batch)})
    t0 = time.perf_counter()
    engine = load_engine(settings)
    model = engine._model
    load_s = time.perf_counter() - t0
    weights_gib = round(torch.cuda.memory_allocated() / 2**30, 2) if cuda else None
    log(f"loaded through qwen-asr in {load_s:.1f} s; weights on GPU {weights_gib} GiB; "
        f"backend {model.backend}, max_inference_batch_size {model.max_inference_batch_size}")

    rec = Recorder(model, sync)
    engine_b1 = copy.copy(engine)
    engine_b1.aligner_batch_size = 1

    # --- input ---
    rng = np.random.default_rng(0)
    samples = (0.1 * rng.standard_normal(int(audio_seconds * SAMPLE_RATE))).astype(np.float32)
    chunks = chunking.split(samples, chunk_seconds)
    views = [c.samples for c in chunks]
    n = len(chunks)
    pyrng = random.Random(0)
    texts = [" ".join(pyrng.choice(WORDS) for _ in range(n_words)).capitalize() + "."
             for _ in range(n)]
    langs = ["English"] * n
    log(f"audio {audio_seconds:.0f} s -> {n} chunks: "
        + ", ".join(f"{c.duration:.1f}" for c in chunks) + " s")

    results: dict = {"env": env, "counts": counts, "build_s": round(build_s, 1),
                     "load_s": round(load_s, 1), "weights_gib": weights_gib,
                     "audio_seconds": audio_seconds, "chunks": n,
                     "chunk_seconds": [round(c.duration, 2) for c in chunks],
                     "max_new_tokens": max_new, "words_per_chunk": n_words,
                     "aligner_batch": args.aligner_batch}
    per_hour = 3600.0 / audio_seconds

    # --- warm-up: 2 chunks, short generation, one aligner batch ---
    t0 = time.perf_counter()
    model.max_new_tokens = 8
    engine.transcribe(views[:2], langs[:2], ["", ""])
    model.max_new_tokens = max_new
    engine.align(views[:2], texts[:2], langs[:2])
    sync()
    log(f"warm-up {time.perf_counter() - t0:.1f} s")

    def timed(fn):
        rec.reset()
        reset_peak()
        t = time.perf_counter()
        out = fn()
        sync()
        return out, time.perf_counter() - t

    if args.probe_sdpa:
        results["probe_sdpa"] = probe_sdpa(model, engine, views, rec, peak_gib, reset_peak,
                                           max_new)
        print("RESULTS_JSON " + json.dumps(results))
        if args.json:
            Path(args.json).write_text(json.dumps(results, indent=2), "utf-8")
        return 0

    if args.diagnose:
        results["diagnose"] = diagnose(model, engine, views, langs, rec, sync, peak_gib,
                                       reset_peak, cuda)
        print("RESULTS_JSON " + json.dumps(results))
        if args.json:
            Path(args.json).write_text(json.dumps(results, indent=2), "utf-8")
        return 0

    # --- prefill only (encoder + prompt): all chunks batched, 1 new token ---
    model.max_new_tokens = 1
    _, s = timed(lambda: engine.transcribe(views, langs, [""] * len(views)))
    model.max_new_tokens = max_new
    results["prefill_batched"] = {"s": round(s, 2), "generate_s": round(rec.generate_s, 2),
                                  "peak_gib": peak_gib()}
    log(f"prefill-only batched (max_new_tokens=1): {s:.2f} s, generate {rec.generate_s:.2f} s,"
        f" peak {peak_gib()} GiB")

    # --- (a) ours ---
    outs, s = timed(lambda: engine.transcribe(views, langs, [""] * len(views)))
    ours_asr = {"s": round(s, 2), "generate_s": round(rec.generate_s, 2),
                "peak_gib": peak_gib(), "new_tokens": list(rec.new_tokens),
                "prompt_tokens": list(rec.prompt_tokens),
                "retokenised_output_tokens": [o.output_tokens for o in outs],
                "hit_token_limit": sum(o.hit_token_limit for o in outs)}
    log(f"ours ASR (1 batch of {n}): {s:.2f} s, generate {rec.generate_s:.2f} s, "
        f"peak {peak_gib()} GiB, generated tokens {sorted(set(rec.new_tokens))}, "
        f"prompt {rec.prompt_tokens}")
    _, s = timed(lambda: engine.align(views, texts, langs))
    ours_align = {"s": round(s, 2), "forward_s": round(rec.align_forward_s, 2),
                  "peak_gib": peak_gib()}
    log(f"ours align (batches of {args.aligner_batch}): {s:.2f} s, forward "
        f"{rec.align_forward_s:.2f} s, peak {peak_gib()} GiB")
    results["ours"] = {"asr": ours_asr, "align": ours_align}

    # --- (b) baseline: chunk by chunk ---
    k = min(args.baseline_asr_chunks, n)
    rec.reset()
    reset_peak()
    per_chunk = []
    gen_s = 0.0
    toks = []
    for i in range(k):
        t = time.perf_counter()
        engine.transcribe([views[i]], [langs[i]], [""])
        sync()
        per_chunk.append(time.perf_counter() - t)
    gen_s, toks = rec.generate_s, list(rec.new_tokens)
    base_asr = {"measured_chunks": k, "per_chunk_s": [round(x, 2) for x in per_chunk],
                "s": round(sum(per_chunk) / k * n, 2), "extrapolated": k < n,
                "generate_s": round(gen_s / k * n, 2), "peak_gib": peak_gib(),
                "new_tokens": toks}
    log(f"baseline ASR, {k} chunks one by one: {[round(x, 2) for x in per_chunk]} s "
        f"(generated {toks}) -> x{n}/{k} = {base_asr['s']:.1f} s; peak {peak_gib()} GiB")
    _, s = timed(lambda: engine_b1.align(views, texts, langs))
    base_align = {"s": round(s, 2), "forward_s": round(rec.align_forward_s, 2),
                  "peak_gib": peak_gib(), "measured_chunks": n}
    log(f"baseline align (1 at a time, all {n}): {s:.2f} s, forward "
        f"{rec.align_forward_s:.2f} s, peak {peak_gib()} GiB")
    results["baseline"] = {"asr": base_asr, "align": base_align}

    # --- summary per audio hour ---
    rows = []
    for name, r in (("ours", results["ours"]), ("baseline", results["baseline"])):
        asr_h = r["asr"]["s"] * per_hour
        al_h = r["align"]["s"] * per_hour
        rows.append((name, asr_h, al_h, asr_h + al_h,
                     max(x for x in (r["asr"]["peak_gib"], r["align"]["peak_gib"]) if x is not None)
                     if cuda else None))
    results["per_audio_hour"] = {
        name: {"asr_s": round(a, 2), "align_s": round(b, 2), "total_s": round(c, 2),
               "peak_gib": p} for name, a, b, c, p in rows}
    ours_t, base_t = rows[0][3], rows[1][3]
    results["speedup"] = {
        "asr": round(rows[1][1] / rows[0][1], 2), "align": round(rows[1][2] / rows[0][2], 2),
        "total": round(base_t / ours_t, 2)}

    print("\n| path | ASR s / audio h | align s / audio h | total s / audio h | peak GPU GiB |")
    print("| --- | ---: | ---: | ---: | ---: |")
    for name, a, b, c, p in rows:
        print(f"| {name} | {a:.1f} | {b:.1f} | {c:.1f} | {p} |")
    print(f"speed-up: {json.dumps(results['speedup'])}")
    print("RESULTS_JSON " + json.dumps(results))
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2), "utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main())
