"""Command line: ``nnseg <command>`` and the ``nnUNetv2_*`` console scripts, over the same argparse definitions."""
