"""quartermaster.partitioning's murmur2 is Kafka's: checked against aiokafka's copy."""

from __future__ import annotations

import random
import uuid

from aiokafka.partitioner import murmur2 as aiokafka_murmur2

from quartermaster.partitioning import murmur2, partition_of


def test_murmur2_matches_aiokafka_on_many_keys() -> None:
    rng = random.Random(11)
    keys = [b"", b"a", b"ab", b"abc", b"abcd", "üsér-é".encode()]
    keys += [uuid.UUID(int=rng.getrandbits(128)).hex.encode() for _ in range(5000)]
    keys += [rng.randbytes(rng.randrange(0, 80)) for _ in range(5000)]
    for key in keys:
        assert murmur2(key) == aiokafka_murmur2(key), key


def test_partition_of_is_the_java_clients() -> None:
    # The Java client: Utils.toPositive(Utils.murmur2(key)) % n; aiokafka does the same.
    for n in (1, 3, 12, 100):
        for i in range(2000):
            key = f"user-{i}"
            expected = (aiokafka_murmur2(key.encode()) & 0x7FFFFFFF) % n
            assert partition_of(key, n) == expected
