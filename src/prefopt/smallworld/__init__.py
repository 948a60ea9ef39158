"""The small world: the whole pipeline on a CPU with a known reward (SPEC §8)."""
