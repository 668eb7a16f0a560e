"""Ray entry points, thin: `python -m pipelines.<step> --config file.yaml [--set k=v]`."""
