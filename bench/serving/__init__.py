"""`make serve-bench`: TorchServe under load, against the same model run in process."""
