"""Stage 2: experiment planning (``plans.json``).

``nnseg.plans.schema`` reads and writes plans files exactly as nnU-Net v2 does; ``nnseg.plans.planner`` turns a
dataset fingerprint and ``dataset.json`` into plans with nnU-Net's heuristics (``plan_experiment``, ``PLANNERS``).
"""
