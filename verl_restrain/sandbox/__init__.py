"""A CPU self-training sandbox: every method of the package on a simulated policy, in about a minute.

A simulation that illustrates mechanisms; it does not reproduce LLM numbers.

* :mod:`.policy` -- the simulated policy: one shared preference per reasoning route over many
  synthetic prompts, each with one correct candidate answer among K.
* :mod:`.loop` -- sampling, the package's own estimator
  (:func:`verl_restrain.advantage.compute_restrain_advantage`) for every method, REINFORCE steps,
  metrics; paired across methods by seed.
* :mod:`.sweep` -- RESTRAIN over a grid of sigma, kappa and delta, against TTRL.
* :mod:`.report` -- markdown table, JSON, curves and heatmap.
* :mod:`.cli` -- the ``restrain-sandbox`` console script.
"""
