"""The jobs: sampling engines, offline prompt scoring, evaluation and tables.

Each job is a library function behind a thin command line; none imports verl at module level.
"""
