"""Deduplication keys and the duplicate finders of `llmft data prepare`.

Per record only small keys are kept in memory: a 64-bit hash of the normalised instruction + input + output
(exact duplicates), a 64-bit hash of the normalised instruction + input (decontamination), and, for near
duplicates, the LSH band hashes of a MinHash signature. A conversation counts its system prompt as the instruction
and its turns as input + output (`key_parts`). The signatures themselves live in a file on disk and
are read back only for candidate pairs.

Near duplicates: a record is a near duplicate of an earlier one when both the instruction and the
input + output are similar (estimated Jaccard of word 3-gram shingles >= threshold). Comparing the two parts
separately matters for Super-NaturalInstructions, where every instance of a task shares a long definition:
on the whole text, all instances of a task would look alike. Candidates come from banding the input + output
signature (bands and rows chosen by datasketch's MinHashLSH, weighted towards recall because every candidate
is verified); each record is compared with the earliest record of each bucket it falls in.
"""
from __future__ import annotations

import functools
import hashlib
import unicodedata
import zlib
from dataclasses import dataclass

import numpy as np

from llmft.data import turns
from llmft.data.records import Record

NUM_PERM = 64               # per part: instruction, and input + output
SHINGLE_WORDS = 3           # shingles() is written for 3
MINHASH_SEED = 1
LSH_WEIGHTS = (0.1, 0.9)    # (false positive, false negative): candidates are verified, so favour recall
_BAND_MULTIPLIER_SEED = 20240917
_VERIFY_CHUNK = 1 << 16


def _is_edge_noise(ch: str) -> bool:
    return ch.isspace() or unicodedata.category(ch).startswith("P")


def normalize_for_key(text: str) -> str:
    """Casefold, collapse whitespace, strip punctuation at both ends."""
    text = " ".join(text.casefold().split())
    start, end = 0, len(text)
    while start < end and _is_edge_noise(text[start]):
        start += 1
    while end > start and _is_edge_noise(text[end - 1]):
        end -= 1
    return text[start:end]


def hash64(*parts: str) -> int:
    joined = "\x1f".join(parts).encode("utf-8")
    return int.from_bytes(hashlib.blake2b(joined, digest_size=8).digest(), "little")


def exact_key(record: Record) -> int:
    head, context, output = key_parts(record)
    return hash64(*(normalize_for_key(t) for t in (head, *context, output)))


def contamination_key(record: Record) -> int:
    """What must not leak from train into dev/test: the normalised instruction + input (a conversation: all but
    its last answer)."""
    head, context, _ = key_parts(record)
    return hash64(*(normalize_for_key(t) for t in (head, *context)))


def shingles(text: str) -> set[bytes]:
    return shingle_set(normalize_for_key(text).split())


def shingle_set(words: list[str]) -> set[bytes]:
    """Word 3-grams; a text of fewer words is one shingle."""
    if len(words) < SHINGLE_WORDS:
        return {" ".join(words).encode("utf-8")}
    return {f"{a} {b} {c}".encode("utf-8") for a, b, c in zip(words, words[1:], words[2:])}


class Keyer:
    """Everything dedup needs from one record, each text normalised once: (exact key, contamination key,
    signature), the signature being the MinHash (uint32) of the instruction then of the input + output.
    The instruction's part is computed once for a run of records that share it (the instances of a task)."""

    def __init__(self, num_perm: int = NUM_PERM):
        from datasketch import MinHash

        # crc32 (C, no digest object) instead of the default sha1: 2-3x faster signing; datasketch mixes the
        # 32-bit input hash (fmix) before permuting, as it does for sha1's truncated 32 bits
        self.minhash = MinHash(num_perm=num_perm, seed=MINHASH_SEED, hashfunc=zlib.crc32)
        self._instruction: tuple[str | None, str, np.ndarray | None] = (None, "", None)

    def _signature(self, words: list[str]) -> np.ndarray:
        self.minhash.clear()
        self.minhash.update_batch(shingle_set(words))
        return self.minhash.hashvalues.astype(np.uint32)

    def keys(self, record: Record) -> tuple[int, int, np.ndarray]:
        head, context, output = key_parts(record)
        text, instruction, instruction_sig = self._instruction
        if text != head:
            instruction = normalize_for_key(head)
            instruction_sig = self._signature(instruction.split())
            self._instruction = (head, instruction, instruction_sig)
        context, output = [normalize_for_key(t) for t in context], normalize_for_key(output)
        io_sig = self._signature([word for text in (*context, output) for word in text.split()])
        return (hash64(instruction, *context, output), hash64(instruction, *context),
                np.concatenate([instruction_sig, io_sig]))


