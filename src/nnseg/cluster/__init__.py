"""Many independent pieces of work (cases, folds) as tasks on a Dask cluster, surviving lost workers.

``--cluster local[:N]`` starts a LocalCluster of N worker processes; ``--cluster tcp://host:8786`` (or
``--cluster scheduler.json``) joins a running scheduler, e.g. one started by dask-jobqueue on SLURM. Dask is imported
only here, lazily (``pip install nnseg[dask]``).
"""
