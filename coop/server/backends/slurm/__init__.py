"""Slurm over SSH, the backend for HPC pools: everything Slurm lives here.

``backend`` runs attempts as ``sbatch`` jobs (the ``Backend`` protocol); ``config`` validates a pool's
settings, ``commands`` builds the command lines, ``parse`` reads their output (pure functions),
``script`` writes the batch script, ``capacity`` turns ``sinfo`` into node classes, and ``ssh`` is
the one place that talks to the cluster.
"""
