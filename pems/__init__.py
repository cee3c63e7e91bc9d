"""PEMS: a physics-first digital twin of a home energy system and the controllers that run it.

The packages: :mod:`pems.twin` (physics, inputs, simulator),
:mod:`pems.controllers` (controllers and forecasters), :mod:`pems.scenarios`
(scenario files, closed-loop runner, KPIs, reports) and :mod:`pems.cli` (the ``pems`` command).
"""

__version__ = "0.1.0"
