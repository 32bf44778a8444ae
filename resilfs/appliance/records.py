"""Small durable data on an appliance: records (compare-and-set) and write intents.

Records hold set membership and superblocks: ``(owner, name) -> (generation, value)``.
Intents are the observer's log (claim 19): multi-writes that began and have not ended.

Without a persist dir both live in memory only. With one, each record is a file written
atomically (write to a temporary name, then rename), and intents go to an append-only log
that is replayed on start and compacted when it grows; a torn last line (crash while
appending) is ignored. A failed disk write raises OSError after changing nothing in memory.
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


class IntentLog:
    COMPACT_MIN = 10000  # log lines before a compaction is considered

    def __init__(self, persist_dir: str | None = None):
        self._pending: dict[tuple[str, str], dict[int, list[tuple[int, int]]]] = {}
        self._path = os.path.join(persist_dir, "intents.log") if persist_dir else None
        self._file = None
        self._lines = 0
        if self._path:
            self._replay()
            self._compact()

    def _replay(self) -> None:
        try:
            with open(self._path, "rb") as f:
                lines = f.read().split(b"\n")
        except FileNotFoundError:
            return
        for line in lines:
            try:
                entry = json.loads(line)
            except ValueError:
                continue  # empty or torn line
            if entry[0] == "b":
                self._pending.setdefault((entry[1], entry[2]), {})[entry[3]] = [
                    tuple(e) for e in entry[4]]
            elif entry[0] == "e":
                self._end(entry[1], entry[2], entry[3])

    def _compact(self) -> None:
        """Rewrite the log with only the pending intents."""
        if self._file:
            self._file.close()
        tmp = self._path + ".tmp"
        with open(tmp, "wb") as f:
            for (owner, set_id), intents in self._pending.items():
                for intent_id, extents in intents.items():
                    f.write(self._line(["b", owner, set_id, intent_id, extents]))
        os.replace(tmp, self._path)
        self._file = open(self._path, "ab", buffering=0)  # noqa: SIM115 (held open)
        self._lines = sum(len(i) for i in self._pending.values())

    @staticmethod
    def _line(entry) -> bytes:
        return json.dumps(entry, separators=(",", ":")).encode() + b"\n"

    def _append(self, entry) -> None:
        if self._file is None:
            return
        self._file.write(self._line(entry))
        self._lines += 1
        pending = sum(len(i) for i in self._pending.values())
        if self._lines > self.COMPACT_MIN and self._lines > 4 * pending:
            self._compact()

    def begin(self, owner: str, set_id: str, intent_id: int, extents) -> None:
        extents = [(int(o), int(n)) for o, n in extents]
        self._pending.setdefault((owner, set_id), {})[intent_id] = extents
        self._append(["b", owner, set_id, intent_id, extents])

    def _end(self, owner: str, set_id: str, intent_ids) -> None:
        intents = self._pending.get((owner, set_id))
        if intents is None:
            return
        for intent_id in intent_ids:
            intents.pop(intent_id, None)
        if not intents:
            del self._pending[(owner, set_id)]

    def end(self, owner: str, set_id: str, intent_ids) -> None:
        self._end(owner, set_id, intent_ids)
        self._append(["e", owner, set_id, list(intent_ids)])

    def pending(self, owner: str, set_id: str) -> list[tuple[int, list[tuple[int, int]]]]:
        intents = self._pending.get((owner, set_id), {})
        return sorted((i, list(e)) for i, e in intents.items())

    def close(self) -> None:
        if self._file:
            self._file.close()
            self._file = None
