"""bench/gpu models: full-size random-weight Qwen3-ASR and aligner dirs, and what they get.

The dirs are written by a child process (`gpu.py --build`: CUDA there, never in the process
that starts vLLM). Random weights give meaningless words, so output lengths are fixed
(`fixed_output`): 900 tokens per 270 s chunk, 100 per 30 s clip, drawn among ~250 English
word tokens, each one token of the dirs' tokenizer.
"""

from __future__ import annotations

import io
import json
import subprocess
import sys
import time
import wave
from pathlib import Path
from typing import Any, Callable

import numpy as np

from gpu_instruments import CARD_GIB, log

GPU_SCRIPT = Path(__file__).with_name("gpu.py")  # its hidden `--build` writes the dirs
SR = 16000

TOKENS_PER_SECOND = 900 / 270  # fixed output: 900 tokens per 270 s chunk, 100 per 30 s
EOS_IDS = (151645, 151643)

_ENCODER = dict(encoder_attention_heads=16, encoder_ffn_dim=4096, d_model=1024,
                encoder_layers=24, downsample_hidden_size=480)
_TEXT = dict(num_hidden_layers=28, num_attention_heads=16, num_key_value_heads=8, head_dim=128,
             mrope_section=[24, 20, 20])
DIMS = {
    "0.6b": dict(asr_audio=dict(encoder_layers=18, d_model=896, encoder_attention_heads=14,
                                encoder_ffn_dim=3584, output_dim=1024, downsample_hidden_size=480),
                 aligner_audio=dict(_ENCODER, output_dim=1024),
                 text=dict(_TEXT, hidden_size=1024, intermediate_size=3072)),
    "1.7b": dict(asr_audio=dict(_ENCODER, output_dim=2048),
                 aligner_audio=dict(_ENCODER, output_dim=1024),
                 text=dict(_TEXT, hidden_size=2048, intermediate_size=6144),
                 aligner_text=dict(_TEXT, hidden_size=1024, intermediate_size=3072)),
    "tiny": dict(asr_audio=dict(encoder_layers=1, d_model=32, encoder_attention_heads=2,
                                encoder_ffn_dim=64, output_dim=64, downsample_hidden_size=16),
                 aligner_audio=dict(encoder_layers=1, d_model=32, encoder_attention_heads=2,
                                    encoder_ffn_dim=64, output_dim=64, downsample_hidden_size=16),
                 text=dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                           num_attention_heads=4, num_key_value_heads=2, head_dim=16,
                           mrope_section=[4, 2, 2])),
}
WORDS = ("the of and to in is that it was for on are as with his they at be this from have or "
         "by one had not but what all were when we there can an your which their said if do "
         "will each about how up out them then she many some so these would other into has more "
         "her two like him see time could no make than first been its who now people my made "
         "over did down only way find use may water long little very after words called just "
         "where most know get through back much before go good new write our used me man too "
         "any day same right look think also around another came come work three word must "
         "because does part even place well such here take why things help put years different "
         "away again off went old number great tell men say small every found still between "
         "name should home big give air line set own under read last never us left end along "
         "while might next sound below saw something thought both few those always looked show "
         "large often together asked house world going want school important until form food "
         "keep children feet land side without boy once animals life enough took sometimes four "
         "head above kind began almost live page got earth need far hand high year mother light "
         "parts country father let night following picture being study second eyes soon times "
         "story boys since white days ever paper hard near sentence better best across during "
         "today others however sure means knew try told young miles sun ways thing whole hear "
         "example heard several change answer room sea against top turned learn point city play "
         "toward five using himself usually").split()



# -- model dirs (a child process: CUDA there, never in the process that starts vLLM) --------

def _thinker(dims: dict, audio_key: str, text_key: str, vocab: int, tied: bool) -> dict:
    import tiny_models as tm

    ids = tm._ASR_SPECIAL_IDS
    text = dims.get(text_key, dims["text"])
    return dict(
        audio_config=dict(num_mel_bins=128, n_window=50, n_window_infer=800, conv_chunksize=500,
                          max_source_positions=1500, activation_function="gelu",
                          **dims[audio_key]),
        text_config=dict(vocab_size=vocab, hidden_size=text["hidden_size"],
                         intermediate_size=text["intermediate_size"],
                         num_hidden_layers=text["num_hidden_layers"],
                         num_attention_heads=text["num_attention_heads"],
                         num_key_value_heads=text["num_key_value_heads"],
                         head_dim=text["head_dim"], hidden_act="silu",
                         max_position_embeddings=65536, rms_norm_eps=1e-6, rope_theta=1e6,
                         rope_scaling={"rope_type": "default", "interleaved": True,
                                       "mrope_section": list(text["mrope_section"])},
                         tie_word_embeddings=tied, pad_token_id=ids[tm.ENDOFTEXT]),
        audio_token_id=ids[tm.AUDIO_PAD], audio_start_token_id=ids[tm.AUDIO_START],
        audio_end_token_id=ids[tm.AUDIO_END])


