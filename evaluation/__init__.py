"""Offline evaluation and prediction of pushed models: metrics, the patient bootstrap,
slide context, `histopath evaluate` / `predict` and their plots."""
