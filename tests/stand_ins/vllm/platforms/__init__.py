"""`vllm.platforms.current_platform` as far as the worker asks it: a CUDA platform whose card
has CARD_BYTES of memory (a 24 GiB card), so that the worker plans its engines' KV caches and
starts them together, as on a GPU."""

from __future__ import annotations

CARD_BYTES = 24 << 30


class _Platform:
    def is_cuda(self) -> bool:
        return True

    def get_device_total_memory(self, device_id: int = 0) -> int:
        return CARD_BYTES


current_platform = _Platform()
