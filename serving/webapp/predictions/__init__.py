"""The `predictions` Django app: upload/URL form, model backends, heat-map, history."""
