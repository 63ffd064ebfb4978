"""The runtime under the stages: the only package that imports Faust.

- :mod:`~streams.runtime.agents`: one small class per agent (``handle`` a record, ``flush`` a
  batch), knowing the stages and a broker, never Faust.
- :mod:`~streams.runtime.checkpoint`: how a batch reaches Kafka, as named steps in order
  (state write batch, changelog, outputs, signals, dead letters, commit), one order per agent.
- :mod:`~streams.runtime.batching`: the batch loop, and what an agent has handled
  (records delivered again are not handled twice; gaps are read again).
- :mod:`~streams.runtime.faust_runtime`: the Faust app, topics, tables, rebalance hooks and
  timers; :mod:`~streams.runtime.tables`: tables as the stages' key-value stores;
  :mod:`~streams.runtime.faust_private`: every private access to Faust, in one file;
  :mod:`~streams.runtime.worker`: the worker process.
- :mod:`~streams.runtime.fake`: an in-memory runtime (topics, partitions, commits, rebalances)
  on which the agents run in unit tests, without a broker.
"""
