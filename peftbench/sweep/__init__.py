"""Sweeps: a request becomes jobs, each job one run, each run one record.

The flow goes one way, one module a step:

- ``request``: what the caller asks for (``SweepRequest``, tune's ``Point``s) and what comes back
  (``SweepResult``, ``Reporter``); torch-free.
- ``resolve``: names in a request resolved (suite and its recipe file, methods, device, built-in data,
  packaged weights).
- ``plan``: request -> resolved suite, tasks, methods and configurations -> checked and decoded data
  -> ``Job``s with run ids, in one pass (``plan_sweep``), plus the ``RunContext`` every run shares.
- ``execute``: one run (``execute_run``): build, train, evaluate once, measure; ``catalog`` (inspect)
  reuses its build and cost steps.
- ``run``: the sweep in one process (``run_sweep``): skip done runs, claim, execute, write records.
- ``launch``: many processes running the same sweep (local workers, a Slurm job array).

The runs folder's names are spelled in ``peftbench.layout``. This package's ``__init__`` imports
nothing, so that the light commands (report, status, the CLI's help) can use ``request``, ``launch``
without importing torch.
"""
