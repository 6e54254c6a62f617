"""The jobs: sampling engines (``generation``), offline prompt scoring (``scoring/``), ReST-EM's sample
filtering (``filter_samples``), evaluation and tables.

What they share lives here once: the sampling settings and their checks (``config``), command lines
generated from config dataclasses (``arguments``) and the durable atomic write (``files``, also used
by data preparation). Each job is a library function behind a thin command line; none imports verl
at module level.
"""
