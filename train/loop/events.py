"""The events of a training run and the hooks that handle them.

A hook is an object with an ``on_<event>`` method for each event it handles (``on_step_end(trainer, result)``,
``on_checkpoint_published(trainer, path, step)``, ...), a ``priority`` (lower runs first; equal priorities keep
the order they were given in) and, when it carries something across a checkpoint, ``state_dict`` /
``load_state_dict`` under its ``name``. Every rank runs every hook (validation and checkpoints are collective).
"""

from __future__ import annotations

from enum import StrEnum


class Event(StrEnum):
    """What a hook can be told, with what it is given besides the trainer."""

    fit_start = "fit_start"
    """After any resume, before the first step (``trainer.resumed`` says which)."""
    step_end = "step_end"
    """After every optimizer step: ``result`` (a ``StepResult``)."""
    checkpoint_staged = "checkpoint_staged"
    """A checkpoint is being written: ``tmp`` (its staging directory, not yet published) and ``step``."""
    checkpoint_published = "checkpoint_published"
    """A checkpoint is complete under its final name: ``path`` and ``step``."""
    resumed = "resumed"
    """The run continues from a checkpoint: ``path`` and ``foreign`` (another run's)."""
    rolled_back = "rolled_back"
    """Weights and optimizer went back to a checkpoint after loss spikes: ``path``."""
    fit_end = "fit_end"
    """After the last step (or a stop)."""


class Hook:
    """Base of the trainer's hooks: every handler optional, no state."""

    priority: int = 100
    """Lower runs first (provenance 0, metrics 10, validation 20, profiler 90)."""

    @property
    def name(self) -> str:
        """The key of this hook's state in a checkpoint (unique among the trainer's hooks)."""
        return type(self).__name__

    def state_dict(self) -> dict:
        """What the hook carries across a checkpoint (loaded after ``on_fit_start`` on resume)."""
        return {}

    def load_state_dict(self, state: dict) -> None:
        pass


class Hooks:
    """The trainer's hooks, in priority order; ``emit`` tells each the event it has a handler for."""

    def __init__(self, hooks: list[Hook]) -> None:
        self.hooks = sorted(hooks, key=lambda h: h.priority)
        names = [h.name for h in self.hooks]
        if len(set(names)) != len(names):
            raise ValueError(f"two hooks share a name (their state would collide in a checkpoint): {names}")

    def emit(self, event: Event, trainer, **payload) -> None:
        for hook in self.hooks:
            handler = getattr(hook, f"on_{Event(event).value}", None)
            if handler is not None:
                handler(trainer, **payload)

    def state_dict(self) -> dict:
        return {h.name: h.state_dict() for h in self.hooks}

    def load_state_dict(self, state: dict) -> None:
        """Each hook's saved state, where the checkpoint has one (a hook added since starts afresh)."""
        for hook in self.hooks:
            if hook.name in state:
                hook.load_state_dict(state[hook.name])
