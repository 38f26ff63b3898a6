"""From a command to the Runner.

``train`` and ``test`` are the two commands (``tools/train.py``,
``tools/test.py``, ``python -m patchscale_mm.train``); they parse
``arguments``, ``config.load_config`` a file and hand it to
``runner.run``, which starts the process group of ``distributed`` (and
``slurm``) runs. ``heartbeat`` names a rank that stops answering;
``lifeline`` runs a command as a child that dies with its parent.

Nothing is imported here, so that ``patchscale_mm.engine`` can use the
heartbeat and Slurm helpers without importing the commands.
"""
