"""The command line, on top of every layer: the parser and every command (``landseg train``,
``cv``, ``tune``, ``predict``, ``evaluate``, ``report``, ``runs``, ``export`` ...).

Nothing below imports this package; commands plan with :mod:`landseg.planning` and the
domain packages, then execute."""
