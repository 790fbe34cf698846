"""FineScope the application: the ``finescope`` command line (``finescope.cli``), and, installed beneath it from
their own top-level folders, the Prefect flows (``finescope.flows``, folder ``flows/``) and tasks
(``finescope.tasks``, folder ``tasks/``). The library they run is ``finescope_core``, which imports none of this."""
