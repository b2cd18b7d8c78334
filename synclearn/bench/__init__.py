"""Benchmarks as recipes on the framework's parts, apart from the evaluation library.

* :mod:`~synclearn.bench.chat_facts`: facts taught through chat turns while the learner is attached;
* :mod:`~synclearn.bench.split_digits`: Split-Digits (scikit-learn's digits), class- and task-incremental;
* :mod:`~synclearn.bench.text_domains`: a domain-incremental text stream;
* :mod:`~synclearn.bench.experiment`: one experiment from a composed Hydra config (``synclearn run``).

The metrics, plots and the report they write with live in :mod:`synclearn.eval`.
"""
