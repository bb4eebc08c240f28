"""Which partition a keyed Kafka record lands in, without a Kafka client.

Kafka's default partitioner (the Java client, aiokafka, faust, kafkajs, librdkafka's
`murmur2_random`) takes murmur2 of the key's bytes, clears the sign bit and reduces it
modulo the partition count. metering keeps each user's state with one partition and
checks every event against this function; reporters and producers of ours use it to
pick the partition up front. Pure: domain modules import it instead of a Kafka client.

`murmur2` follows the Java client's `org.apache.kafka.common.utils.Utils.murmur2`
(as aiokafka's pure-Python copy does, Apache-2.0); `tests/platform/test_partitioning.py`
checks it against aiokafka's on many keys.
"""

from __future__ import annotations

import functools

_SEED = 0x9747B28C
_M = 0x5BD1E995
_MASK = 0xFFFFFFFF


def murmur2(data: bytes) -> int:
    """The 32-bit murmur2 hash of `data` as Kafka computes it (an int in [0, 2**32))."""
    length = len(data)
    h = (_SEED ^ length) & _MASK
    whole = length - length % 4
    for i in range(0, whole, 4):
        k = int.from_bytes(data[i : i + 4], "little")
        k = (k * _M) & _MASK
        k ^= k >> 24
        k = (k * _M) & _MASK
        h = ((h * _M) & _MASK) ^ k
    extra = length % 4
    if extra >= 3:
        h ^= data[whole + 2] << 16
    if extra >= 2:
        h ^= data[whole + 1] << 8
    if extra >= 1:
        h ^= data[whole]
        h = (h * _M) & _MASK
    h ^= h >> 13
    h = (h * _M) & _MASK
    h ^= h >> 15
    return h


@functools.lru_cache(maxsize=1 << 16)
def partition_of(key: str, partitions: int) -> int:
    """The partition (0 .. partitions-1) Kafka's default murmur2 partitioner picks for
    the UTF-8 bytes of `key` (cached: metering asks once per event, for few users)."""
    return (murmur2(key.encode()) & 0x7FFFFFFF) % partitions
