"""Serving: the TF-Serving-compatible model server (`histopath model-server`) and the
pathologists' Django web app (`histopath serve`)."""
