"""Command line: ``nnseg <command>`` and the ``nnUNetv2_*`` console scripts, over the same argparse definitions.

``main`` (the dispatcher), ``scripts`` (the ``nnUNetv2_*`` entry points), ``table`` (command -> module) and ``context``
sit at the top; the commands live in ``workflow/`` (nnU-Net v2's steps) and ``services/`` (what nnU-Net lacks).
"""