def key_parts(record: Record) -> tuple[str, list[str], str]:
    """(head, context, answer): what the keys hash. A single-turn record: (instruction, [input], output). A
    conversation: (its system prompt, every user and assistant turn before the last, the last assistant turn), so
    exact and near duplicates are found over the whole conversation, a shared system prompt plays the part of a
    shared task definition, and decontamination compares everything a model is shown before the answer."""
    if not record.messages:
        return record.instruction, [record.input], record.output
    dialogue = turns.dialogue(record.messages)
    return turns.system_prompt(record.messages), dialogue[:-1], dialogue[-1]


@functools.lru_cache(maxsize=8)
def lsh_params(threshold: float, num_perm: int = NUM_PERM) -> tuple[int, int]:
    """(bands, rows per band) as datasketch's MinHashLSH chooses them for this threshold."""
    from datasketch import MinHashLSH

    lsh = MinHashLSH(threshold=threshold, num_perm=num_perm, weights=LSH_WEIGHTS)
    return lsh.b, lsh.r


def band_hashes(signatures: np.ndarray, bands: int, rows: int, num_perm: int = NUM_PERM) -> np.ndarray:
    """(n, bands) uint64: one hash per band of the input + output half of each signature. Works through a
    memmap chunk by chunk, so only a chunk of signatures is ever in memory."""
    rng = np.random.default_rng(_BAND_MULTIPLIER_SEED)
    multipliers = rng.integers(1, 2**63, size=rows, dtype=np.uint64) | np.uint64(1)
    out = np.empty((len(signatures), bands), dtype=np.uint64)
    for start in range(0, len(signatures), _VERIFY_CHUNK):
        io = np.asarray(signatures[start:start + _VERIFY_CHUNK, num_perm:num_perm + bands * rows]).astype(np.uint64)
        for b in range(bands):
            out[start:start + len(io), b] = (io[:, b * rows:(b + 1) * rows] * multipliers).sum(axis=1, dtype=np.uint64)
    return out


def exact_duplicates(keys: np.ndarray) -> np.ndarray:
    """True for every record whose key occurred earlier (the first occurrence is kept)."""
    dup = np.ones(len(keys), dtype=bool)
    if len(keys):
        _, first = np.unique(keys, return_index=True)
        dup[first] = False
    return dup


@dataclass
class NearDuplicates:
    mask: np.ndarray            # True: near duplicate of an earlier record
    duplicate: np.ndarray       # record index of each near duplicate, ascending
    kept: np.ndarray            # the earlier record it matches
    io_similarity: np.ndarray   # estimated Jaccard of input + output
    instruction_similarity: np.ndarray


def _candidate_pairs(bands: np.ndarray, eligible: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(earlier, later) pairs: every eligible record against the earliest eligible record of each bucket."""
    idx = np.flatnonzero(eligible)
    firsts, members = [], []
    for b in range(bands.shape[1]):
        h = bands[idx, b]
        order = np.lexsort((idx, h))
        hs, ids = h[order], idx[order]
        starts = np.ones(len(hs), dtype=bool)
        starts[1:] = hs[1:] != hs[:-1]
        group_first = ids[np.maximum.accumulate(np.where(starts, np.arange(len(hs)), 0))]
        firsts.append(group_first[~starts])
        members.append(ids[~starts])
    if not firsts:
        return np.empty(0, np.int64), np.empty(0, np.int64)
    n = np.int64(len(eligible))
    pairs = np.unique(np.concatenate(members).astype(np.int64) * n + np.concatenate(firsts))
    return pairs % n, pairs // n  # sorted by the later record, then the earlier one


def near_duplicates(signatures: np.ndarray, bands: np.ndarray, eligible: np.ndarray, threshold: float,
                    num_perm: int = NUM_PERM) -> NearDuplicates:
    """Verify LSH candidates on the signatures (a memmap is fine: only candidate rows are read)."""
    first, member = _candidate_pairs(bands, eligible)
    io_sim = np.empty(len(first), dtype=np.float64)
    ins_sim = np.empty(len(first), dtype=np.float64)
    for start in range(0, len(first), _VERIFY_CHUNK):
        a = np.asarray(signatures[first[start:start + _VERIFY_CHUNK]])
        b = np.asarray(signatures[member[start:start + _VERIFY_CHUNK]])
        same = a == b
        ins_sim[start:start + len(a)] = same[:, :num_perm].mean(axis=1)
        io_sim[start:start + len(a)] = same[:, num_perm:].mean(axis=1)
    verified = (io_sim >= threshold) & (ins_sim >= threshold)
    first, member, io_sim, ins_sim = first[verified], member[verified], io_sim[verified], ins_sim[verified]
    # pairs are sorted by member then earlier record: keep each duplicate's earliest match
    keep = np.ones(len(member), dtype=bool)
    keep[1:] = member[1:] != member[:-1]
    mask = np.zeros(len(eligible), dtype=bool)
    mask[member[keep]] = True
    return NearDuplicates(mask, member[keep], first[keep], io_sim[keep], ins_sim[keep])
