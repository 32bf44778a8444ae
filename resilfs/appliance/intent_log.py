"""An appliance's write intents: the observer's log (claim 19).

Multi-writes that began and have not ended, per (owner, set). Without a persist dir they live
in memory only. With one, they go to an append-only log that is replayed on start and
compacted when it grows; a torn last line (crash while appending) is ignored. A failed disk
write raises OSError.
"""
import json
import os


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
