"""The root of resilfs's exceptions. Each layer defines its own subclasses beside its code."""


class ResilfsError(Exception):
    """Something resilfs refused or could not do; the message is meant for a user."""
