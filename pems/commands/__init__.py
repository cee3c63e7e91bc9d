"""The ``pems`` sub-commands, one module per family; :mod:`pems.cli` assembles them.

- :mod:`~pems.commands.simulate`: ``simulate``, ``bench``, ``demo``, ``list``
- :mod:`~pems.commands.history`: ``calibrate``, ``predict``, ``history``
- :mod:`~pems.commands.forecast`: ``forecast backtest``, ``forecast fit``
- :mod:`~pems.commands.models`: ``models list|show|promote|drift``
- :mod:`~pems.commands.live`: ``emulate``, ``live``
- :mod:`~pems.commands.arguments`: reading and checking flags (times, steps, outputs, ``HOST:PORT``)
- :mod:`~pems.commands.progress`: progress bars on stderr

This is the command-line layer: it may import every package (the README's layout); none of them
imports it. Imports of the packages stay inside the commands, so building the parser is fast.
"""
