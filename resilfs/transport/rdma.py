"""The rdma transport (placeholder until written): reports why it cannot run here."""


def unavailable_reason() -> str | None:
    return "the rdma transport is not written yet"
