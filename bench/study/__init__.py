"""The real-data study behind docs/results.md (`python -m bench.results`).

- `steps`: the study's steps (ingest, pipeline runs, evaluations, baselines, patient CV...)
  and their cache in WORKDIR/<step>/result.json;
- `run`: the order of the steps and the command line;
- `tables`, `cv_tables`, `run_tables`: the generated tables (test-patient metrics, patient
  cross-validation, compute and reproducibility), as data;
- `report`: writes docs/results/results.json, the figures and the tables as markdown.

The prose that reads the tables, docs/results.md, is written by hand.
"""
