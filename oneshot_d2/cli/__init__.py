"""The command-line layer: the commands (``oneshot-train``, ``oneshot-predict``, ... console
scripts, and the ``tools/*.py`` files that run them from a checkout) and what they share
(:mod:`.common`: one-line errors, exit status 2, ``--debug``)."""
from .common import *  # noqa: F401,F403
from .common import __all__  # noqa: F401
