"""kb/memory.py: freed heap handed back to the OS."""

import pytest

from kb import memory


def resident_mb() -> float:
    with open("/proc/self/status", encoding="ascii") as status:
        return next(int(line.split()[1]) for line in status if line.startswith("VmRSS:")) / 1024


@pytest.mark.skipif(memory._malloc_trim is None, reason="glibc's malloc_trim only")
def test_freed_heap_between_live_blocks_goes_back_to_the_os():
    """Every other 64 KB block freed: glibc keeps the holes, which nothing but a trim gives back."""
    blocks = [bytearray(65_536) for _ in range(2_000)]  # below glibc's mmap threshold: on the heap, 125 MB
    for block in blocks:
        block[::4096] = b"x" * len(block[::4096])  # touched, so resident
    del blocks[::2]
    before = resident_mb()
    memory.return_freed_memory()
    assert before - resident_mb() > 40


def test_the_heap_is_handed_back_once_enough_has_come_and_gone(monkeypatch):
    """A server's kept postings come and go with its players' questions; a hand-back per eviction would cost
    6-15 ms each at a million chunks."""
    handed_back = []
    monkeypatch.setattr(memory, "return_freed_memory", lambda: handed_back.append(1))
    monkeypatch.setattr(memory, "_churn", memory._Churn())
    memory.churned(memory.RETURN_EVERY_BYTES - 1)
    assert handed_back == []
    memory.churned(1)
    assert handed_back == [1]
    memory.churned(memory.RETURN_EVERY_BYTES // 2)
    assert handed_back == [1]  # counted again from nothing
