"""Errors the library raises for users.

Every `DeltaEditError` carries a message that says what went wrong *and what to do*; the CLI prints
it without a traceback and the app turns it into a `gr.Error`.
"""


class DeltaEditError(Exception):
    """Base class of user-facing errors."""


class InputError(DeltaEditError, ValueError):
    """Bad user input: an image, a prompt, a latent file, a parameter value."""


class NoFaceError(InputError):
    """Face alignment found no face in the photo."""


class WeightsError(DeltaEditError):
    """A weight file is missing, unreachable, corrupt, or has the wrong keys/shapes."""


class TrainingPaused(DeltaEditError):
    """A training run stopped at its time limit after saving a checkpoint; the same command resumes it."""

    def __init__(self, message: str, step: int, steps: int):
        super().__init__(message)
        self.step = step
        self.steps = steps
