"""The one family of errors digitlab raises on purpose.

Every error a user can cause (a bad file, a bad flag, a diverging run) is a `DigitlabError` whose message
names the thing and the problem. The CLI prints it as a single line and exits non-zero; nothing else is
caught, so a real bug still shows its traceback.
"""


class DigitlabError(Exception):
    """Base class: a problem the user can fix, with a message that says what and where."""


class DataError(DigitlabError):
    """A data file or data set is missing, corrupt or inconsistent."""


class ModelFileError(DigitlabError):
    """A model file is malformed, truncated, foreign or from a newer format."""


class ImageError(DigitlabError):
    """An input image cannot be decoded or used."""


class TrainingError(DigitlabError):
    """Training cannot go on (bad configuration, non-finite loss, ...)."""


class ConfigError(DigitlabError):
    """A recipe or option is invalid."""
