"""An appliance's records: small durable values with compare-and-set.

Records hold set membership and superblocks: ``(owner, name) -> (generation, value)``. Without
a persist dir they live in memory only. With one, each record is a file written atomically
(write to a temporary name, then rename); a crash leaves the old value or the new one. A
failed disk write raises OSError after changing nothing in memory; a put whose expected
generation is not the current one raises RecordConflict and changes nothing.
"""
import hashlib
import json
import logging
import os

from ..protocol import RecordConflict

log = logging.getLogger(__name__)


class RecordStore:
    def __init__(self, persist_dir: str | None = None):
        self._records: dict[tuple[str, str], tuple[int, bytes]] = {}
        self._dir = os.path.join(persist_dir, "records") if persist_dir else None
        if self._dir:
            os.makedirs(self._dir, exist_ok=True)
            self._load()

    def _path(self, owner: str, name: str) -> str:
        digest = hashlib.sha256(owner.encode() + b"\0" + name.encode()).hexdigest()
        return os.path.join(self._dir, digest)

    @staticmethod
    def _encode(owner: str, name: str, generation: int, value: bytes) -> bytes:
        header = json.dumps([owner, name, generation]).encode()
        return len(header).to_bytes(4, "little") + header + value

    def _load(self) -> None:
        for entry in os.listdir(self._dir):
            if entry.endswith(".tmp"):
                os.unlink(os.path.join(self._dir, entry))
                continue
            try:
                with open(os.path.join(self._dir, entry), "rb") as f:
                    data = f.read()
                n = int.from_bytes(data[:4], "little")
                owner, name, generation = json.loads(data[4:4 + n])
            except (ValueError, OSError) as e:
                log.error("skipping unreadable record file %s: %s", entry, e)
                continue
            self._records[(owner, name)] = (generation, data[4 + n:])

    def get(self, owner: str, name: str) -> tuple[int, bytes] | None:
        return self._records.get((owner, name))

    def put(self, owner: str, name: str, value: bytes, expected_generation: int) -> int:
        current = self._records.get((owner, name))
        generation = current[0] if current else 0
        if generation != expected_generation:
            raise RecordConflict(f"record {owner}/{name} is at generation {generation}, "
                                 f"not {expected_generation}")
        generation += 1
        if self._dir:
            path = self._path(owner, name)
            with open(path + ".tmp", "wb") as f:
                f.write(self._encode(owner, name, generation, value))
            os.replace(path + ".tmp", path)
        self._records[(owner, name)] = (generation, value)
        return generation

    def list(self, owner: str) -> list[str]:
        return sorted(name for o, name in self._records if o == owner)

    def delete(self, owner: str, name: str) -> None:
        if self._records.pop((owner, name), None) is not None and self._dir:
            os.unlink(self._path(owner, name))
