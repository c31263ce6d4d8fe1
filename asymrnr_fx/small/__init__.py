"""The small trained video model and what runs on it: procedural data, training, sampling,
clip metrics and ``asymrnr demo``. The backend does not import any of it."""