def build_dirs(base: Path, size: str, device: str) -> None:
    """Random-weight ASR and aligner dirs with the real vocabulary sizes and special-token ids
    (a small byte-level BPE tokenizer in which each benchmark word is one token)."""
    import torch
    import tiny_models as tm
    from qwen_asr.core.transformers_backend import (Qwen3ASRConfig,
                                                    Qwen3ASRForConditionalGeneration)

    dims = DIMS[size]
    # Each word alone (aligner prompts) and after a space (generated text) is one token.
    extra = list(dict.fromkeys(t for w in WORDS for t in (tm._bl(w), tm._bl(" " + w))))

    def save(path: Path, config: dict, seed: int, edit: Callable[[Any], None]) -> None:
        path.mkdir(parents=True, exist_ok=True)
        tm._write_tokenizer_files(path, tm._ASR_SPECIAL_IDS, tm._ASR_ADDED_IDS, extra)
        torch.manual_seed(seed)
        with torch.device(device):
            model = Qwen3ASRForConditionalGeneration(Qwen3ASRConfig(**config))
        model = model.to(torch.bfloat16).eval()
        edit(model)
        model.save_pretrained(str(path), safe_serialization=True)

    def no_eos(model: Any) -> None:  # greedy decoding never ends early (transformers side)
        with torch.no_grad():
            for i in EOS_IDS:
                model.thinker.lm_head.weight[i].zero_()
        gen = model.generation_config
        gen.eos_token_id, gen.bos_token_id, gen.do_sample = list(EOS_IDS), None, False
        gen.pad_token_id = tm._ASR_SPECIAL_IDS[tm.ENDOFTEXT]

    save(base / "asr", dict(thinker_config=_thinker(dims, "asr_audio", "text", 151936,
                                                    size == "0.6b" or size == "tiny"),
                            support_languages=None), 0, no_eos)
    aligner = _thinker(dims, "aligner_audio", "aligner_text", 152064, False)
    aligner.update(model_type="qwen3_forced_aligner", classify_num=5000)
    save(base / "aligner", dict(thinker_config=aligner, support_languages=None,
                                timestamp_token_id=tm._ASR_ADDED_IDS[tm.TIMESTAMP],
                                timestamp_segment_time=80), 1, lambda m: None)
    cfg_path = base / "aligner" / "config.json"  # save_pretrained drops the thinker's type
    cfg = json.loads(cfg_path.read_text())
    cfg["thinker_config"].update(model_type="qwen3_forced_aligner", classify_num=5000)
    cfg_path.write_text(json.dumps(cfg, indent=2))
    (base / "done").write_text(size)


def ensure_dirs(base: Path, size: str, device: str) -> None:
    if (base / "done").exists():
        return
    t0 = time.perf_counter()
    subprocess.run([sys.executable, str(GPU_SCRIPT), "--build", str(base), "--size", size,
                    "--build-device", device], check=True)
    log(f"built {size} dirs in {time.perf_counter() - t0:.1f} s")


# -- inputs and outputs ----------------------------------------------------------------------

def wav_bytes(samples: np.ndarray) -> bytes:
    buf = io.BytesIO()
    with wave.open(buf, "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(SR)
        w.writeframes((np.clip(samples, -1, 1) * 32767).astype("<i2").tobytes())
    return buf.getvalue()


def noise(seconds: float, seed: int) -> np.ndarray:
    return np.random.default_rng(seed).normal(0, 0.1, int(seconds * SR)).astype(np.float32)


def random_words(n: int, seed: int) -> str:
    rng = np.random.default_rng(seed)
    return " ".join(WORDS[i] for i in rng.integers(0, len(WORDS), n))


def settings_env(asr: Path, aligner: Path, total_gib: float, backend: str, work: Path,
                 card_gib: float = CARD_GIB) -> dict:
    from qwen_worker.base.config import load_settings

    defaults = load_settings({"ASR_BACKEND": "vllm", "ASR_DEVICE": "cuda"})
    scale = card_gib / total_gib  # the fractions of the card's memory, on this card
    return {"ASR_MODEL": str(asr), "ALIGNER_MODEL": str(aligner), "ASR_BACKEND": backend,
            "ASR_DEVICE": "cuda" if backend == "vllm" or total_gib != card_gib else "cpu",
            "VLLM_GPU_MEMORY_UTILIZATION": f"{defaults.vllm_gpu_memory_utilization * scale:.4f}",
            "VLLM_ALIGNER_GPU_MEMORY_UTILIZATION":
                f"{defaults.vllm_aligner_gpu_memory_utilization * scale:.4f}",
            "MAX_CONCURRENCY": "64", "DOWNLOAD_ALLOW_LOOPBACK": "true", "WORK_DIR": str(work),
            "MAX_DOWNLOAD_BYTES": str(1 << 30)}


def fixed_length(samples: int) -> dict[str, Any]:
    """Exactly the bench's output length for this much audio (EOS ignored)."""
    return dict(max_tokens=max(1, round(samples / SR * TOKENS_PER_SECOND)), ignore_eos=True)


def fixed_output(word_ids: list[int]) -> Callable[[int], dict[str, Any]]:
    """Exactly n tokens (EOS ignored), sampled among the word tokens: random words, no loops."""
    def overrides(samples: int) -> dict[str, Any]:
        return dict(fixed_length(samples), temperature=1.0, allowed_token_ids=word_ids)
    return overrides


def word_token_ids(tokenize: Callable[[str], list[int]]) -> list[int]:
    """The bench words' token ids after a space (what generated text is made of), through the
    engine's `tokenize`; each word must be one token of the bench tokenizer."""
    ids = sorted({i for w in WORDS for i in tokenize(" " + w)})
    if len(ids) != len(set(WORDS)):
        raise RuntimeError("each word after a space must be one token of the bench tokenizer")
    return ids
